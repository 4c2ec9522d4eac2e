//! The `POST /auth/bootstrap` form, parsed once into typed identifiers.

use std::borrow::Cow;

use http::HeaderMap;
use http::header::CONTENT_TYPE;
use meridian_registry::ids::{DeviceKey, DeviceName, ProductKey};

use crate::reply::Rejection;

/// Fields the SDKs send besides `productKey` and `deviceName`, accepted and unused: the answer
/// is the same whatever they say (the vendor neither checks the timestamp nor offers anything
/// but MQTT). Listed so a duplicate is refused like a duplicate of the fields that matter.
const IGNORED_FIELDS: [&str; 4] = ["clientId", "version", "timestamp", "resources"];

/// Whether the request declares a form body. Parameters (`;charset=utf-8`, which one SDK
/// sends) and letter case do not matter.
pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

/// Parses a bootstrap form body, e.g.
/// `productKey=a1&deviceName=d1&clientId=a1.d1&timestamp=2524608000000&resources=mqtt`, into the
/// device it asks about. Unknown fields are ignored, as the vendor does.
///
/// # Errors
///
/// [`Rejection::MalformedBody`] for a body that is not UTF-8 or repeats a field,
/// [`Rejection::MissingParameter`] for an absent or empty `productKey`/`deviceName`,
/// [`Rejection::InvalidParameter`] for one that is not a valid identifier.
pub(crate) fn parse_form(body: &[u8]) -> Result<DeviceKey, Rejection> {
    // `form_urlencoded` would decode invalid UTF-8 lossily; refuse it instead.
    std::str::from_utf8(body).map_err(|_| Rejection::MalformedBody)?;
    let mut product_key = None;
    let mut device_name = None;
    let mut ignored_seen = [false; IGNORED_FIELDS.len()];
    for (name, value) in form_urlencoded::parse(body) {
        let repeated = match &*name {
            "productKey" => product_key.replace(value).is_some(),
            "deviceName" => device_name.replace(value).is_some(),
            other => match IGNORED_FIELDS.iter().position(|field| *field == other) {
                Some(index) => std::mem::replace(&mut ignored_seen[index], true),
                None => false,
            },
        };
        if repeated {
            return Err(Rejection::MalformedBody);
        }
    }
    let product_key = required(product_key, "productKey")?;
    let device_name = required(device_name, "deviceName")?;
    Ok(DeviceKey {
        product_key: product_key
            .parse::<ProductKey>()
            .map_err(|_| Rejection::InvalidParameter("productKey"))?,
        device_name: device_name
            .parse::<DeviceName>()
            .map_err(|_| Rejection::InvalidParameter("deviceName"))?,
    })
}

fn required<'a>(
    value: Option<Cow<'a, str>>,
    name: &'static str,
) -> Result<Cow<'a, str>, Rejection> {
    value.filter(|v| !v.is_empty()).ok_or(Rejection::MissingParameter(name))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn device(body: &str) -> Result<String, Rejection> {
        parse_form(body.as_bytes()).map(|key| key.to_string())
    }

    #[test]
    fn sdk_forms_parse() {
        let c_sdk = "productKey=a13FN5TplKq&deviceName=bootstrap_posix_demo&clientId=\
                     a13FN5TplKq.bootstrap_posix_demo&timestamp=2524608000000&resources=mqtt";
        assert_eq!(device(c_sdk).as_deref(), Ok("a13FN5TplKq/bootstrap_posix_demo"));
        let vendor_doc = "productKey=a1b2c3d4e5f&timestamp=123&version=default&clientId=123&resources=mqtt\
             &deviceName=test";
        assert_eq!(device(vendor_doc).as_deref(), Ok("a1b2c3d4e5f/test"));
        // Percent-encoding and unknown fields.
        let encoded = "deviceName=dev%3A01%40home&productKey=a1b2c3d4e5f&sdkVersion=x";
        assert_eq!(device(encoded).as_deref(), Ok("a1b2c3d4e5f/dev:01@home"));
    }

    #[test]
    fn missing_and_invalid_fields() {
        assert_eq!(device("deviceName=test"), Err(Rejection::MissingParameter("productKey")));
        assert_eq!(
            device("productKey=a1b2c3d4e5f&deviceName="),
            Err(Rejection::MissingParameter("deviceName"))
        );
        assert_eq!(device(""), Err(Rejection::MissingParameter("productKey")));
        assert_eq!(
            device("productKey=short&deviceName=test"),
            Err(Rejection::InvalidParameter("productKey"))
        );
        assert_eq!(
            device("productKey=a1b2c3d4e5f&deviceName=no/slash"),
            Err(Rejection::InvalidParameter("deviceName"))
        );
    }

    #[test]
    fn malformed_bodies() {
        assert_eq!(
            device("productKey=a1b2c3d4e5f&productKey=b1b2c3d4e5f&deviceName=test"),
            Err(Rejection::MalformedBody)
        );
        assert_eq!(parse_form(b"productKey=\xff\xfe"), Err(Rejection::MalformedBody));
        assert_eq!(
            device("clientId=1&clientId=2&productKey=a1b2c3d4e5f&deviceName=test"),
            Err(Rejection::MalformedBody)
        );
    }

    #[test]
    fn content_types() {
        let mut headers = HeaderMap::new();
        assert!(!is_form(&headers));
        for (value, expected) in [
            ("application/x-www-form-urlencoded", true),
            ("application/x-www-form-urlencoded;charset=utf-8", true),
            ("Application/X-WWW-Form-Urlencoded ; charset=UTF-8", true),
            ("application/json", false),
            ("multipart/form-data; boundary=x", false),
        ] {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_form(&headers), expected, "{value}");
        }
    }
}
