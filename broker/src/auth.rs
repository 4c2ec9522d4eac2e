//! Who may connect (PROTOCOL §2): standard users from the configuration, devices by their HMAC
//! signature against the in-memory credential view, and application clients.
//!
//! Every refusal maps to one MQTT 3.1.1 CONNACK code. A wrong signature, an unknown device and a
//! malformed username all answer "bad username or password", never a hint of which part failed;
//! placement and disabled checks run only after the signature proved the secret is held.

use std::collections::HashMap;
use std::sync::Arc;

use meridian_registry::ids::{AccountId, DeviceKey, InstanceId};
use meridian_registry::signature::DeviceLogin;
use mqttbytes::v4::ConnectReturnCode;
use subtle::ConstantTimeEq;

use crate::acl::{Principal, Profile};
use crate::view::{Admission, RegistryView};

/// PROTOCOL §2 device keepalive bounds, in seconds.
pub const DEVICE_MIN_KEEPALIVE: u16 = 30;
pub const DEVICE_MAX_KEEPALIVE: u16 = 1200;

/// What the CONNECT packet offered.
#[derive(Clone, Copy, Debug)]
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub keep_alive: u16,
}

/// A connection that may proceed.
/// A refused CONNECT: its 3.1.1 return code, and the device it came from when that device
/// signed correctly but is placed on another instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Refused {
    pub code: ConnectReturnCode,
    pub elsewhere: Option<DeviceKey>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub principal: Principal,
    pub profile: Profile,
    /// The keepalive the broker enforces (devices' values above 1200 s are capped).
    pub keep_alive: u16,
}

/// A configured standard user or application credential.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn new(secret: &str) -> Secret {
        Secret(secret.as_bytes().into())
    }

    fn matches(&self, offered: &[u8]) -> bool {
        bool::from(self.0.as_ref().ct_eq(offered))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// An application client's credential: logs in as `username`, acts for `account`.
#[derive(Clone, Debug)]
pub struct ApplicationCredential {
    pub password: Secret,
    pub account: AccountId,
}

/// Checks a device's password against a secret: [`DeviceLogin::verify`], behind a function
/// pointer so a unit test can see which secret each CONNECT was checked with.
pub type Verifier = fn(&DeviceLogin, secret: &[u8], password: &[u8]) -> bool;

/// The key an unknown device's password is checked with, so that refusing it costs the same
/// HMAC as refusing a known device's wrong password (SECURITY.md: the two are
/// indistinguishable). Its value is no secret: a match against it never admits anyone.
const UNKNOWN_DEVICE_SECRET: &[u8] = b"meridian-unknown-device-secret-0";

/// Decides CONNECTs for one broker instance.
pub struct Authenticator {
    instance: InstanceId,
    view: Arc<RegistryView>,
    users: HashMap<String, Secret>,
    applications: HashMap<String, ApplicationCredential>,
    allow_anonymous: bool,
    profiles: Profiles,
    verify: Verifier,
}

/// The limits each kind of client connects with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profiles {
    pub device: Profile,
    pub standard: Profile,
    pub application: Profile,
}

impl Profiles {
    /// The profiles the broker's `limits` give each kind of client.
    pub fn from_limits(limits: &crate::config::LimitsConfig) -> Profiles {
        Profiles {
            device: Profile::device_from(limits),
            standard: Profile::standard_from(limits),
            application: Profile::application_from(limits),
        }
    }
}

impl Authenticator {
    pub fn new(
        instance: InstanceId,
        view: Arc<RegistryView>,
        users: HashMap<String, Secret>,
        applications: HashMap<String, ApplicationCredential>,
        allow_anonymous: bool,
        profiles: Profiles,
    ) -> Authenticator {
        Authenticator {
            instance,
            view,
            users,
            applications,
            allow_anonymous,
            profiles,
            verify: DeviceLogin::verify,
        }
    }

    /// Checks device passwords with `verify` instead of [`DeviceLogin::verify`].
    pub fn with_verifier(mut self, verify: Verifier) -> Authenticator {
        self.verify = verify;
        self
    }

    pub fn view(&self) -> &Arc<RegistryView> {
        &self.view
    }

    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }

    pub fn authenticate(&self, offered: Credentials<'_>) -> Result<Accepted, ConnectReturnCode> {
        self.authenticate_placed(offered).map_err(|refused| refused.code)
    }

    /// [`Authenticator::authenticate`], naming the device a correctly signed CONNECT came
    /// from when it is refused only because it is placed elsewhere (an MQTT 5.0 device is then
    /// redirected, PROTOCOL §11). Nothing is named for a wrong signature.
    pub fn authenticate_placed(&self, offered: Credentials<'_>) -> Result<Accepted, Refused> {
        let refused = |code| Refused { code, elsewhere: None };
        let standard = |principal| Accepted {
            principal,
            profile: self.profiles.standard,
            keep_alive: offered.keep_alive,
        };
        let Some(username) = offered.username else {
            return if self.allow_anonymous {
                Ok(standard(Principal::Standard { username: None }))
            } else {
                Err(refused(ConnectReturnCode::NotAuthorized))
            };
        };
        let password = offered.password.unwrap_or_default();
        if let Some(secret) = self.users.get(username) {
            return if secret.matches(password) {
                Ok(standard(Principal::Standard { username: Some(username.to_owned()) }))
            } else {
                Err(refused(ConnectReturnCode::BadUserNamePassword))
            };
        }
        if let Some(application) = self.applications.get(username) {
            return if application.password.matches(password) {
                Ok(Accepted {
                    principal: Principal::Application { account: application.account.clone() },
                    profile: self.profiles.application,
                    keep_alive: offered.keep_alive,
                })
            } else {
                Err(refused(ConnectReturnCode::BadUserNamePassword))
            };
        }
        if username.contains('&') {
            return self.authenticate_device(
                offered.client_id,
                username,
                password,
                offered.keep_alive,
            );
        }
        Err(refused(ConnectReturnCode::BadUserNamePassword))
    }

    fn authenticate_device(
        &self,
        client_id: &str,
        username: &str,
        password: &[u8],
        keep_alive: u16,
    ) -> Result<Accepted, Refused> {
        let refused = |code| Refused { code, elsewhere: None };
        let login = DeviceLogin::parse(client_id, username).map_err(|error| {
            tracing::debug!(%error, "device CONNECT with a malformed clientId or username");
            refused(ConnectReturnCode::BadUserNamePassword)
        })?;
        // A name no device can have is an unknown device.
        let key = match (login.username.product_key.parse(), login.username.device_name.parse()) {
            (Ok(product_key), Ok(device_name)) => Some(DeviceKey { product_key, device_name }),
            _ => None,
        };
        let device = key.as_ref().and_then(|key| self.view.device(key));
        // One HMAC whether or not the device exists, with the method the client asked for
        // (the unknown one against a stand-in key), and the outcome decided after it: an
        // unknown device and a wrong password cost the same and answer the same.
        let secret =
            device.as_ref().map_or(UNKNOWN_DEVICE_SECRET, |d| d.secret.expose().as_bytes());
        let signed = (self.verify)(&login, secret, password);
        let (Some(key), Some(_), true) = (key, device, signed) else {
            return Err(refused(ConnectReturnCode::BadUserNamePassword));
        };
        if keep_alive < DEVICE_MIN_KEEPALIVE {
            return Err(refused(ConnectReturnCode::ServiceUnavailable));
        }
        match self.view.admits(&key, &self.instance) {
            Admission::Allowed => Ok(Accepted {
                principal: Principal::Device(key),
                profile: self.profiles.device,
                keep_alive: keep_alive.min(DEVICE_MAX_KEEPALIVE),
            }),
            Admission::Unknown => Err(refused(ConnectReturnCode::BadUserNamePassword)),
            Admission::Disabled => Err(refused(ConnectReturnCode::NotAuthorized)),
            Admission::Elsewhere => {
                Err(Refused { code: ConnectReturnCode::NotAuthorized, elsewhere: Some(key) })
            }
        }
    }
}

#[cfg(test)]
mod tests;
