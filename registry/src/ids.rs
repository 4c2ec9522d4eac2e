//! Identifiers, parsed once at the edge: holding a `ProductKey` means the string is valid.
//!
//! Character sets and lengths follow the platform the devices' SDKs were written for:
//! a ProductKey is 11–32 ASCII letters and digits (the platform issues 11); a DeviceName is 4–32
//! characters of letters, digits and `-_@.:`; region, instance and account ids are 1–64
//! characters of lower-case letters, digits and `-`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Too short or too long for its kind.
    #[error("{kind} must be {min}-{max} characters, got {len}")]
    Length { kind: &'static str, min: usize, max: usize, len: usize },
    /// Holds a character outside its kind's set.
    #[error("{kind} may only contain {allowed}, found {found:?}")]
    Character { kind: &'static str, allowed: &'static str, found: char },
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $min:literal..=$max:literal, $allowed:literal, $is_allowed:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, IdError> {
                check(s, $kind, $min, $max, $allowed, $is_allowed)?;
                Ok($name(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(s: String) -> Result<Self, IdError> {
                check(&s, $kind, $min, $max, $allowed, $is_allowed)?;
                Ok($name(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// Identifies a product; the first part of every device certificate.
    ProductKey, "productKey", 11..=32, "ASCII letters and digits",
    |c: char| c.is_ascii_alphanumeric()
);
id_type!(
    /// A device's name, unique inside its product.
    DeviceName, "deviceName", 4..=32, "letters, digits and -_@.:",
    |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '@' | '.' | ':')
);
id_type!(
    /// A region such as `cn-shanghai` or `eu-central-1`.
    RegionId, "region id", 1..=64, "lower-case letters, digits and -", is_slug_char
);
id_type!(
    /// An instance (one broker deployment inside a region).
    InstanceId, "instance id", 1..=64, "lower-case letters, digits and -", is_slug_char
);
id_type!(
    /// An account (tenant). Every admin call is scoped to one.
    AccountId, "account id", 1..=64, "lower-case letters, digits and -", is_slug_char
);
id_type!(
    /// An organisation grouping accounts under an admin account.
    OrganisationId, "organisation id", 1..=64, "lower-case letters, digits and -", is_slug_char
);

fn is_slug_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

fn check(
    s: &str,
    kind: &'static str,
    min: usize,
    max: usize,
    allowed: &'static str,
    is_allowed: impl Fn(char) -> bool,
) -> Result<(), IdError> {
    let len = s.chars().count();
    if !(min..=max).contains(&len) {
        return Err(IdError::Length { kind, min, max, len });
    }
    match s.chars().find(|&c| !is_allowed(c)) {
        Some(found) => Err(IdError::Character { kind, allowed, found }),
        None => Ok(()),
    }
}

/// A device's identity across the whole platform.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceKey {
    #[serde(rename = "productKey")]
    pub product_key: ProductKey,
    #[serde(rename = "deviceName")]
    pub device_name: DeviceName,
}

impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.product_key, self.device_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_keys() {
        assert!("a13FN5TplKq".parse::<ProductKey>().is_ok());
        assert_eq!(
            "short".parse::<ProductKey>(),
            Err(IdError::Length { kind: "productKey", min: 11, max: 32, len: 5 })
        );
        assert!(matches!(
            "a13FN5Tpl-q".parse::<ProductKey>(),
            Err(IdError::Character { found: '-', .. })
        ));
    }

    #[test]
    fn device_names() {
        for ok in ["bootstrap_posix_demo", "dev1", "a@b.c:d-e_f", &"x".repeat(32)] {
            assert!(ok.parse::<DeviceName>().is_ok(), "{ok}");
        }
        for bad in ["abc", &"x".repeat(33), "has space", "slash/es", "emoji😀x", ""] {
            assert!(bad.parse::<DeviceName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn slugs_and_serde() {
        assert!("eu-central-1".parse::<RegionId>().is_ok());
        assert!("EU".parse::<RegionId>().is_err());
        let json = serde_json::to_string(&"cn-shanghai".parse::<RegionId>().unwrap()).unwrap();
        assert_eq!(json, "\"cn-shanghai\"");
        assert!(serde_json::from_str::<InstanceId>("\"Bad Id\"").is_err());
    }
}
