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
    let body = std::str::from_utf8(body).map_err(|_| Rejection::MalformedBody)?;
    let mut product_key = None;
    let mut device_name = None;
    let mut ignored_seen = [false; IGNORED_FIELDS.len()];
    for (name, value) in Fields::new(body) {
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

/// The `(name, value)` fields of a form body, decoded exactly as `form_urlencoded::parse`
/// decodes them: split at `&` (empty fields skipped), then at the first `=` (none: an empty
/// value), then `+` and percent escapes decoded.
///
/// A field with neither `%` nor `+` decodes to itself, so it is borrowed as it is; only a field
/// with escapes goes through the crate. The SDKs escape nothing, and one pass that finds the
/// boundaries and the escapes together costs a quarter of the instructions of the crate's
/// plus-replacement, percent-decoding and UTF-8 passes over every name and value.
pub(crate) struct Fields<'a> {
    /// The body after the fields returned so far.
    rest: &'a str,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(body: &'a str) -> Self {
        Self { rest: body }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (Cow<'a, str>, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            let mut end = self.rest.len();
            let mut equals = None;
            let mut escaped = false;
            for (index, byte) in self.rest.bytes().enumerate() {
                match byte {
                    b'&' => {
                        end = index;
                        break;
                    }
                    b'=' if equals.is_none() => equals = Some(index),
                    b'%' | b'+' => escaped = true,
                    _ => {}
                }
            }
            // ASCII bytes never occur inside a multi-byte character, so every index found is a
            // character boundary. Past the last field, `end + 1` is beyond the body: nothing is
            // left.
            let field = &self.rest[..end];
            self.rest = self.rest.get(end + 1..).unwrap_or_default();
            if field.is_empty() {
                continue;
            }
            if escaped {
                // A non-empty field without `&` is exactly one pair to the crate.
                return form_urlencoded::parse(field.as_bytes()).next();
            }
            let (name, value) = match equals {
                Some(index) => (&field[..index], &field[index + 1..]),
                None => (field, ""),
            };
            return Some((Cow::Borrowed(name), Cow::Borrowed(value)));
        }
        None
    }
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

    /// The plain-field shortcut must split and decode every body as the crate does.
    #[test]
    fn fields_decode_as_the_crate_does() {
        let bodies = [
            "",
            "&",
            "&&productKey=a1b2c3d4e5f&&",
            "productKey",
            "productKey=",
            "=value",
            "=",
            "a=b=c&d==e",
            "deviceName=dev%3A01%40home&x=1",
            "device%4Eame=test&product+Key=x",
            "a+b=c+d&e=%2B&f=%zz&g=%&h=%4",
            "k=%FF%FE&l=%C3%A9&m=\u{e9}t\u{e9}",
            "productKey=a1b2c3d4e5f&deviceName=bootstrap_posix_demo&clientId=a1b2c3d4e5f.\
             bootstrap_posix_demo&timestamp=2524608000000&resources=mqtt",
        ];
        for body in bodies {
            let ours: Vec<_> = Fields::new(body).collect();
            let crates: Vec<_> = form_urlencoded::parse(body.as_bytes()).collect();
            assert_eq!(ours, crates, "{body:?}");
        }
    }

    #[test]
    fn escaped_names_and_empty_fields() {
        assert_eq!(
            device("&&product%4Bey=a1b2c3d4e5f&&device+Name=x&deviceName=test&"),
            Ok("a1b2c3d4e5f/test".to_owned()),
            "an escaped name is the field it decodes to; `device Name` is unknown"
        );
        assert_eq!(
            device("productKey=a1b2c3d4e5f&device%4Eame=test&deviceName=test"),
            Err(Rejection::MalformedBody),
            "a duplicate is found after decoding"
        );
        assert_eq!(
            device("productKey=a1b2c3d4e5f&deviceName=te+st"),
            Err(Rejection::InvalidParameter("deviceName")),
            "`+` is a space"
        );
        assert_eq!(
            device("productKey=a1b2c3d4e5f&deviceName=a=b"),
            Err(Rejection::InvalidParameter("deviceName")),
            "the value runs from the first `=`"
        );
        assert_eq!(
            device("productKey&deviceName=test"),
            Err(Rejection::MissingParameter("productKey"))
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
