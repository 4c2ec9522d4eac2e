//! Keeps a [`RoutingTable`](crate::RoutingTable) current from the registry's change feed.
//!
//! Data flows one way: the control plane writes the registry, this applies the feed. The table
//! is loaded from snapshots of the four prefixes it needs, then follows the feed from the
//! oldest snapshot's revision; changes already in a snapshot are applied again, which is
//! harmless because applying is idempotent and the replay ends on each key's latest value.

use std::sync::Arc;

use futures::StreamExt;
use meridian_registry::keys;
use meridian_registry::store::{Change, Revision, Store, StoreError};

use crate::routing::TableWriter;

/// The prefixes the table is built from, catalogue first so a device's instance is known by
/// the time the device is.
const PREFIXES: [&str; 4] = [keys::REGIONS, keys::INSTANCES, keys::PRODUCTS, keys::DEVICES];

/// Loads the table, then applies the feed until it ends. If the store has compacted the feed
/// past where this follower is (it fell too far behind), the table is reloaded from fresh
/// snapshots, dropping devices deleted meanwhile, and following resumes.
///
/// # Errors
///
/// The first store error other than [`StoreError::Compacted`]; the table keeps serving what it
/// has, and the caller decides whether to restart following.
pub async fn follow(store: Arc<dyn Store>, mut writer: TableWriter) -> Result<(), StoreError> {
    let mut resync = false;
    loop {
        if resync {
            writer.begin_resync();
        }
        let from = load_snapshots(&*store, &mut writer).await?;
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
                Some(Err(error)) => return Err(error),
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
