//! The registry as a follower (a broker's view, the edge's routing table) reads it, with a feed
//! that a test can cut: while cut, the watch ends with an error and snapshots are refused, as
//! when the internal API is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use meridian_registry::store::{Entry, Op, Revision, Snapshot, Store, StoreError, Watch};
use tokio::sync::watch;

use crate::HANG;

pub struct CuttableFeed {
    inner: Arc<dyn Store>,
    cut: watch::Sender<bool>,
    /// Snapshots refused while cut: the follower has noticed and is retrying.
    refused: AtomicUsize,
}

impl CuttableFeed {
    pub fn new(inner: Arc<dyn Store>) -> Arc<CuttableFeed> {
        Arc::new(CuttableFeed { inner, cut: watch::channel(false).0, refused: AtomicUsize::new(0) })
    }

    /// Breaks the feed: open watches end with an error, new snapshots are refused.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets snapshots and watches through again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// Waits until a follower has asked for a snapshot while the feed was cut: it noticed the
    /// cut and is trying again.
    pub async fn retrying(&self) {
        let retrying = async {
            while self.refused.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(HANG, retrying).await.expect("the follower retries after a cut");
    }

    fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

fn cut_error() -> StoreError {
    StoreError::Backend("feed cut by the test".into())
}

#[async_trait::async_trait]
impl Store for CuttableFeed {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key).await
    }
    async fn scan_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        if self.is_cut() {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(cut_error());
        }
        self.inner.scan_prefix(prefix).await
    }
    async fn batch(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.inner.batch(ops).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
    fn watch_from(&self, after: Revision) -> Watch {
        let cut = self.cut.subscribe();
        let inner = self.inner.watch_from(after);
        Box::pin(futures::stream::unfold(Some((inner, cut)), |state| async move {
            let (mut inner, mut cut) = state?;
            if *cut.borrow_and_update() {
                return Some((Err(cut_error()), None));
            }
            let next = tokio::select! {
                // The cut first: no change gets through once it is made.
                biased;
                _ = cut.wait_for(|cut| *cut) => None,
                change = inner.next() => Some(change),
            };
            match next {
                None => Some((Err(cut_error()), None)),
                Some(change) => change.map(|change| (change, Some((inner, cut)))),
            }
        }))
    }
    async fn compact(&self, through: Revision) -> Result<(), StoreError> {
        self.inner.compact(through).await
    }
}
