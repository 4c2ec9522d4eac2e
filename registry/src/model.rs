//! The domain model (PROTOCOL §1) as the records the registry stores.
//!
//! Records are plain data: rules that span records (DeviceName uniqueness, read-only copies,
//! distribution) are enforced by [`crate::Registry`], not here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::{AccountId, DeviceKey, InstanceId, OrganisationId, ProductKey, RegionId};
use crate::secret::SealedSecret;

/// A tenant. Every resource has exactly one owning account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub kind: AccountKind,
    /// The verified legal entity of an enterprise account; resource transfers between
    /// enterprise accounts require the same entity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_entity: Option<String>,
    /// The organisation this account belongs to, whose admin account may view it read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation: Option<OrganisationId>,
    /// Whether this account is its organisation's admin.
    #[serde(default)]
    pub organisation_admin: bool,
    pub created_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    Individual,
    Enterprise,
}

/// A geographic region hosting instances.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Region {
    pub id: RegionId,
    pub display_name: String,
    pub latitude: f64,
    pub longitude: f64,
    /// Kilometres added to this region's distance in nearest-access picks (negative attracts).
    #[serde(default)]
    pub bias_km: f64,
    /// The region's public MQTT endpoint, what `GET /auth/bootstrap/regionId/{n}` answers for
    /// it (PROTOCOL §4). Operator configuration like the rest of the region: the edge answers this
    /// and nothing else, so a region without one answers "unknown region", and no instance a
    /// tenant owns can stand in for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_endpoint: Option<MqttEndpoint>,
}

/// One broker deployment: devices connect to its endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: InstanceId,
    pub region: RegionId,
    pub owner: AccountId,
    pub edition: Edition,
    pub endpoint: MqttEndpoint,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Edition {
    Public,
    Enterprise,
}

/// Where devices reach an instance's broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttEndpoint {
    pub host: String,
    pub tcp_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_port: Option<u16>,
}

/// Longest host name DNS allows.
const MAX_HOST_LEN: usize = 253;

impl MqttEndpoint {
    /// Why devices could not be sent here, if they could not: the host must be a DNS name or
    /// an IP address (letters, digits, `.`, `-`, `_`, `:`; at most 253 bytes), because the
    /// bootstrap edge puts it in the reply that the vendor SDK reads by key search, where a
    /// quote or a space would break it; ports are not 0.
    pub fn problem(&self) -> Option<String> {
        let host_ok = !self.host.is_empty()
            && self.host.len() <= MAX_HOST_LEN
            && !self.host.starts_with('-')
            && self.host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
        if !host_ok {
            return Some(format!(
                "endpoint host must be a DNS name or an IP address of at most {MAX_HOST_LEN} \
                 bytes (letters, digits, '.', '-', '_', ':')"
            ));
        }
        if self.tcp_port == 0 || self.tls_port == Some(0) {
            return Some("endpoint ports must not be 0".to_owned());
        }
        None
    }
}

/// A product: the template its devices share.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub key: ProductKey,
    pub name: String,
    pub owner: AccountId,
    /// Where the product's devices live unless placed elsewhere.
    pub home_instance: InstanceId,
    /// Only published products can be transferred (PROTOCOL §6).
    #[serde(default)]
    pub published: bool,
    #[serde(default)]
    pub topic_categories: Vec<TopicCategory>,
    /// Thing Specification Language model, kept as the JSON the operator supplied.
    #[serde(default)]
    pub tsl: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parsing_script: Option<String>,
    pub created_at: Timestamp,
}

/// A user-defined topic class of a product, such as `/{pk}/${deviceName}/user/get`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicCategory {
    /// Topic template with `${deviceName}` standing for each device.
    pub topic: String,
    pub operation: TopicOperation,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopicOperation {
    Publish,
    Subscribe,
    All,
}

/// A read-only copy of a product at a distribution destination. Later edits at the source do
/// not propagate (PROTOCOL §5), so the copy is a snapshot, not a reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProductCopy {
    pub instance: InstanceId,
    /// The account that may read the copy at `instance`.
    pub holder: AccountId,
    pub product: Product,
    pub copied_at: Timestamp,
}

/// A device and its certificate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub key: DeviceKey,
    /// The DeviceSecret, sealed under the registry's key; never stored in plain text.
    pub secret: SealedSecret,
    pub owner: AccountId,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub topology: Topology,
    pub status: DeviceStatus,
    pub placement: Placement,
    pub created_at: Timestamp,
}

/// Gateway / sub-device links.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// The gateway this device is a sub-device of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<DeviceKey>,
    /// Sub-devices attached to this device when it is a gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sub_devices: Vec<DeviceKey>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Never connected at its current placement.
    Inactive,
    Online,
    Offline,
    /// Refused at CONNECT until enabled again.
    Disabled,
}

/// Where a device may connect (PROTOCOL §5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Placement {
    /// Its product's home instance.
    Home,
    /// One instance, possibly of another account (cross-account distribution).
    Specified { instance: InstanceId },
    /// The nearest of these candidates by the client's location.
    Nearest { candidates: Vec<PlacementCandidate> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementCandidate {
    pub region: RegionId,
    pub instance: InstanceId,
}

impl Placement {
    /// Whether a broker serving `instance` may accept this device. `home` is the product's home
    /// instance.
    pub fn allows(&self, instance: &InstanceId, home: &InstanceId) -> bool {
        match self {
            Placement::Home => instance == home,
            Placement::Specified { instance: placed } => instance == placed,
            Placement::Nearest { candidates } => candidates.iter().any(|c| &c.instance == instance),
        }
    }
}

/// What a device accumulates while connected to one instance. It belongs to that
/// (device, instance) pair and never moves (PROTOCOL §1).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_online: Option<Timestamp>,
    /// Latest reported TSL property values.
    #[serde(default)]
    pub properties: serde_json::Map<String, serde_json::Value>,
    /// The device shadow document.
    #[serde(default)]
    pub shadow: serde_json::Value,
    #[serde(default)]
    pub messages_in: u64,
    #[serde(default)]
    pub messages_out: u64,
}

/// Usage of one instance (PROTOCOL §5: the instance a device is connected to accounts for it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceUsage {
    pub instance: InstanceId,
    /// Connections open at `updated_at`.
    pub connections: u64,
    pub connects_total: u64,
    pub connected_seconds: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub updated_at: Timestamp,
}

impl InstanceUsage {
    pub fn empty(instance: InstanceId) -> InstanceUsage {
        InstanceUsage {
            instance,
            connections: 0,
            connects_total: 0,
            connected_seconds: 0,
            messages_in: 0,
            messages_out: 0,
            updated_at: Timestamp(0),
        }
    }
}

/// The subscriptions a device made, kept for it by the platform (PROTOCOL §2: the real SDKs never
/// subscribe again after a reconnect or a re-bootstrap). Brokers write it as the device
/// subscribes and unsubscribes, and restore it whenever the device connects, at whichever
/// instance it is placed. It belongs to the device, not to an instance, so it follows the
/// device through distribution; it goes when the device is deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSubscriptions {
    pub device: DeviceKey,
    /// Topic filter → the QoS the broker granted (0 or 1), only filters the ACL allowed.
    pub filters: BTreeMap<String, u8>,
}
