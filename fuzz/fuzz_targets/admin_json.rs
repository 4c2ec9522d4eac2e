//! Admin API request bodies: arbitrary JSON into every request type the API decodes, as
//! `ApiRequest::json` does (serde_path_to_error over serde_json), then the task's device list
//! for an accepted task request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_control::distribution::task_devices;
use meridian_control::{NewAccount, NewInstance, NewProduct, ProductPatch, TaskRequest};
use meridian_registry::ids::DeviceName;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    decode::<NewAccount>(data);
    decode::<NewInstance>(data);
    decode::<NewProduct>(data);
    decode::<ProductPatch>(data);
    decode::<Vec<DeviceName>>(data);
    if let Some(task) = decode::<TaskRequest>(data) {
        let _ = task_devices(&task);
    }
});

fn decode<T: DeserializeOwned>(data: &[u8]) -> Option<T> {
    let mut deserializer = serde_json::Deserializer::from_slice(data);
    match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => deserializer.end().ok().map(|()| value),
        // The API formats the error (path, line, column) into its answer.
        Err(error) => {
            let _ = (error.path().to_string(), error.inner().to_string());
            None
        }
    }
}
