//! Device signatures for MQTT CONNECT (PROTOCOL §2): the one place that turns a clientId and a
//! username into typed values, builds the signed content and checks or produces the HMAC
//! password. The broker verifies with it and the bench signs with it, so both sides agree by
//! construction rather than by two copies of the same string formatting.
//!
//! What this module does *not* do: look up a device or its secret, check the `timestamp` against
//! a clock (PROTOCOL §2 makes a time window opt-in, and the C SDK always sends a fixed value), decide
//! placement or whether a device is disabled, or choose a CONNACK code. It also keeps no secrets:
//! every secret is borrowed for one call, so none can leak through `Debug` or an error.

use std::fmt;
use std::str::FromStr;

use hmac::{EagerHash, Hmac, KeyInit, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::Sha256;

/// Longest `cid` (the part of the clientId before the first `|`), in characters, PROTOCOL §2 allows.
pub const MAX_CID_CHARS: usize = 64;

/// The `timestamp` the C SDK 4.x sends on every CONNECT (2050-01-01T00:00:00Z in milliseconds);
/// it is why the timestamp cannot be checked against a clock by default.
pub const C_SDK_TIMESTAMP: &str = "2524608000000";

/// Everything a broker needs from the CONNECT fields of a device: the parsed clientId and
/// username, from which the signed content is rebuilt and the password checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLogin {
    /// The clientId, which names the HMAC and carries the optional timestamp.
    pub client_id: ClientId,
    /// The username, which names the device whose secret is the HMAC key.
    pub username: Username,
}

impl DeviceLogin {
    /// Parses the clientId and username of a CONNECT packet; the password is checked separately
    /// by [`DeviceLogin::verify`] once the caller has looked up the device's secret.
    pub fn parse(client_id: &str, username: &str) -> Result<Self, SignatureError> {
        Ok(Self { client_id: ClientId::parse(client_id)?, username: Username::parse(username)? })
    }

    /// The string the device signed (see [`content`]).
    pub fn content(&self) -> String {
        content(
            &self.client_id.cid,
            &self.username.device_name,
            &self.username.product_key,
            self.client_id.timestamp.as_deref(),
        )
    }

    /// Whether `password` (the raw CONNECT password bytes, hex in either case) is the HMAC of
    /// this login's content under `secret`. Constant time in the expected value; any malformed
    /// password is simply `false`, so the caller can answer "bad username or password" without
    /// a hint of which part was wrong.
    pub fn verify(&self, secret: &[u8], password: &[u8]) -> bool {
        verify_hex(self.client_id.sign_method, secret, &self.content(), password)
    }
}

/// A parsed MQTT clientId `{cid}|k=v,k=v,...|`.
///
/// Values are kept as the exact strings the device sent: `timestamp` goes into the signed
/// content verbatim, so normalising it (e.g. as a number) would break signatures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientId {
    /// Everything before the first `|`; may be empty (the MQTT 5 assigned-id variant).
    pub cid: String,
    /// `signmethod`, [`SignMethod::HmacMd5`] when absent as the SDKs assume.
    pub sign_method: SignMethod,
    /// `securemode`, if sent.
    pub secure_mode: Option<SecureMode>,
    /// `timestamp` (milliseconds or seconds), if sent; part of the signed content when present.
    pub timestamp: Option<String>,
    /// `instanceId`, if sent.
    pub instance_id: Option<String>,
    /// `authType`, if sent.
    pub auth_type: Option<String>,
    /// `_ss` (the C SDK's session flag), if sent.
    pub ss: Option<String>,
    /// `_v` (the SDK version, e.g. `sdk-c-4.1.0`), if sent; useful in connection logs.
    pub sdk_version: Option<String>,
    /// `ext`, if sent.
    pub ext: Option<String>,
    /// `lan` (the SDK language, e.g. `JS|WX`), if sent.
    pub lan: Option<String>,
    /// `_conn` (the C SDK's connection kind, e.g. `tls_0`), if sent.
    pub conn: Option<String>,
}

impl ClientId {
    /// Parses `{cid}|k=v,...|`.
    ///
    /// The parameter block runs from the first `|` to the *last* one because the Node SDK puts
    /// `|` inside a value (`lan=JS|WX`); a value therefore cannot contain `,`. A clientId with
    /// no `|` at all is a bare cid with defaults. Unknown keys are ignored so newer SDKs keep
    /// connecting; a known key sent twice is rejected because it would make the signed content
    /// ambiguous.
    pub fn parse(raw: &str) -> Result<Self, SignatureError> {
        let (cid, block) = match raw.split_once('|') {
            None => (raw, None),
            Some((cid, rest)) => {
                let Some((block, after)) = rest.rsplit_once('|') else {
                    return Err(SignatureError::UnterminatedParameters);
                };
                if !after.is_empty() {
                    return Err(SignatureError::TrailingAfterParameters);
                }
                (cid, Some(block))
            }
        };

        let chars = cid.chars().count();
        if chars > MAX_CID_CHARS {
            return Err(SignatureError::CidTooLong { chars });
        }

        let mut parsed = ClientId { cid: cid.to_owned(), ..ClientId::default() };
        let Some(block) = block else {
            return Ok(parsed);
        };

        // `signmethod` defaults when absent, so track presence separately to catch duplicates.
        let mut sign_method = None;
        for (index, pair) in block.split(',').enumerate() {
            // Tolerate `||` and stray commas: they carry no parameter and sign nothing.
            if pair.is_empty() {
                continue;
            }
            let Some((key, value)) = pair.split_once('=') else {
                return Err(SignatureError::ParameterWithoutEquals { index });
            };
            match key {
                "signmethod" => set_once(&mut sign_method, "signmethod", value.parse()?)?,
                "securemode" => set_once(&mut parsed.secure_mode, "securemode", value.parse()?)?,
                "timestamp" => set_once(&mut parsed.timestamp, "timestamp", value.to_owned())?,
                "instanceId" => set_once(&mut parsed.instance_id, "instanceId", value.to_owned())?,
                "authType" => set_once(&mut parsed.auth_type, "authType", value.to_owned())?,
                "_ss" => set_once(&mut parsed.ss, "_ss", value.to_owned())?,
                "_v" => set_once(&mut parsed.sdk_version, "_v", value.to_owned())?,
                "ext" => set_once(&mut parsed.ext, "ext", value.to_owned())?,
                "lan" => set_once(&mut parsed.lan, "lan", value.to_owned())?,
                "_conn" => set_once(&mut parsed.conn, "_conn", value.to_owned())?,
                _ => {}
            }
        }
        parsed.sign_method = sign_method.unwrap_or_default();
        Ok(parsed)
    }
}

/// A parsed MQTT username `{deviceName}&{productKey}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username {
    /// The device's name within its product.
    pub device_name: String,
    /// The product the device belongs to.
    pub product_key: String,
}

impl Username {
    /// Parses `{deviceName}&{productKey}`, splitting at the first `&` (neither part may contain
    /// one). Both parts must be non-empty: an empty one can name no device.
    pub fn parse(raw: &str) -> Result<Self, SignatureError> {
        let Some((device_name, product_key)) = raw.split_once('&') else {
            return Err(SignatureError::UsernameWithoutSeparator);
        };
        if device_name.is_empty() {
            return Err(SignatureError::EmptyDeviceName);
        }
        if product_key.is_empty() {
            return Err(SignatureError::EmptyProductKey);
        }
        Ok(Self { device_name: device_name.to_owned(), product_key: product_key.to_owned() })
    }
}

/// The string a device signs: the pairs clientId, deviceName, productKey, timestamp, sorted by
/// name and concatenated as name+value, with the timestamp pair omitted when the clientId has
/// none: `clientId{cid}deviceName{dn}productKey{pk}timestamp{ts}`.
pub fn content(cid: &str, device_name: &str, product_key: &str, timestamp: Option<&str>) -> String {
    let mut out = format!("clientId{cid}deviceName{device_name}productKey{product_key}");
    if let Some(timestamp) = timestamp {
        out.push_str("timestamp");
        out.push_str(timestamp);
    }
    out
}

/// The password for `content` under `secret`: lower-case hex of the HMAC. (The C SDK sends upper
/// case; [`sign_connect`] reproduces that, and [`verify`] accepts either.)
pub fn sign(method: SignMethod, secret: &[u8], content: &str) -> String {
    match method {
        SignMethod::HmacMd5 => hmac_hex::<Md5>(secret, content),
        SignMethod::HmacSha1 => hmac_hex::<Sha1>(secret, content),
        SignMethod::HmacSha256 => hmac_hex::<Sha256>(secret, content),
    }
}

/// Whether `password` is the hex HMAC of `content` under `secret`, in either letter case.
///
/// The hex is decoded and the tag compared in constant time (rather than comparing hex strings)
/// so case does not matter and timing reveals nothing about the expected tag. Non-hex, odd or
/// wrong lengths and an empty secret are `false`; this never panics.
pub fn verify(method: SignMethod, secret: &[u8], content: &str, password: &str) -> bool {
    verify_hex(method, secret, content, password.as_bytes())
}

/// The HMAC named by the clientId's `signmethod`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SignMethod {
    /// `hmacmd5`: the default when `signmethod` is absent, as the SDKs assume.
    #[default]
    HmacMd5,
    /// `hmacsha1`.
    HmacSha1,
    /// `hmacsha256`: what the C SDK 4.x sends.
    HmacSha256,
}

impl SignMethod {
    /// The lower-case name the SDKs put in `signmethod`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacMd5 => "hmacmd5",
            Self::HmacSha1 => "hmacsha1",
            Self::HmacSha256 => "hmacsha256",
        }
    }
}

impl FromStr for SignMethod {
    type Err = SignatureError;

    /// Case-insensitive, because SDKs and hand-written clients disagree on `HmacSha1` vs
    /// `hmacsha1`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::HmacMd5, Self::HmacSha1, Self::HmacSha256]
            .into_iter()
            .find(|method| method.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| SignatureError::UnknownSignMethod(s.to_owned()))
    }
}

impl fmt::Display for SignMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The clientId's `securemode`: how the device says it is connected. Informational here; the
/// broker knows whether the socket is TLS and may compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecureMode {
    /// `2`: TLS direct connection.
    Tls,
    /// `3`: plain TCP direct connection.
    Plain,
    /// `-1`: legacy clients.
    Legacy,
    /// Any other integer; kept rather than rejected so SDK modes PROTOCOL §2 does not list still
    /// parse.
    Other(i32),
}

impl SecureMode {
    /// The integer as sent in `securemode`.
    pub fn code(self) -> i32 {
        match self {
            Self::Tls => 2,
            Self::Plain => 3,
            Self::Legacy => -1,
            Self::Other(code) => code,
        }
    }

    /// The mode for an integer `securemode`.
    pub fn from_code(code: i32) -> Self {
        match code {
            2 => Self::Tls,
            3 => Self::Plain,
            -1 => Self::Legacy,
            other => Self::Other(other),
        }
    }
}

impl FromStr for SecureMode {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self::from_code).map_err(|_| SignatureError::InvalidSecureMode)
    }
}

/// The CONNECT fields a given SDK would send, for the bench and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SdkShape {
    /// C SDK 4.1.0: cid `{pk}.{dn}`, `timestamp=2524608000000,_ss=1,_v=sdk-c-4.1.0,securemode=3,
    /// signmethod=hmacsha256,ext=3,_conn=tls_0`, upper-case password. The timestamp defaults to
    /// [`C_SDK_TIMESTAMP`] because the real SDK always sends it.
    CSdk,
    /// Python (paho-based) clients: cid `{pk}&{dn}`, `securemode=3,signmethod=hmacsha1` then
    /// `timestamp` (seconds) when given, lower-case password.
    Python,
    /// Node SDK: cid `{pk}&{dn}`, `timestamp` (milliseconds) when given, then
    /// `securemode=2,signmethod=hmacsha256,lan=JS|WX,ext=1` — a `|` inside the block — and a
    /// lower-case password.
    Node,
}

/// The three CONNECT credentials a device sends.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedConnect {
    /// The MQTT clientId.
    pub client_id: String,
    /// The MQTT username.
    pub username: String,
    /// The MQTT password: hex HMAC. Never timestamp-checked by default, so it is replayable and
    /// is kept out of `Debug`.
    pub password: String,
}

impl fmt::Debug for SignedConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedConnect")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Produces the clientId, username and password `shape` would send for a device.
///
/// `timestamp` is passed in rather than read from a clock so benches and tests are
/// deterministic; with `None`, [`SdkShape::CSdk`] sends [`C_SDK_TIMESTAMP`] and the other shapes
/// send no timestamp at all.
pub fn sign_connect(
    shape: SdkShape,
    product_key: &str,
    device_name: &str,
    secret: &str,
    timestamp: Option<&str>,
) -> SignedConnect {
    let timestamp = match shape {
        SdkShape::CSdk => Some(timestamp.unwrap_or(C_SDK_TIMESTAMP)),
        SdkShape::Python | SdkShape::Node => timestamp,
    };
    let stamp = timestamp.map(|ts| format!("timestamp={ts}"));
    let stamp = stamp.as_deref();
    let (cid, method, params) = match shape {
        SdkShape::CSdk => (
            format!("{product_key}.{device_name}"),
            SignMethod::HmacSha256,
            [
                stamp,
                Some("_ss=1,_v=sdk-c-4.1.0,securemode=3,signmethod=hmacsha256,ext=3,_conn=tls_0"),
            ],
        ),
        SdkShape::Python => (
            format!("{product_key}&{device_name}"),
            SignMethod::HmacSha1,
            [Some("securemode=3,signmethod=hmacsha1"), stamp],
        ),
        SdkShape::Node => (
            format!("{product_key}&{device_name}"),
            SignMethod::HmacSha256,
            [stamp, Some("securemode=2,signmethod=hmacsha256,lan=JS|WX,ext=1")],
        ),
    };
    let params: Vec<&str> = params.into_iter().flatten().collect();

    let signed = content(&cid, device_name, product_key, timestamp);
    let mut password = sign(method, secret.as_bytes(), &signed);
    if shape == SdkShape::CSdk {
        password.make_ascii_uppercase();
    }
    SignedConnect {
        client_id: format!("{cid}|{}|", params.join(",")),
        username: format!("{device_name}&{product_key}"),
        password,
    }
}

/// Why a clientId or username could not be parsed. No variant carries a password or secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The cid (before the first `|`) is longer than [`MAX_CID_CHARS`].
    #[error("clientId cid is {chars} characters, at most {MAX_CID_CHARS} are allowed")]
    CidTooLong {
        /// The cid's length in characters.
        chars: usize,
    },
    /// The clientId has exactly one `|`, so its parameter block never ends.
    #[error("clientId parameter block is not terminated by '|'")]
    UnterminatedParameters,
    /// Characters follow the `|` that closes the parameter block.
    #[error("clientId has characters after the closing '|' of its parameter block")]
    TrailingAfterParameters,
    /// A parameter in the block has no `=`.
    #[error("clientId parameter {index} has no '='")]
    ParameterWithoutEquals {
        /// Zero-based position of the parameter in the block.
        index: usize,
    },
    /// A known parameter appears twice, which would make the signed content ambiguous.
    #[error("clientId parameter {key} appears more than once")]
    DuplicateParameter {
        /// The repeated key.
        key: &'static str,
    },
    /// `signmethod` names no supported HMAC.
    #[error("unknown signmethod {0:?}, expected hmacmd5, hmacsha1 or hmacsha256")]
    UnknownSignMethod(String),
    /// `securemode` is not an integer.
    #[error("securemode is not an integer")]
    InvalidSecureMode,
    /// The username has no `&` between deviceName and productKey.
    #[error("username is not deviceName&productKey")]
    UsernameWithoutSeparator,
    /// The username's deviceName (before `&`) is empty.
    #[error("username has an empty deviceName")]
    EmptyDeviceName,
    /// The username's productKey (after `&`) is empty.
    #[error("username has an empty productKey")]
    EmptyProductKey,
}

/// Stores the first value of a known clientId parameter and rejects a second.
fn set_once<T>(slot: &mut Option<T>, key: &'static str, value: T) -> Result<(), SignatureError> {
    if slot.is_some() {
        return Err(SignatureError::DuplicateParameter { key });
    }
    *slot = Some(value);
    Ok(())
}

/// Decodes a hex password (either case) and compares it with the expected tag.
fn verify_hex(method: SignMethod, secret: &[u8], content: &str, password: &[u8]) -> bool {
    // An empty secret means the registry has none for this device; HMAC would happily accept
    // it as a key everyone knows, so fail closed instead.
    if secret.is_empty() {
        return false;
    }
    let Ok(tag) = hex::decode(password) else {
        return false;
    };
    match method {
        SignMethod::HmacMd5 => hmac_verify::<Md5>(secret, content, &tag),
        SignMethod::HmacSha1 => hmac_verify::<Sha1>(secret, content, &tag),
        SignMethod::HmacSha256 => hmac_verify::<Sha256>(secret, content, &tag),
    }
}

/// Lower-case hex HMAC-`D` of `content`.
fn hmac_hex<D: EagerHash>(secret: &[u8], content: &str) -> String
where
    Hmac<D>: KeyInit + Mac,
{
    // Invariant: HMAC accepts keys of any length (RFC 2104 hashes long keys and pads short
    // ones), so `new_from_slice` cannot fail for `Hmac<D>`.
    let mut mac = Hmac::<D>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(content.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time check of `tag` against HMAC-`D` of `content`; a wrong length is `false`.
fn hmac_verify<D: EagerHash>(secret: &[u8], content: &str, tag: &[u8]) -> bool
where
    Hmac<D>: KeyInit + Mac,
{
    let Ok(mut mac) = Hmac::<D>::new_from_slice(secret) else {
        return false;
    };
    mac.update(content.as_bytes());
    mac.verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests;
