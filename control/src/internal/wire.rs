//! The internal API's JSON shapes, shared by the server ([`crate::internal`]) and its client
//! ([`crate::remote`]) so the two can never drift apart.
//!
//! Values are opaque bytes (sealed records) and travel as standard base64. Keys and revisions
//! travel as they are.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use meridian_registry::store::{Change, Entry, Expect, Op, Revision, Snapshot, StoreError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Path of every endpoint, under one versioned root.
pub const SNAPSHOT: &str = "/internal/v1/snapshot";
pub const WATCH: &str = "/internal/v1/watch";
pub const REVISION: &str = "/internal/v1/revision";
pub const GET: &str = "/internal/v1/get";
pub const BATCH: &str = "/internal/v1/batch";
pub const DEVICE_SUBSCRIPTIONS: &str = "/internal/v1/device-subscriptions";

/// Media type of the watch stream: one JSON document per line.
pub const NDJSON: &str = "application/x-ndjson";

/// Opaque bytes carried as a base64 string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base64(pub Bytes);

impl Serialize for Base64 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Base64, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map(|bytes| Base64(Bytes::from(bytes)))
            .map_err(|_| serde::de::Error::custom("value is not valid base64"))
    }
}

/// One stored value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireEntry {
    pub key: String,
    pub revision: Revision,
    pub value: Base64,
}

impl From<Entry> for WireEntry {
    fn from(entry: Entry) -> WireEntry {
        WireEntry { key: entry.key, revision: entry.revision, value: Base64(entry.value) }
    }
}

impl From<WireEntry> for Entry {
    fn from(entry: WireEntry) -> Entry {
        Entry { key: entry.key, value: entry.value.0, revision: entry.revision }
    }
}

/// `GET snapshot` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireSnapshot {
    pub revision: Revision,
    pub entries: Vec<WireEntry>,
}

impl From<Snapshot> for WireSnapshot {
    fn from(snapshot: Snapshot) -> WireSnapshot {
        WireSnapshot {
            revision: snapshot.revision,
            entries: snapshot.entries.into_iter().map(WireEntry::from).collect(),
        }
    }
}

impl From<WireSnapshot> for Snapshot {
    fn from(snapshot: WireSnapshot) -> Snapshot {
        Snapshot {
            revision: snapshot.revision,
            entries: snapshot.entries.into_iter().map(Entry::from).collect(),
        }
    }
}

/// `GET get` answer: the entry, or `null` when the key does not exist.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireGet {
    pub entry: Option<WireEntry>,
}

/// `GET revision` and `POST batch` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireRevision {
    pub revision: Revision,
}

/// `POST device-subscriptions` body: each device's whole kept set (PROTOCOL §2).
#[derive(Debug, Serialize, Deserialize)]
pub struct WireDeviceSubscriptions {
    pub devices: Vec<meridian_registry::model::DeviceSubscriptions>,
}

/// `POST device-subscriptions` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireSubscriptionsWritten {
    pub revision: Revision,
    /// Records not kept because their device does not exist.
    pub skipped: usize,
}

/// `POST batch` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireBatch {
    pub ops: Vec<WireOp>,
}

/// One write of a batch; `value: null` deletes.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireOp {
    pub key: String,
    pub value: Option<Base64>,
    #[serde(default)]
    pub expect: WireExpect,
}

/// [`Expect`] on the wire: `"any"`, `"absent"` or `{"revision":N}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireExpect {
    #[default]
    Any,
    Absent,
    Revision(Revision),
}

impl From<Expect> for WireExpect {
    fn from(expect: Expect) -> WireExpect {
        match expect {
            Expect::Any => WireExpect::Any,
            Expect::Absent => WireExpect::Absent,
            Expect::Revision(revision) => WireExpect::Revision(revision),
        }
    }
}

impl From<WireExpect> for Expect {
    fn from(expect: WireExpect) -> Expect {
        match expect {
            WireExpect::Any => Expect::Any,
            WireExpect::Absent => Expect::Absent,
            WireExpect::Revision(revision) => Expect::Revision(revision),
        }
    }
}

impl From<Op> for WireOp {
    fn from(op: Op) -> WireOp {
        WireOp { key: op.key, value: op.value.map(Base64), expect: op.expect.into() }
    }
}

impl From<WireOp> for Op {
    fn from(op: WireOp) -> Op {
        Op { key: op.key, value: op.value.map(|value| value.0), expect: op.expect.into() }
    }
}

/// One line of the watch stream. Untagged: the fields present say which line it is.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WatchLine {
    /// A committed change; `value: null` is a delete.
    Change { revision: Revision, key: String, value: Option<Base64> },
    /// Sent when the stream opens and every heartbeat interval after: the store's revision at
    /// that moment. Changes up to it may still be on their way; it only proves the link lives.
    Heartbeat { heartbeat: Revision },
    /// The last line of a stream that failed; `error` is a [`code`] value.
    Error {
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested: Option<Revision>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compacted: Option<Revision>,
    },
}

impl From<Change> for WatchLine {
    fn from(change: Change) -> WatchLine {
        WatchLine::Change {
            revision: change.revision,
            key: change.key,
            value: change.value.map(Base64),
        }
    }
}

/// Machine-readable error codes of [`WireError::code`] and [`WatchLine::Error`].
pub mod code {
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const FORBIDDEN: &str = "forbidden";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const NOT_FOUND: &str = "not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const INVALID_KEY: &str = "invalid_key";
    pub const DUPLICATE_KEY: &str = "duplicate_key";
    pub const CONFLICT: &str = "conflict";
    pub const COMPACTED: &str = "compacted";
    pub const BATCH_TOO_LARGE: &str = "batch_too_large";
    pub const BACKEND: &str = "backend";
}

/// Every error answer: `{"code":…,"message":…}`, plus the fields that let a client rebuild the
/// exact [`StoreError`] (conflict details, the compaction horizon, the offending key).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WireError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<WireExpect>,
    /// For a conflict: the revision found, `null` when the key was missing.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub found: Option<Option<Revision>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<Revision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted: Option<Revision>,
}

/// Reads a field that is present (possibly `null`) as `Some`; serde's default reads `null` as
/// an absent field, which would lose "the key was missing" from a conflict.
fn present<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<Revision>>, D::Error> {
    Option::<Revision>::deserialize(deserializer).map(Some)
}

impl WireError {
    pub fn new(code: &str, message: impl Into<String>) -> WireError {
        WireError { code: code.to_owned(), message: message.into(), ..WireError::default() }
    }

    /// The error a store returned, with its details.
    pub fn from_store(error: &StoreError) -> WireError {
        let message = error.to_string();
        match error {
            StoreError::Conflict { key, expected, found } => WireError {
                key: Some(key.clone()),
                expected: Some((*expected).into()),
                found: Some(*found),
                ..WireError::new(code::CONFLICT, message)
            },
            StoreError::InvalidKey(key) => {
                WireError { key: Some(key.clone()), ..WireError::new(code::INVALID_KEY, message) }
            }
            StoreError::DuplicateKey(key) => {
                WireError { key: Some(key.clone()), ..WireError::new(code::DUPLICATE_KEY, message) }
            }
            StoreError::Compacted { requested, compacted } => WireError {
                requested: Some(*requested),
                compacted: Some(*compacted),
                ..WireError::new(code::COMPACTED, message)
            },
            StoreError::BatchTooLarge { .. } => WireError::new(code::BATCH_TOO_LARGE, message),
            StoreError::Backend(_) => WireError::new(code::BACKEND, message),
        }
    }

    /// The [`StoreError`] this answer describes, when it describes one.
    pub fn to_store(&self) -> Option<StoreError> {
        match self.code.as_str() {
            code::CONFLICT => Some(StoreError::Conflict {
                key: self.key.clone()?,
                expected: self.expected?.into(),
                found: self.found?,
            }),
            code::INVALID_KEY => Some(StoreError::InvalidKey(self.key.clone()?)),
            code::DUPLICATE_KEY => Some(StoreError::DuplicateKey(self.key.clone()?)),
            code::COMPACTED => Some(StoreError::Compacted {
                requested: self.requested?,
                compacted: self.compacted?,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_lines_round_trip() {
        let change = WatchLine::from(Change {
            revision: 7,
            key: "devices/pk/dn".into(),
            value: Some(Bytes::from_static(b"\x00\xffsealed")),
        });
        let text = serde_json::to_string(&change).unwrap();
        assert_eq!(text, r#"{"revision":7,"key":"devices/pk/dn","value":"AP9zZWFsZWQ="}"#);
        let delete = r#"{"revision":8,"key":"devices/pk/dn","value":null}"#;
        assert!(matches!(
            serde_json::from_str::<WatchLine>(delete).unwrap(),
            WatchLine::Change { revision: 8, value: None, .. }
        ));
        assert!(matches!(
            serde_json::from_str::<WatchLine>(r#"{"heartbeat":9}"#).unwrap(),
            WatchLine::Heartbeat { heartbeat: 9 }
        ));
        assert!(matches!(
            serde_json::from_str::<WatchLine>(r#"{"error":"compacted","compacted":3}"#).unwrap(),
            WatchLine::Error { compacted: Some(3), .. }
        ));
        assert!(
            serde_json::from_str::<WatchLine>(r#"{"revision":1,"key":"k","value":"!"}"#).is_err()
        );
    }

    #[test]
    fn store_errors_survive_the_wire() {
        let errors = [
            StoreError::Conflict {
                key: "usage/a".into(),
                expected: Expect::Absent,
                found: Some(4),
            },
            StoreError::Conflict {
                key: "usage/a".into(),
                expected: Expect::Revision(3),
                found: None,
            },
            StoreError::InvalidKey("a//b".into()),
            StoreError::DuplicateKey("usage/a".into()),
            StoreError::Compacted { requested: 2, compacted: 10 },
        ];
        for error in errors {
            let wire = serde_json::to_string(&WireError::from_store(&error)).unwrap();
            let back: WireError = serde_json::from_str(&wire).unwrap();
            assert_eq!(back.to_store().unwrap().to_string(), error.to_string(), "{wire}");
        }
    }

    #[test]
    fn expect_on_the_wire() {
        let op: WireOp = serde_json::from_str(r#"{"key":"usage/a","value":"AA=="}"#).unwrap();
        assert_eq!(op.expect, WireExpect::Any);
        let op: WireOp =
            serde_json::from_str(r#"{"key":"usage/a","value":null,"expect":{"revision":5}}"#)
                .unwrap();
        assert_eq!(Op::from(op), Op::delete("usage/a").expecting(Expect::Revision(5)));
        assert_eq!(serde_json::to_string(&WireExpect::Absent).unwrap(), r#""absent""#);
    }
}
