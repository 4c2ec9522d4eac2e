#![allow(clippy::unwrap_used)]

use bytes::Bytes;

use super::*;

fn entry(key: &str, value: &str) -> Entry {
    Entry { key: key.into(), value: Bytes::from(value.to_owned()), revision: 1 }
}

#[derive(Debug, PartialEq, serde::Deserialize)]
struct Record {
    owner: AccountId,
    n: u32,
}

fn list(caller: &str, entries: Vec<Entry>) -> Listing<Record> {
    let caller: AccountId = caller.parse().unwrap();
    let mine = |record: &Record| record.owner == caller;
    decode_all(
        &caller,
        entries,
        Kind { name: "record", prefix: "records/", mine: &mine, owner: &owner_field },
    )
}

#[test]
fn broken_records_are_skipped_and_shown_to_their_owner_only() {
    let entries = vec![
        entry("records/1", r#"{"owner":"alpha","n":1}"#),
        entry("records/2", r#"{"owner":"alpha","n":"not a number"}"#),
        entry("records/3", r#"{"owner":"beta","n":3}"#),
        entry("records/4", "not JSON at all"),
    ];
    let alpha = list("alpha", entries.clone());
    assert_eq!(alpha.items.len(), 1);
    assert_eq!(alpha.broken.len(), 1);
    assert_eq!(alpha.broken[0].id, "2");
    assert!(alpha.broken[0].message.contains("record 2 does not decode"));
    let beta = list("beta", entries);
    assert_eq!(beta.items, vec![Record { owner: "beta".parse().unwrap(), n: 3 }]);
    assert!(beta.broken.is_empty(), "beta is not shown alpha's broken record");
}

#[test]
fn the_owner_of_a_record_too_deep_to_decode_is_still_read() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let value = format!(r#"{{"holder":"alpha","product":{deep}}}"#);
    assert!(serde_json::from_str::<serde_json::Value>(&value).is_err(), "beyond serde's limit");
    assert_eq!(holder_field(value.as_bytes()), Some("alpha".parse().unwrap()));
    assert_eq!(owner_field(b"[1, 2"), None);
}
