//! DeviceSecrets at rest (PROTOCOL §9): they must stay usable for HMAC verification, so they are
//! sealed (XChaCha20-Poly1305) under a key from configuration instead of hashed, and never stored
//! or printed in plain text.
//!
//! The device's identity is the associated data of the seal, so a sealed secret copied onto
//! another device record does not open.

use std::fmt;

use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::ids::DeviceKey;

const NONCE_LEN: usize = 24;
const KEY_LEN: usize = 32;
/// DeviceSecrets the platform generates: 32 characters, like the vendor's.
const GENERATED_SECRET_LEN: usize = 32;
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The configured sealing key is not 64 hex digits.
    #[error("secret key must be 64 hex digits (32 bytes)")]
    BadKey,
    /// The sealed value was tampered with, belongs to another device, or was sealed under a
    /// different key.
    #[error("sealed secret does not open under this key for this device")]
    Unsealable,
    /// A DeviceSecret supplied by an operator is empty or too long.
    #[error("deviceSecret must be 1-64 printable ASCII characters")]
    BadSecret,
    /// The operating system's random source failed.
    #[error("random source failed")]
    Random,
}

/// A DeviceSecret in plain text. Only lives in memory; its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceSecret(String);

impl DeviceSecret {
    /// An operator-supplied secret.
    pub fn new(secret: impl Into<String>) -> Result<DeviceSecret, SecretError> {
        let secret = secret.into();
        let printable = secret.bytes().all(|b| b.is_ascii_graphic());
        if secret.is_empty() || secret.len() > 64 || !printable {
            return Err(SecretError::BadSecret);
        }
        Ok(DeviceSecret(secret))
    }

    /// A fresh random secret.
    pub fn generate() -> Result<DeviceSecret, SecretError> {
        let mut bytes = [0u8; GENERATED_SECRET_LEN];
        getrandom::fill(&mut bytes).map_err(|_| SecretError::Random)?;
        // 256 is a multiple of 62 plus 8, so the first 8 letters are very slightly likelier; a
        // 32-character secret keeps well over 180 bits of entropy regardless.
        let text =
            bytes.iter().map(|b| SECRET_ALPHABET[*b as usize % SECRET_ALPHABET.len()] as char);
        Ok(DeviceSecret(text.collect()))
    }

    /// The secret itself, for HMAC and for showing once at creation.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceSecret(<redacted>)")
    }
}

/// A DeviceSecret sealed for storage: hex of nonce ‖ ciphertext ‖ tag.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealedSecret(String);

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealedSecret(..)")
    }
}

/// The key that seals DeviceSecrets, supplied by configuration (file or environment).
#[derive(Clone)]
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
}

impl SecretKey {
    /// Parses 64 hex digits.
    pub fn from_hex(hex_key: &str) -> Result<SecretKey, SecretError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| SecretError::BadKey)?;
        let key = Key::try_from(bytes.as_slice()).map_err(|_| SecretError::BadKey)?;
        Ok(SecretKey { cipher: XChaCha20Poly1305::new(&key) })
    }

    /// A new random key, as hex, for `generate-config`.
    pub fn generate_hex() -> Result<String, SecretError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|_| SecretError::Random)?;
        Ok(hex::encode(bytes))
    }

    pub fn seal(
        &self,
        device: &DeviceKey,
        secret: &DeviceSecret,
    ) -> Result<SealedSecret, SecretError> {
        let nonce = XNonce::try_generate().map_err(|_| SecretError::Random)?;
        let aad = associated_data(device);
        let payload = Payload { msg: secret.0.as_bytes(), aad: aad.as_bytes() };
        let ciphertext =
            self.cipher.encrypt(&nonce, payload).map_err(|_| SecretError::Unsealable)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(nonce.as_slice());
        sealed.extend_from_slice(&ciphertext);
        Ok(SealedSecret(hex::encode(sealed)))
    }

    pub fn open(
        &self,
        device: &DeviceKey,
        sealed: &SealedSecret,
    ) -> Result<DeviceSecret, SecretError> {
        let bytes = hex::decode(&sealed.0).map_err(|_| SecretError::Unsealable)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretError::Unsealable);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| SecretError::Unsealable)?;
        let aad = associated_data(device);
        let payload = Payload { msg: ciphertext, aad: aad.as_bytes() };
        let plain = self.cipher.decrypt(&nonce, payload).map_err(|_| SecretError::Unsealable)?;
        String::from_utf8(plain).map(DeviceSecret).map_err(|_| SecretError::Unsealable)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

fn associated_data(device: &DeviceKey) -> String {
    format!("meridian-device-secret:{}|{}", device.product_key, device.device_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(dn: &str) -> DeviceKey {
        DeviceKey { product_key: "a13FN5TplKq".parse().unwrap(), device_name: dn.parse().unwrap() }
    }

    #[test]
    fn seal_round_trip_and_binding() {
        let key = SecretKey::from_hex(&SecretKey::generate_hex().unwrap()).unwrap();
        let secret = DeviceSecret::new("pZeRIoLApMRp2i1LAD4D5FREp3yPVBwy").unwrap();
        let sealed = key.seal(&device("dev1"), &secret).unwrap();
        assert!(!format!("{sealed:?}{}", sealed.0).contains(secret.expose()));
        assert_eq!(key.open(&device("dev1"), &sealed).unwrap(), secret);
        // Bound to its device and its key.
        assert!(key.open(&device("dev2"), &sealed).is_err());
        let other = SecretKey::from_hex(&SecretKey::generate_hex().unwrap()).unwrap();
        assert!(other.open(&device("dev1"), &sealed).is_err());
        // Two seals of one secret differ (fresh nonce).
        assert_ne!(key.seal(&device("dev1"), &secret).unwrap(), sealed);
    }

    #[test]
    fn secrets_never_print() {
        let secret = DeviceSecret::generate().unwrap();
        assert_eq!(secret.expose().len(), 32);
        assert!(!format!("{secret:?}").contains(secret.expose()));
        let key = SecretKey::from_hex(&"ab".repeat(32)).unwrap();
        assert!(!format!("{key:?}").contains("abab"));
    }

    #[test]
    fn bad_inputs() {
        assert!(matches!(SecretKey::from_hex("abcd"), Err(SecretError::BadKey)));
        assert!(matches!(SecretKey::from_hex(&"zz".repeat(32)), Err(SecretError::BadKey)));
        assert!(matches!(DeviceSecret::new(""), Err(SecretError::BadSecret)));
        assert!(matches!(DeviceSecret::new("has space"), Err(SecretError::BadSecret)));
        let key = SecretKey::from_hex(&"ab".repeat(32)).unwrap();
        let junk = SealedSecret("00ff".into());
        assert!(matches!(key.open(&device("dev1"), &junk), Err(SecretError::Unsealable)));
    }
}
