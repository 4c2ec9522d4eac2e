use std::sync::Mutex;

use async_trait::async_trait;
use meridian_registry::subscriptions::{SubscriptionError, Written};

use super::*;

/// A writer that records every write, commits at increasing revisions, and fails on demand.
#[derive(Default)]
struct FakeWriter {
    writes: Mutex<Vec<Vec<DeviceSubscriptions>>>,
    failing: std::sync::atomic::AtomicBool,
    /// Held by a test to keep a write in flight.
    gate: tokio::sync::Mutex<()>,
    /// Refuses, as the internal API does with 413, a write whose JSON is larger.
    max_bytes: Option<usize>,
    /// Refuses, as the internal API does with 400, any write holding this device.
    refuse: Option<DeviceKey>,
    /// Every write attempted, refused or not: how many records each held.
    attempts: Mutex<Vec<usize>>,
}

#[async_trait]
impl SubscriptionWriter for FakeWriter {
    async fn write_subscriptions(
        &self,
        records: Vec<DeviceSubscriptions>,
    ) -> Result<Written, SubscriptionError> {
        let _gate = self.gate.lock().await;
        self.attempts.lock().unwrap().push(records.len());
        let size = serde_json::to_vec(&records).unwrap().len();
        if self.max_bytes.is_some_and(|max| size > max) {
            return Err(SubscriptionError::Refused(format!("413: {size} bytes")));
        }
        if self.refuse.as_ref().is_some_and(|bad| records.iter().any(|r| r.device == *bad)) {
            return Err(SubscriptionError::Refused("400: a record out of bounds".into()));
        }
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SubscriptionError::Unavailable("down".into()));
        }
        let mut writes = self.writes.lock().unwrap();
        writes.push(records);
        Ok(Written { revision: 100 + writes.len() as Revision, skipped: 0 })
    }
}

fn device(name: &str) -> DeviceKey {
    DeviceKey { product_key: "a13FN5TplKq".parse().unwrap(), device_name: name.parse().unwrap() }
}

fn set(filters: &[&str]) -> BTreeMap<String, u8> {
    filters.iter().map(|f| ((*f).to_owned(), 1)).collect()
}

#[tokio::test]
async fn a_subscribe_storm_is_one_write_of_the_last_set() {
    let (keeper, writer, view) =
        (Keeper::default(), FakeWriter::default(), RegistryView::default());
    let lamp = device("lamp-1");
    let mut filters = Vec::new();
    for n in 0..100 {
        filters.push(format!("/a13FN5TplKq/lamp-1/user/{n}"));
        let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
        keeper.record(&lamp, set(&refs));
    }
    keeper.record(&device("lamp-2"), set(&["/a13FN5TplKq/lamp-2/user/get"]));
    keeper.flush(&writer, &view).await;
    let writes = writer.writes.lock().unwrap();
    assert_eq!(writes.len(), 1, "one batch for both devices");
    let lamp_1 = writes[0].iter().find(|r| r.device == lamp).unwrap();
    assert_eq!(lamp_1.filters.len(), 100);
    assert_eq!(keeper.unsaved(), 0);
}

#[tokio::test]
async fn the_latest_set_is_restored_here_until_the_view_has_it() {
    let (keeper, writer, view) =
        (Keeper::default(), FakeWriter::default(), RegistryView::default());
    let lamp = device("lamp-1");
    assert_eq!(keeper.kept(&lamp, &view), None);
    keeper.record(&lamp, set(&["/a13FN5TplKq/lamp-1/user/get"]));
    // Before the write and after it, until the view reaches the committed revision.
    assert_eq!(keeper.kept(&lamp, &view).unwrap().len(), 1);
    keeper.flush(&writer, &view).await;
    assert_eq!(keeper.kept(&lamp, &view).unwrap().len(), 1);
    view.set_revision(101);
    // The view is the truth now (here it has no record: nothing applied it).
    assert_eq!(keeper.kept(&lamp, &view), None);
}

#[tokio::test]
async fn a_set_recorded_during_a_write_is_written_after_it() {
    let keeper = Arc::new(Keeper::default());
    let writer = Arc::new(FakeWriter::default());
    let view = Arc::new(RegistryView::default());
    let lamp = device("lamp-1");
    keeper.record(&lamp, set(&["/a13FN5TplKq/lamp-1/user/a"]));
    let gate = writer.gate.lock().await;
    let flushing = {
        let (keeper, writer, view) = (keeper.clone(), writer.clone(), view.clone());
        tokio::spawn(async move { keeper.flush_once(writer.as_ref(), &view).await })
    };
    // Let the flush take the first set and block in the writer.
    while lock(&keeper.local).get(&lamp).unwrap().state == State::Dirty {
        tokio::task::yield_now().await;
    }
    keeper.record(&lamp, set(&["/a13FN5TplKq/lamp-1/user/b"]));
    drop(gate);
    assert_eq!(flushing.await.unwrap(), Ok(true));
    assert_eq!(keeper.unsaved(), 1, "the newer set is still to write");
    keeper.flush(writer.as_ref(), &view).await;
    let writes = writer.writes.lock().unwrap();
    assert_eq!(writes.len(), 2);
    assert!(writes[1][0].filters.contains_key("/a13FN5TplKq/lamp-1/user/b"));
}

#[tokio::test]
async fn a_failed_write_is_retried() {
    let (keeper, writer, view) =
        (Keeper::default(), FakeWriter::default(), RegistryView::default());
    writer.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    keeper.record(&device("lamp-1"), set(&["/a13FN5TplKq/lamp-1/user/get"]));
    assert_eq!(keeper.flush_once(&writer, &view).await, Err(()));
    assert_eq!(keeper.unsaved(), 1);
    writer.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(keeper.flush_once(&writer, &view).await, Ok(true));
    assert_eq!(keeper.unsaved(), 0);
}

#[tokio::test]
async fn a_set_outside_the_registry_bounds_does_not_block_the_others() {
    let (keeper, writer, view) =
        (Keeper::default(), FakeWriter::default(), RegistryView::default());
    let too_many: Vec<String> = (0..101).map(|n| format!("/a13FN5TplKq/lamp-1/user/{n}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    keeper.record(&device("lamp-1"), set(&too_many));
    keeper.record(&device("lamp-2"), set(&["/a13FN5TplKq/lamp-2/user/get"]));
    keeper.flush(&writer, &view).await;
    let writes = writer.writes.lock().unwrap();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].len(), 1);
    assert_eq!(writes[0][0].device, device("lamp-2"));
    assert_eq!(keeper.unsaved(), 0);
}

#[tokio::test]
async fn a_filter_with_control_characters_is_left_out_not_the_whole_set() {
    let (keeper, writer, view) =
        (Keeper::default(), FakeWriter::default(), RegistryView::default());
    let lamp = device("lamp-1");
    keeper.record(&lamp, set(&["/a13FN5TplKq/lamp-1/user/get", "/a13FN5TplKq/lamp-1/user/\u{1}"]));
    keeper.flush(&writer, &view).await;
    let writes = writer.writes.lock().unwrap();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0][0].filters, set(&["/a13FN5TplKq/lamp-1/user/get"]));
}

/// `count` devices, each holding 100 filters of about 100 bytes.
fn record_many(keeper: &Keeper, count: usize) {
    for n in 0..count {
        let filters: Vec<String> =
            (0..100).map(|f| format!("/a13FN5TplKq/lamp-{n}/user/{f:0>70}")).collect();
        let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
        keeper.record(&device(&format!("lamp-{n}")), set(&filters));
    }
}

#[tokio::test]
async fn a_flush_is_split_by_encoded_size() {
    let (keeper, writer, view) =
        (Keeper::default(), FakeWriter::default(), RegistryView::default());
    record_many(&keeper, 200);
    keeper.flush(&writer, &view).await;
    let writes = writer.writes.lock().unwrap();
    assert!(writes.len() > 1, "200 records of ~10 KB are more than one write");
    for write in writes.iter() {
        assert!(serde_json::to_vec(write).unwrap().len() <= MAX_WRITE_BYTES);
    }
    assert_eq!(writes.iter().map(Vec::len).sum::<usize>(), 200);
    assert_eq!(keeper.unsaved(), 0);
}

#[tokio::test]
async fn a_write_refused_as_too_large_is_split_until_it_fits() {
    let (keeper, view) = (Keeper::default(), RegistryView::default());
    let writer = FakeWriter { max_bytes: Some(64 * 1024), ..FakeWriter::default() };
    record_many(&keeper, 20);
    assert_eq!(keeper.flush_once(&writer, &view).await, Ok(true));
    let writes = writer.writes.lock().unwrap();
    assert!(writes.len() > 1);
    assert_eq!(writes.iter().map(Vec::len).sum::<usize>(), 20, "every record written");
    assert_eq!(keeper.unsaved(), 0);
}

#[tokio::test]
async fn a_record_refused_alone_is_dropped_and_the_others_written() {
    let (keeper, view) = (Keeper::default(), RegistryView::default());
    let writer = FakeWriter { refuse: Some(device("lamp-3")), ..FakeWriter::default() };
    record_many(&keeper, 8);
    assert_eq!(keeper.flush_once(&writer, &view).await, Ok(true));
    {
        let writes = writer.writes.lock().unwrap();
        let written: Vec<&DeviceKey> = writes.iter().flatten().map(|r| &r.device).collect();
        assert_eq!(written.len(), 7);
        assert!(!written.contains(&&device("lamp-3")));
    }
    assert_eq!(keeper.unsaved(), 0, "nothing left to retry forever");
    // Nothing more is attempted: the refused record is not picked again.
    let attempts = writer.attempts.lock().unwrap().len();
    assert_eq!(keeper.flush_once(&writer, &view).await, Ok(false));
    assert_eq!(writer.attempts.lock().unwrap().len(), attempts);
}
