//! Keeps a [`RoutingTable`](crate::RoutingTable) current from the registry's change feed.
//!
//! Data flows one way: the control plane writes the registry, this applies the feed. The table
//! is loaded from snapshots of the four prefixes it needs, then follows the feed from the
//! oldest snapshot's revision; changes already in a snapshot are applied again, which is
//! harmless because applying is idempotent and the replay ends on each key's latest value.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use meridian_registry::keys;
use meridian_registry::store::{Change, Revision, Store, StoreError};

use crate::routing::TableWriter;

/// The prefixes the table is built from, catalogue first so a device's instance is known by
/// the time the device is.
const PREFIXES: [&str; 4] = [keys::REGIONS, keys::INSTANCES, keys::PRODUCTS, keys::DEVICES];

/// How long a follower waits after a store error before it loads fresh snapshots.
const RETRY: Duration = Duration::from_secs(1);

/// Loads the table, then applies the feed until it ends. If the store has compacted the feed
/// past where this follower is (it fell too far behind), or the store fails (a remote store's
/// connection broke), the table is reloaded from fresh snapshots, dropping devices deleted
/// meanwhile, and following resumes; after a failure it waits [`RETRY`] first. The table keeps
/// serving what it has all the while: a follower that gave up would leave it answering for
/// deleted devices for good.
///
/// # Errors
///
/// None today: the signature keeps room for an error the follower cannot recover from.
pub async fn follow(store: Arc<dyn Store>, mut writer: TableWriter) -> Result<(), StoreError> {
    let mut resync = false;
    loop {
        if resync {
            writer.begin_resync();
        }
        let from = match load_snapshots(&*store, &mut writer).await {
            Ok(from) => from,
            Err(error) => {
                tracing::warn!(%error, "registry snapshot failed; retrying");
                resync = true;
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if resync {
            writer.finish_resync();
        }
        writer.mark_applied(from);
        tracing::info!(
            revision = from,
            devices = writer.table().device_count(),
            "routing table loaded; following the registry feed"
        );

        let mut feed = store.watch_from(from);
        loop {
            match feed.next().await {
                Some(Ok(change)) => {
                    writer.apply(&change);
                    writer.mark_applied(change.revision);
                }
                Some(Err(StoreError::Compacted { requested, compacted })) => {
                    tracing::warn!(requested, compacted, "registry feed compacted; reloading");
                    resync = true;
                    break;
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "registry feed failed; reloading");
                    resync = true;
                    tokio::time::sleep(RETRY).await;
                    break;
                }
                None => return Ok(()),
            }
        }
    }
}

/// Applies a snapshot of each prefix; returns the oldest snapshot revision, from which the
/// feed must be replayed.
async fn load_snapshots(
    store: &dyn Store,
    writer: &mut TableWriter,
) -> Result<Revision, StoreError> {
    let mut from = Revision::MAX;
    for prefix in PREFIXES {
        let snapshot = store.scan_prefix(prefix).await?;
        from = from.min(snapshot.revision);
        for entry in snapshot.entries {
            writer.apply(&Change {
                revision: entry.revision,
                key: entry.key,
                value: Some(entry.value),
            });
        }
    }
    Ok(from)
}
