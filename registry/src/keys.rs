//! Where each record lives in the store, and how followers tell records apart in the feed.
//!
//! Keys use `/` between segments and only characters every backend carries
//! (see [`crate::store::validate_key`]); characters of a DeviceName outside that set
//! (`.`, `@`, `:`) are written as `=XX` hex escapes, which can never collide because `=` is not a
//! DeviceName character.

use crate::ids::{AccountId, DeviceKey, DeviceName, InstanceId, ProductKey, RegionId};

pub const ACCOUNTS: &str = "accounts/";
pub const REGIONS: &str = "regions/";
pub const INSTANCES: &str = "instances/";
pub const PRODUCTS: &str = "products/";
pub const PRODUCT_COPIES: &str = "product-copies/";
pub const DEVICES: &str = "devices/";
pub const RUNTIME: &str = "runtime/";
pub const USAGE: &str = "usage/";
/// Device subscriptions the brokers keep for the devices (PROTOCOL §2), one record per device.
pub const SUBSCRIPTIONS: &str = "subscriptions/";

pub fn account(id: &AccountId) -> String {
    format!("{ACCOUNTS}{id}")
}

pub fn region(id: &RegionId) -> String {
    format!("{REGIONS}{id}")
}

pub fn instance(id: &InstanceId) -> String {
    format!("{INSTANCES}{id}")
}

pub fn product(key: &ProductKey) -> String {
    format!("{PRODUCTS}{key}")
}

pub fn product_copy(instance: &InstanceId, key: &ProductKey) -> String {
    format!("{PRODUCT_COPIES}{instance}/{key}")
}

/// Prefix of every device of one product.
pub fn devices_of(product: &ProductKey) -> String {
    format!("{DEVICES}{product}/")
}

pub fn device(device: &DeviceKey) -> String {
    format!("{}{}", devices_of(&device.product_key), escape(&device.device_name))
}

/// Where a device's kept subscriptions live: beside, not inside, its certificate, so brokers
/// can write them without touching the record the control plane owns.
pub fn subscriptions(device: &DeviceKey) -> String {
    format!("{SUBSCRIPTIONS}{}/{}", device.product_key, escape(&device.device_name))
}

pub fn usage(instance: &InstanceId) -> String {
    format!("{USAGE}{instance}")
}

pub fn runtime(instance: &InstanceId, device: &DeviceKey) -> String {
    format!("{RUNTIME}{instance}/{}/{}", device.product_key, escape(&device.device_name))
}

/// The device a `devices/...` key names, if it is one.
pub fn parse_device(key: &str) -> Option<DeviceKey> {
    parse_device_segments(key.strip_prefix(DEVICES)?)
}

/// The device a `subscriptions/...` key names, if it is one.
pub fn parse_subscriptions(key: &str) -> Option<DeviceKey> {
    parse_device_segments(key.strip_prefix(SUBSCRIPTIONS)?)
}

/// `{pk}/{escaped dn}` back into a device key.
fn parse_device_segments(segments: &str) -> Option<DeviceKey> {
    let (product, name) = segments.split_once('/')?;
    Some(DeviceKey {
        product_key: product.parse().ok()?,
        device_name: unescape(name)?.parse().ok()?,
    })
}

/// Escapes a DeviceName into a key segment.
fn escape(name: &DeviceName) -> String {
    let mut out = String::with_capacity(name.as_str().len());
    for c in name.as_str().chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            out.push(c);
        } else {
            // DeviceName is ASCII-only, so every other character is one byte.
            out.push_str(&format!("={:02X}", c as u32));
        }
    }
    out
}

/// Reverses [`escape`]; `None` for a malformed escape.
fn unescape(segment: &str) -> Option<String> {
    let mut out = String::with_capacity(segment.len());
    let mut chars = segment.chars();
    while let Some(c) = chars.next() {
        if c == '=' {
            let hex: String = chars.by_ref().take(2).collect();
            let byte = u8::from_str_radix(&hex, 16).ok()?;
            out.push(char::from(byte));
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::validate_key;

    #[test]
    fn device_keys_are_valid_store_keys() {
        let key = DeviceKey {
            product_key: "a13FN5TplKq".parse().unwrap(),
            device_name: "a.b@c:d-e_f".parse().unwrap(),
        };
        let stored = device(&key);
        assert_eq!(stored, "devices/a13FN5TplKq/a=2Eb=40c=3Ad-e_f");
        validate_key(&stored).unwrap();
        validate_key(&runtime(&"inst-1".parse().unwrap(), &key)).unwrap();
        assert!(stored.starts_with(&devices_of(&key.product_key)));
        assert_eq!(parse_device(&stored), Some(key.clone()));
        assert_eq!(parse_device("devices/a13FN5TplKq/bad=Z1"), None);
        assert_eq!(parse_device("products/a13FN5TplKq"), None);
        let kept = subscriptions(&key);
        assert_eq!(kept, "subscriptions/a13FN5TplKq/a=2Eb=40c=3Ad-e_f");
        validate_key(&kept).unwrap();
        assert_eq!(parse_subscriptions(&kept), Some(key.clone()));
        assert_eq!(parse_device(&kept), None);
        assert_eq!(parse_subscriptions(&stored), None);
    }
}
