//! The routing table's entry types, shaped for millions of devices: a key that usually needs no
//! heap allocation and a 16-byte value that shares placement data between devices.

use std::fmt;
use std::sync::Arc;

use compact_str::CompactString;
use meridian_registry::ids::InstanceId;
use meridian_registry::model::PlacementCandidate;

/// A product's number in the routing table, assigned the first time the table sees its
/// ProductKey and never reused, so device keys can carry 4 bytes instead of the ProductKey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProductNo(pub u32);

impl ProductNo {
    /// Stands in for a ProductKey the table does not know, so that a lookup for an unknown
    /// product does the same work as one for a known product (SPEC §9: no timing oracle). No
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

/// Where one device is placed (SPEC §5), with instance ids and candidate sets shared between
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

/// A nearest-access candidate set, in the order the placement lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidates(pub Box<[PlacementCandidate]>);

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
