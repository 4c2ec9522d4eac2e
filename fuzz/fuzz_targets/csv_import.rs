//! The control plane's CSV parsers: device import (`deviceName[,deviceSecret]`) and a
//! distribution task's device list (`productKey,deviceName`), on arbitrary UTF-8 text as the
//! admin API hands them over (byte-order mark stripped).
//!
//! Properties beyond "never panics": the row cap holds, and a task list never repeats a device.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use meridian_control::TaskRequest;
use meridian_control::distribution::task_devices;
use meridian_control::plane::{MAX_CSV_ROWS, parse_devices_csv};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);

    if let Ok(devices) = parse_devices_csv(text) {
        assert!(!devices.is_empty() && devices.len() <= MAX_CSV_ROWS);
    }

    let request = serde_json::json!({
        "product": "a13FN5TplKq",
        "csv": text,
        "policy": { "kind": "specified", "instance": "iot-fra-1" },
    });
    let request: TaskRequest =
        serde_json::from_value(request).expect("the request itself is valid");
    if let Ok(devices) = task_devices(&request) {
        assert!(devices.len() <= MAX_CSV_ROWS);
        let unique: HashSet<_> = devices.iter().collect();
        assert_eq!(unique.len(), devices.len(), "a device is listed twice");
    }
});
