//! The routing table's entry types, shaped for millions of devices: a key that usually needs no
//! heap allocation and a 16-byte value that shares placement data between devices.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use bytes::Bytes;
use compact_str::CompactString;
use meridian_geo::{Locator, LookupOutcome};
use meridian_registry::ids::InstanceId;
use meridian_registry::model::PlacementCandidate;

/// A product's number in the routing table, assigned the first time the table sees its
/// ProductKey and never reused, so device keys can carry 4 bytes instead of the ProductKey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProductNo(pub u32);

impl ProductNo {
    /// Stands in for a ProductKey the table does not know, so that a lookup for an unknown
    /// product does the same work as one for a known product (PROTOCOL §9: no timing oracle). No
    /// real product gets this number.
    pub const UNKNOWN: ProductNo = ProductNo(u32::MAX);
}

/// A device's key in the routing table: product number plus DeviceName.
///
/// 32 bytes with no heap allocation for DeviceNames of up to 24 bytes (nearly all of them;
/// the limit is 32), against 16 bytes plus a 32-byte heap block for a boxed `pk/dn` string.
/// Lookups build one of these on the stack from the request.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub product: ProductNo,
    pub name: CompactString,
}

impl RouteKey {
    #[must_use]
    pub fn new(product: ProductNo, name: &str) -> Self {
        Self { product, name: CompactString::new(name) }
    }
}

impl fmt::Debug for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RouteKey({}/{})", self.product.0, self.name)
    }
}

/// Where one device is placed (PROTOCOL §5), with instance ids and candidate sets shared between
/// every device that has the same placement: a 10,000-device distribution task adds one
/// candidate set, not 10,000 copies. 16 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Its product's home instance, looked up when the device asks, so a product record that
    /// arrives late in the feed still takes effect.
    Home,
    /// One instance.
    Specified(Arc<InstanceId>),
    /// The nearest of these candidates by the client's location.
    Nearest(Arc<Candidates>),
}

/// A nearest-access candidate set, in the order the placement lists it, with the choices a
/// request picks from.
#[derive(Debug)]
pub struct Candidates {
    list: Box<[PlacementCandidate]>,
    /// The candidates the table's catalogue can resolve, with their answers. The table's writer
    /// rebuilds them whenever the catalogue changes, so a request neither looks its candidates
    /// up nor copies their region records (an allocation per candidate).
    choices: ArcSwap<Choices>,
}

impl Candidates {
    /// A set with no choices yet: the table's writer fills them in.
    #[must_use]
    pub fn new(list: Box<[PlacementCandidate]>) -> Self {
        Self { list, choices: ArcSwap::from_pointee(Choices::default()) }
    }

    /// The candidates, in placement order.
    #[must_use]
    pub fn list(&self) -> &[PlacementCandidate] {
        &self.list
    }

    pub(crate) fn choices(&self) -> Guard<Arc<Choices>> {
        self.choices.load()
    }

    pub(crate) fn set_choices(&self, choices: Choices) {
        self.choices.store(Arc::new(choices));
    }
}

/// Equal placements: the choices follow from the list and the catalogue.
impl PartialEq for Candidates {
    fn eq(&self, other: &Self) -> bool {
        self.list == other.list
    }
}

impl Eq for Candidates {}

/// The resolvable candidates of a set as the locator takes them: `regions[i]` is answered with
/// `replies[i]`.
#[derive(Debug, Default)]
pub(crate) struct Choices {
    pub(crate) regions: Vec<meridian_geo::Region>,
    /// Complete `200` bodies, shared with the catalogue's instance entries.
    pub(crate) replies: Vec<Bytes>,
}

impl Choices {
    /// The answer for a client at `client`; `None` when no candidate is resolvable.
    pub(crate) fn pick(
        &self,
        client: IpAddr,
        locator: &Locator,
    ) -> Option<(&Bytes, Option<LookupOutcome>)> {
        let pick = locator.pick(client, &self.regions)?;
        let chosen = self.regions.iter().position(|region| region.id == pick.region_id)?;
        // `regions` and `replies` are built together, so the index is valid for both.
        Some((&self.replies[chosen], Some(pick.outcome)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_compact() {
        assert_eq!(std::mem::size_of::<RouteKey>(), 32);
        assert_eq!(std::mem::size_of::<Route>(), 16);
    }

    #[test]
    fn typical_device_names_need_no_heap() {
        let key = RouteKey::new(ProductNo(7), "imei-861234567890123456");
        assert!(!key.name.is_heap_allocated(), "24-byte names stay inline");
        let long = RouteKey::new(ProductNo(7), "a-device-name-of-32-characters!!");
        assert!(long.name.is_heap_allocated());
    }
}
