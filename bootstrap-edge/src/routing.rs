//! The routing table: device → placement → endpoint, in memory, read on every request.
//!
//! Reads never block: devices and products live in `scc::HashIndex`, whose reads are lock-free
//! (chosen over dashmap and papaya by the measurements in `docs/BENCHMARKS.md`), and the small,
//! rarely changing catalogue of instances and regions is an immutable snapshot swapped whole.
//! One [`TableWriter`], driven by the registry's change feed ([`follow`](crate::follow)), is the
//! only writer, so a 10,000-device distribution batch is 10,000 independent inserts that readers
//! never wait for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use foldhash::fast::RandomState;
use meridian_geo::{Locator, LookupOutcome};
use meridian_registry::ids::{DeviceKey, InstanceId, ProductKey, RegionId};
use meridian_registry::keys;
use meridian_registry::model::{Instance, Placement, PlacementCandidate, Region};
use meridian_registry::store::{Change, Revision};
use scc::hash_index::Entry;
use scc::{Guard, HashIndex};
use serde::Deserialize;
use tokio::sync::watch;

use crate::metrics;
use crate::reply;
use crate::route::{Candidates, Choices, ProductNo, Route, RouteKey};

/// Where devices are placed, readable from every request without blocking.
pub struct RoutingTable {
    /// The big one: one entry per device.
    devices: HashIndex<RouteKey, Route, RandomState>,
    /// ProductKey → number and home instance. Entries are never removed (a deleted product
    /// keeps its number, with no home), so device keys stay valid.
    products: HashIndex<ProductKey, ProductEntry, RandomState>,
    /// Instances and regions: tens to hundreds of records, replaced whole on change.
    catalogue: ArcSwap<Catalogue>,
    /// The feed revision applied so far; tests and operators wait on it.
    applied: watch::Sender<Revision>,
    /// Devices in the table, kept by the writer because `HashIndex::len` walks the whole table.
    device_count: AtomicUsize,
    /// Looked up in place of a missing home instance, so that a device without one costs the
    /// same as a device with one (PROTOCOL §9). Never matters for the answer.
    decoy: InstanceId,
}

#[derive(Clone, Debug)]
struct ProductEntry {
    no: ProductNo,
    home: Option<Arc<InstanceId>>,
}

/// The instance and region records the table needs, prepared for the hot path.
#[derive(Default)]
struct Catalogue {
    instances: HashMap<InstanceId, InstanceEntry, RandomState>,
    regions: HashMap<RegionId, meridian_geo::Region, RandomState>,
    /// The region-pinned answer: each region's operator-configured public endpoint.
    region_replies: HashMap<RegionId, Bytes, RandomState>,
}

struct InstanceEntry {
    /// The complete `200` body naming this instance's endpoint, built once per change.
    reply: Bytes,
}

/// What the table says about one device.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// Connect here.
    Endpoint {
        /// The complete success body (PROTOCOL §4).
        reply: Bytes,
        /// How a nearest-access client was located; `None` for other placements.
        geo: Option<LookupOutcome>,
    },
    /// An unknown device, or a known one whose placement names nothing the table knows (a
    /// deleted instance, a product without a home). One case on purpose: callers must not
    /// tell the two apart (PROTOCOL §9).
    Unroutable,
}

impl RoutingTable {
    /// An empty table and its only writer.
    #[must_use]
    pub fn new() -> (Arc<RoutingTable>, TableWriter) {
        let table = Arc::new(RoutingTable {
            devices: HashIndex::with_hasher(RandomState::default()),
            products: HashIndex::with_hasher(RandomState::default()),
            catalogue: ArcSwap::from_pointee(Catalogue::default()),
            applied: watch::Sender::new(0),
            device_count: AtomicUsize::new(0),
            decoy: decoy_instance(),
        });
        let writer = TableWriter::new(Arc::clone(&table));
        (table, writer)
    }

    /// Where `device` should connect, for a client at `client`.
    ///
    /// Unknown and known-but-unroutable devices take the same path through the same maps, so
    /// the answer time does not reveal which devices exist.
    pub fn resolve(&self, device: &DeviceKey, client: IpAddr, locator: &Locator) -> Resolution {
        let guard = Guard::new();
        let product = self.products.peek(&device.product_key, &guard);
        let no = product.map_or(ProductNo::UNKNOWN, |p| p.no);
        let found = self.devices.peek(&RouteKey::new(no, device.device_name.as_str()), &guard);
        let catalogue = self.catalogue.load();
        // Keeps a nearest-access set's choices loaded while `resolved` borrows a reply.
        let choices;

        // An unknown device is resolved as a home-placed one, then the answer is dropped.
        let route = found.unwrap_or(&Route::Home);
        let resolved = match route {
            Route::Home => {
                let home = product.and_then(|p| p.home.as_deref());
                let entry = catalogue.instances.get(home.unwrap_or(&self.decoy));
                home.and(entry).map(|entry| (&entry.reply, None))
            }
            Route::Specified(instance) => {
                catalogue.instances.get(&**instance).map(|entry| (&entry.reply, None))
            }
            Route::Nearest(candidates) => {
                choices = candidates.choices();
                choices.pick(client, locator)
            }
        };
        match (found, resolved) {
            (Some(_), Some((reply, geo))) => Resolution::Endpoint { reply: reply.clone(), geo },
            (None, resolved) => {
                black_box(resolved);
                Resolution::Unroutable
            }
            (Some(_), None) => Resolution::Unroutable,
        }
    }

    /// The region-pinned answer for `region`: the public endpoint the operator configured for
    /// it, or `None` if the region is unknown or has none.
    #[must_use]
    pub fn region_reply(&self, region: &RegionId) -> Option<Bytes> {
        self.catalogue.load().region_replies.get(region).cloned()
    }

    /// Devices in the table.
    #[must_use]
    pub fn device_count(&self) -> usize {
        self.device_count.load(Ordering::Relaxed)
    }

    /// The feed revision this table reflects.
    #[must_use]
    pub fn revision(&self) -> Revision {
        *self.applied.borrow()
    }

    /// Waits until the table reflects at least `revision`.
    pub async fn caught_up(&self, revision: Revision) {
        let mut applied = self.applied.subscribe();
        // The sender lives in `self`, so the channel cannot close while we borrow it.
        let _ = applied.wait_for(|applied| *applied >= revision).await;
    }
}

impl Catalogue {
    /// The candidates this catalogue can resolve, in placement order, ready to pick from.
    fn choices(&self, candidates: &[PlacementCandidate]) -> Choices {
        let mut choices = Choices::default();
        for candidate in candidates {
            let region = self.regions.get(&candidate.region);
            if let (Some(region), Some(entry)) = (region, self.instances.get(&candidate.instance)) {
                choices.regions.push(region.clone());
                choices.replies.push(entry.reply.clone());
            }
        }
        choices
    }
}

/// The one writer of a [`RoutingTable`]: applies registry changes and keeps the state only the
/// writer needs (full instance and region records, interned placements).
pub struct TableWriter {
    table: Arc<RoutingTable>,
    next_product: u32,
    instances: BTreeMap<InstanceId, Instance>,
    regions: BTreeMap<RegionId, Region>,
    /// Shared `Arc`s for placements, so equal placements cost one allocation in total.
    specified: HashMap<InstanceId, Arc<InstanceId>, RandomState>,
    nearest: HashMap<Vec<(RegionId, InstanceId)>, Arc<Candidates>, RandomState>,
    /// Interned placements after the last prune; pruning again at twice this keeps pruning
    /// cost amortised.
    interned_after_prune: usize,
    /// During a resync: every device key the fresh snapshot holds.
    resync_seen: Option<HashSet<RouteKey, RandomState>>,
    /// [`metrics::ROUTING_DEVICES`], registered once.
    size_gauge: ::metrics::Gauge,
}

/// The parts of a device record the table uses; the rest (sealed secret, tags) is skipped.
#[derive(Deserialize)]
struct DeviceRecord {
    key: DeviceKey,
    placement: Placement,
}

#[derive(Deserialize)]
struct ProductRecord {
    key: ProductKey,
    home_instance: InstanceId,
}

impl TableWriter {
    fn new(table: Arc<RoutingTable>) -> Self {
        Self {
            table,
            next_product: 0,
            instances: BTreeMap::new(),
            regions: BTreeMap::new(),
            specified: HashMap::default(),
            nearest: HashMap::default(),
            interned_after_prune: 0,
            resync_seen: None,
            size_gauge: metrics::routing_devices_gauge(),
        }
    }

    /// The table this writer writes.
    #[must_use]
    pub fn table(&self) -> &Arc<RoutingTable> {
        &self.table
    }

    /// Applies one change. Idempotent, so a feed replayed over a snapshot converges. Records
    /// that do not decode are logged and skipped: one bad record must not stop the edge from
    /// following the feed.
    pub fn apply(&mut self, change: &Change) {
        let key = change.key.as_str();
        if key.starts_with(keys::DEVICES) {
            self.apply_device(change);
        } else if key.starts_with(keys::PRODUCTS) {
            self.apply_product(change);
        } else if let Some(id) = key.strip_prefix(keys::INSTANCES) {
            self.apply_catalogue_record(change, id, |w| &mut w.instances);
        } else if let Some(id) = key.strip_prefix(keys::REGIONS) {
            self.apply_catalogue_record(change, id, |w| &mut w.regions);
        }
    }

    /// Records that the table now reflects the feed up to `revision`.
    pub fn mark_applied(&self, revision: Revision) {
        self.table.applied.send_if_modified(|applied| {
            let newer = revision > *applied;
            if newer {
                *applied = revision;
            }
            newer
        });
    }

    /// Starts reloading from a fresh snapshot over a table that may hold devices since
    /// deleted: the keys applied until [`finish_resync`](Self::finish_resync) are remembered.
    pub fn begin_resync(&mut self) {
        self.resync_seen = Some(HashSet::default());
    }

    /// Removes every device the snapshot since [`begin_resync`](Self::begin_resync) did not
    /// hold.
    pub fn finish_resync(&mut self) {
        let Some(seen) = self.resync_seen.take() else {
            return;
        };
        self.table.devices.retain_sync(|key, _| seen.contains(key));
        self.set_device_count(self.table.devices.len());
    }

    fn apply_device(&mut self, change: &Change) {
        let table = Arc::clone(&self.table);
        let devices = &table.devices;
        match &change.value {
            Some(value) => {
                let record: DeviceRecord = match meridian_registry::decode(&change.key, value) {
                    Ok(record) => record,
                    Err(error) => {
                        tracing::warn!(key = %change.key, %error, "skipping device record");
                        return;
                    }
                };
                let no = self.product_no(&record.key.product_key);
                let key = RouteKey::new(no, record.key.device_name.as_str());
                let route = self.intern(record.placement);
                if let Some(seen) = &mut self.resync_seen {
                    seen.insert(key.clone());
                }
                if upsert(devices, key, route) {
                    self.set_device_count(table.device_count() + 1);
                }
            }
            None => {
                let Some(device) = keys::parse_device(&change.key) else {
                    return;
                };
                let Some(no) = table.products.peek_with(&device.product_key, |_, p| p.no) else {
                    return;
                };
                if devices.remove_sync(&RouteKey::new(no, device.device_name.as_str())) {
                    self.set_device_count(table.device_count().saturating_sub(1));
                }
            }
        }
    }

    /// Only the writer changes the count, so a plain store is enough.
    fn set_device_count(&self, count: usize) {
        self.table.device_count.store(count, Ordering::Relaxed);
        self.size_gauge.set(count as f64);
    }

    fn apply_product(&mut self, change: &Change) {
        match &change.value {
            Some(value) => {
                let record: ProductRecord = match meridian_registry::decode(&change.key, value) {
                    Ok(record) => record,
                    Err(error) => {
                        tracing::warn!(key = %change.key, %error, "skipping product record");
                        return;
                    }
                };
                let no = self.product_no(&record.key);
                let home = Some(self.intern_instance(record.home_instance));
                upsert(&self.table.products, record.key, ProductEntry { no, home });
            }
            None => {
                let Ok(key) = change.key[keys::PRODUCTS.len()..].parse::<ProductKey>() else {
                    return;
                };
                if let Some(no) = self.table.products.peek_with(&key, |_, p| p.no) {
                    upsert(&self.table.products, key, ProductEntry { no, home: None });
                }
            }
        }
    }

    /// Upserts or deletes an instance or region record, then republishes the catalogue.
    fn apply_catalogue_record<K, V>(
        &mut self,
        change: &Change,
        id: &str,
        records: impl FnOnce(&mut Self) -> &mut BTreeMap<K, V>,
    ) where
        K: Ord + std::str::FromStr,
        V: serde::de::DeserializeOwned,
    {
        let Ok(id) = id.parse::<K>() else {
            tracing::warn!(key = %change.key, "skipping record with an invalid id");
            return;
        };
        match &change.value {
            Some(value) => match meridian_registry::decode::<V>(&change.key, value) {
                Ok(record) => {
                    records(self).insert(id, record);
                }
                Err(error) => {
                    tracing::warn!(key = %change.key, %error, "skipping catalogue record");
                    return;
                }
            },
            None => {
                records(self).remove(&id);
            }
        }
        self.publish_catalogue();
    }

    fn publish_catalogue(&self) {
        let instances = self
            .instances
            .values()
            .map(|instance| {
                let reply = reply::endpoint(&instance.endpoint);
                (instance.id.clone(), InstanceEntry { reply })
            })
            .collect();
        let regions = self
            .regions
            .values()
            .map(|region| {
                let geo = meridian_geo::Region::new(
                    region.id.as_str(),
                    region.latitude,
                    region.longitude,
                )
                .with_bias_km(region.bias_km);
                (region.id.clone(), geo)
            })
            .collect();
        // Only the endpoint the operator configured for the region, never an instance's: any
        // account may own an instance in a region, and devices asking the region must not be
        // sent to one of them.
        let region_replies = self
            .regions
            .values()
            .filter_map(|region| {
                let endpoint = region.public_endpoint.as_ref()?;
                Some((region.id.clone(), reply::endpoint(endpoint)))
            })
            .collect();
        let catalogue = Catalogue { instances, regions, region_replies };
        // Every set in use is interned, so this reaches every device's candidates.
        for candidates in self.nearest.values() {
            candidates.set_choices(catalogue.choices(candidates.list()));
        }
        self.table.catalogue.store(Arc::new(catalogue));
    }

    /// The product's number, assigning the next one the first time a ProductKey is seen
    /// (devices may arrive before their product).
    fn product_no(&mut self, key: &ProductKey) -> ProductNo {
        if let Some(no) = self.table.products.peek_with(key, |_, p| p.no) {
            return no;
        }
        let no = ProductNo(self.next_product);
        // 4 billion products would exhaust the numbers before `UNKNOWN`; the registry holds
        // nowhere near that many.
        self.next_product = self.next_product.saturating_add(1).min(ProductNo::UNKNOWN.0 - 1);
        upsert(&self.table.products, key.clone(), ProductEntry { no, home: None });
        no
    }

    fn intern(&mut self, placement: Placement) -> Route {
        self.prune_interned();
        match placement {
            Placement::Home => Route::Home,
            Placement::Specified { instance } => Route::Specified(self.intern_instance(instance)),
            Placement::Nearest { candidates } => {
                let key: Vec<(RegionId, InstanceId)> =
                    candidates.iter().map(|c| (c.region.clone(), c.instance.clone())).collect();
                let shared = self.nearest.entry(key).or_insert_with(|| {
                    let shared = Candidates::new(candidates.into_boxed_slice());
                    shared.set_choices(self.table.catalogue.load().choices(shared.list()));
                    Arc::new(shared)
                });
                Route::Nearest(Arc::clone(shared))
            }
        }
    }

    fn intern_instance(&mut self, instance: InstanceId) -> Arc<InstanceId> {
        let shared = self.specified.entry(instance).or_insert_with_key(|id| Arc::new(id.clone()));
        Arc::clone(shared)
    }

    /// Forgets placements no device uses any more. Runs when the interners have doubled since
    /// the last prune, so its cost is amortised over the inserts that grew them.
    fn prune_interned(&mut self) {
        let interned = self.specified.len() + self.nearest.len();
        if interned < 64 || interned < 2 * self.interned_after_prune {
            return;
        }
        // Only the interner holds it: no device or product uses it. (A replaced entry the map
        // has not reclaimed yet may keep a count above 1; it is pruned next time.)
        self.specified.retain(|_, shared| Arc::strong_count(shared) > 1);
        self.nearest.retain(|_, shared| Arc::strong_count(shared) > 1);
        self.interned_after_prune = self.specified.len() + self.nearest.len();
    }
}

/// Inserts or replaces; true when the key is new. `HashIndex` entries are immutable once
/// visible, so a replacement publishes a new entry and retires the old one: readers see one or
/// the other, never a torn value, and never wait.
fn upsert<K, V>(map: &HashIndex<K, V, RandomState>, key: K, value: V) -> bool
where
    K: Clone + Eq + Hash + 'static,
    V: Clone + 'static,
{
    match map.entry_sync(key) {
        Entry::Occupied(mut entry) => {
            entry.update(value);
            false
        }
        Entry::Vacant(entry) => {
            entry.insert_entry(value);
            true
        }
    }
}

/// An instance id for [`RoutingTable::decoy`]; any valid id works.
fn decoy_instance() -> InstanceId {
    // A literal lower-case slug: always a valid instance id.
    "decoy".parse().expect("`decoy` is a valid instance id")
}

#[cfg(test)]
mod tests;
