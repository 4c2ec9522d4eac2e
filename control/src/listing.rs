//! Lists over records of every account that survive a record that does not decode.
//!
//! A list scans a prefix holding every account's records and keeps the caller's. One record
//! that no longer decodes (written by an incompatible version, damaged, or nested deeper than
//! the decoder's depth limit) must not turn that list into a 500 for every account: it is
//! skipped, logged for the operator (its key and where decoding failed, never its content),
//! counted in `meridian_control_broken_records_total{kind}` (`task`, `pending_task`, `product`,
//! `product_copy`), and, when the fields naming its owner still decode, shown to that owner as
//! broken.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;

use meridian_registry::ids::AccountId;
use meridian_registry::store::Entry;

/// A record of the caller's that does not decode, as its list shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BrokenRecord {
    /// What the record is, as the list names its items: a task id, a product key,
    /// `{instance}/{productKey}` for a product copy.
    pub id: String,
    pub message: String,
}

/// The caller's records from one scan, and those of its records that do not decode.
#[derive(Clone, Debug)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub broken: Vec<BrokenRecord>,
}

/// How one kind of record is listed.
pub(crate) struct Kind<'a, T> {
    /// The metric label and the word in messages: `task`, `product`, `product copy`.
    pub(crate) name: &'static str,
    /// The prefix the records were scanned under; the rest of a key is the record's id.
    pub(crate) prefix: &'a str,
    /// Whether a decoded record is the caller's.
    pub(crate) mine: &'a dyn Fn(&T) -> bool,
    /// The account a record belongs to, read from as little of it as names the owner; `None`
    /// when not even that decodes, and then nobody is shown the record.
    pub(crate) owner: &'a dyn Fn(&[u8]) -> Option<AccountId>,
}

/// Decodes `entries`, keeping the caller's records and reporting broken ones.
pub(crate) fn decode_all<T: DeserializeOwned>(
    caller: &AccountId,
    entries: Vec<Entry>,
    kind: Kind<'_, T>,
) -> Listing<T> {
    let mut listing = Listing { items: Vec::new(), broken: Vec::new() };
    for entry in entries {
        match serde_json::from_slice::<T>(&entry.value) {
            Ok(record) => {
                if (kind.mine)(&record) {
                    listing.items.push(record);
                }
            }
            Err(error) => {
                report(kind.name, &entry.key, &error);
                if (kind.owner)(&entry.value).as_ref() == Some(caller) {
                    let id = entry.key.strip_prefix(kind.prefix).unwrap_or(&entry.key).to_owned();
                    listing.broken.push(BrokenRecord { message: unreadable(kind.name, &id), id });
                }
            }
        }
    }
    listing
}

/// Logs and counts a record that does not decode. The log names the key and where decoding
/// stopped, not serde's message, which can quote the record's content. The counter counts
/// every time a record is skipped; the log says so once per record and failure (the executor
/// and every list would otherwise repeat it on each pass).
pub(crate) fn report(kind: &'static str, key: &str, error: &serde_json::Error) {
    /// Failures already logged; bounded, and forgotten when full (they are logged again).
    static LOGGED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    const LOGGED_MAX: usize = 10_000;

    let label = kind.replace(' ', "_");
    metrics::counter!("meridian_control_broken_records_total", "kind" => label).increment(1);
    let failure = format!("{key} {:?} {}:{}", error.classify(), error.line(), error.column());
    {
        let mut logged = LOGGED.lock().unwrap_or_else(PoisonError::into_inner);
        if logged.len() >= LOGGED_MAX {
            logged.clear();
        }
        if !logged.insert(failure) {
            return;
        }
    }
    tracing::error!(
        kind,
        key,
        category = ?error.classify(),
        line = error.line(),
        column = error.column(),
        "stored record does not decode; skipped"
    );
}

/// What the owner of a broken record is told.
pub(crate) fn unreadable(kind: &str, id: &str) -> String {
    format!("the stored record of {kind} {id} does not decode; the operator has been alerted")
}

/// The `owner` field of a record, when it decodes whatever the rest holds. Skipped fields are
/// not depth-checked by the decoder, so a record too deep to decode still yields its owner.
pub(crate) fn owner_field(value: &[u8]) -> Option<AccountId> {
    #[derive(serde::Deserialize)]
    struct Head {
        owner: AccountId,
    }
    serde_json::from_slice::<Head>(value).ok().map(|head| head.owner)
}

/// The `holder` field of a product copy, likewise.
pub(crate) fn holder_field(value: &[u8]) -> Option<AccountId> {
    #[derive(serde::Deserialize)]
    struct Head {
        holder: AccountId,
    }
    serde_json::from_slice::<Head>(value).ok().map(|head| head.holder)
}

#[cfg(test)]
mod tests;
