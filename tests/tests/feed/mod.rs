//! For the crash tests: a change-feed watcher that follows a store across its writer's crashes,
//! as a broker or an edge does across control-plane restarts.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::StreamExt;
use meridian_registry::store::{Revision, Store};

/// Every key's value and revision as rebuilt from the feed alone.
#[derive(Default)]
pub struct Follower {
    /// The last revision read; the next read resumes after it.
    seen: Revision,
    state: BTreeMap<String, (Revision, Bytes)>,
}

impl Follower {
    /// Reads the feed after the last revision seen up to the store's current one: every
    /// revision exactly once, in order, without a gap. The writer is dead meanwhile, so that
    /// revision is the end.
    pub async fn catch_up(&mut self, store: &impl Store) {
        let last = store.revision().await.expect("revision");
        assert!(last >= self.seen, "the store went back from revision {} to {last}", self.seen);
        let mut feed = store.watch_from(self.seen);
        while self.seen < last {
            let change = feed.next().await.expect("the feed ended").expect("feed error");
            assert_eq!(change.revision, self.seen + 1, "gap or duplicate in the feed");
            self.seen = change.revision;
            match change.value {
                Some(value) => self.state.insert(change.key, (change.revision, value)),
                None => self.state.remove(&change.key),
            };
        }
    }

    /// The state rebuilt from the feed equals a fresh scan of the whole store.
    pub async fn assert_matches(&self, store: &impl Store) {
        let snapshot = store.scan_prefix("").await.expect("scan");
        assert_eq!(snapshot.revision, self.seen, "call catch_up first");
        let scanned: BTreeMap<String, (Revision, Bytes)> = snapshot
            .entries
            .into_iter()
            .map(|entry| (entry.key, (entry.revision, entry.value)))
            .collect();
        if scanned != self.state {
            let differ = scanned
                .keys()
                .chain(self.state.keys())
                .find(|key| scanned.get(*key) != self.state.get(*key));
            panic!("the feed and the store disagree, first on {differ:?}");
        }
    }
}
