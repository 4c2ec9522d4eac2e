//! Who may publish and subscribe where (PROTOCOL §3), and the limits of each kind of client.
//!
//! Decisions are pure functions of the connection's [`Principal`], the topic or filter, and the
//! registry view (for application clients, which products and devices an account owns); they
//! hold no state.

use std::time::Duration;

use meridian_registry::ids::{AccountId, DeviceKey};

use crate::config::{ClientLimits, LimitsConfig};

use crate::view::RegistryView;

/// Who is on the other end of a connection, decided once at CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A standard MQTT client from the broker configuration: full MQTT 3.1.1, any topic.
    Standard { username: Option<String> },
    /// A device, authenticated by its PROTOCOL §2 signature; only its own topics.
    Device(DeviceKey),
    /// An account's application client (server-side subscription): its products' device
    /// topics on this instance.
    Application { account: AccountId },
}

/// Who published a message, for the checks made when it is delivered (a subscription was
/// checked when made, but some rules depend on the sender).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Origin {
    /// The broker itself (notifies) or a standard client from the broker configuration.
    #[default]
    Broker,
    /// A device, by its session id: its own implicit downlink never echoes it back.
    Device(std::sync::Arc<str>),
    /// An application client of this account: a device receives it only while the account
    /// owns the device (PROTOCOL §6).
    Application(AccountId),
}

/// Per-connection limits that depend on the kind of client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    pub max_payload: usize,
    /// Longest topic name or subscription filter, bytes.
    pub max_topic_len: usize,
    pub max_subscriptions: usize,
    /// Bytes of all the session's subscription filters together.
    pub max_subscription_bytes: usize,
    /// Highest QoS granted or accepted (0, 1 or 2).
    pub max_qos: u8,
    pub retain: bool,
    pub will: bool,
    /// How long a persistent session is kept after its connection ends.
    pub session_expiry: Duration,
}

impl Profile {
    /// PROTOCOL §3 device profile, with the default session expiry and subscription memory of
    /// `[broker.limits.device]`.
    pub const DEVICE: Profile = Profile {
        max_payload: 256 * 1024,
        max_topic_len: 128,
        max_subscriptions: 100,
        max_subscription_bytes: ClientLimits::DEVICE.max_subscription_bytes,
        max_qos: 1,
        retain: false,
        will: false,
        session_expiry: ClientLimits::DEVICE.session_expiry,
    };

    /// Standard clients get the whole protocol, bounded by the broker's packet size; topics
    /// up to MQTT's 65,535 bytes, no bound on subscription bytes, sessions kept for good
    /// (what [`Profile::standard_from`] narrows with the configured limits).
    pub fn standard(max_packet: usize, max_subscriptions: usize) -> Profile {
        Profile {
            max_payload: max_packet,
            max_topic_len: 65_535,
            max_subscriptions,
            max_subscription_bytes: usize::MAX,
            max_qos: 2,
            retain: true,
            will: true,
            session_expiry: Duration::MAX,
        }
    }

    /// A device's profile under the broker's `limits`.
    pub fn device_from(limits: &LimitsConfig) -> Profile {
        Profile::DEVICE.narrowed(&limits.device)
    }

    /// A standard user's profile under the broker's `limits`.
    pub fn standard_from(limits: &LimitsConfig) -> Profile {
        Profile::standard(limits.max_packet, limits.max_subscriptions).narrowed(&limits.standard)
    }

    /// An application client's profile under the broker's `limits`: the standard protocol,
    /// with the application's own topic, subscription-memory and session bounds.
    pub fn application_from(limits: &LimitsConfig) -> Profile {
        Profile::standard(limits.max_packet, limits.max_subscriptions).narrowed(&limits.application)
    }

    fn narrowed(self, limits: &ClientLimits) -> Profile {
        Profile {
            max_topic_len: limits.max_topic_len.min(self.max_topic_len),
            max_subscription_bytes: limits.max_subscription_bytes,
            session_expiry: limits.session_expiry,
            ..self
        }
    }
}

impl Principal {
    /// Filters this principal is subscribed to from the moment it connects, without sending
    /// SUBSCRIBE: the real SDKs never subscribe to their `/sys/...` downlink (PROTOCOL §3).
    pub fn implicit_filters(&self) -> Vec<String> {
        match self {
            Principal::Device(key) => {
                vec![format!("/sys/{}/{}/#", key.product_key, key.device_name)]
            }
            _ => Vec::new(),
        }
    }

    pub fn may_publish(&self, topic: &str, view: &RegistryView) -> bool {
        match self {
            Principal::Standard { .. } => true,
            Principal::Device(key) => device_topic(key, topic, false),
            Principal::Application { account } => application_topic(account, topic, view),
        }
    }

    pub fn may_subscribe(&self, filter: &str, view: &RegistryView) -> bool {
        match self {
            Principal::Standard { .. } => true,
            Principal::Device(key) => device_topic(key, filter, true),
            Principal::Application { account } => application_topic(account, filter, view),
        }
    }

    /// Whether a message routed on `topic` may be handed to this client now. Subscriptions
    /// were checked when made, but ownership moves afterwards: once a device is transferred to
    /// another account (PROTOCOL §6), the old owner's application client stops receiving it even
    /// through a `/{pk}/+/...` subscription it still holds. Devices and standard clients are
    /// bounded by their subscriptions alone.
    ///
    /// A device likewise receives what an application client sent (a broadcast to its product,
    /// a downlink, a retained message, something queued while it was away) only while that
    /// client's account owns the device: after a transfer the source loses all access, even
    /// through `/broadcast/{pk}/...`, which names no device.
    pub fn may_receive(&self, topic: &str, origin: &Origin, view: &RegistryView) -> bool {
        match (self, origin) {
            // No application client has a reason to hear another account's: whatever one
            // account's backend sends is its downlink, and a device it once owned (transferred,
            // then deleted by its new owner) must not hand that downlink to the former owner.
            (Principal::Application { account }, Origin::Application(sender))
                if sender != account =>
            {
                false
            }
            (Principal::Application { account }, _) => application_topic(account, topic, view),
            (Principal::Device(key), Origin::Application(sender)) => view.account_may_use_device(
                sender,
                key.product_key.as_str(),
                key.device_name.as_str(),
            ),
            (Principal::Standard { .. } | Principal::Device(_), _) => true,
        }
    }

    /// How messages this principal publishes are marked (see [`Origin`]).
    pub fn origin(&self) -> Origin {
        match self {
            Principal::Standard { .. } => Origin::Broker,
            Principal::Device(key) => Origin::Device(
                device_session_id(key.product_key.as_str(), key.device_name.as_str()).into(),
            ),
            Principal::Application { account } => Origin::Application(account.clone()),
        }
    }

    /// The device this connection is, if it is one.
    pub fn device(&self) -> Option<&DeviceKey> {
        match self {
            Principal::Device(key) => Some(key),
            _ => None,
        }
    }

    /// The key of this client's session in the router. A device's session is the device, so
    /// the newest connection wins whatever its clientId. Other clients are keyed by clientId
    /// inside their own namespace (an application's inside its account's), so no clientId a
    /// client picks can take over a device's session or another account's.
    pub fn session_id(&self, client_id: &str) -> String {
        match self {
            Principal::Device(key) => {
                device_session_id(key.product_key.as_str(), key.device_name.as_str())
            }
            Principal::Standard { .. } => format!("client:{client_id}"),
            Principal::Application { account } => format!("app:{account}:{client_id}"),
        }
    }
}

/// The session id of device `{pk}/{dn}` (see [`Principal::session_id`]).
pub fn device_session_id(product_key: &str, device_name: &str) -> String {
    format!("device:{product_key}/{device_name}")
}

/// The device session the implicit downlink delivers a message on `topic` to, if any: the
/// device `/sys/{pk}/{dn}/...` names, when the topic is downlink (see [`carries_downlink`]).
/// A device's own messages are not delivered back to it through this route either (no-local:
/// the router compares the message's [`Origin`]).
///
/// Every device is subscribed to its downlink from the moment it connects (the real SDKs never
/// send SUBSCRIBE for it, PROTOCOL §3). The router reaches it by session id rather than through
/// the subscription index, so a million idle devices cost the index nothing.
pub fn downlink_session(topic: &str) -> Option<String> {
    let rest = topic.strip_prefix("/sys/")?;
    let mut levels = rest.splitn(3, '/');
    let (product_key, device_name) = (levels.next()?, levels.next()?);
    // `#` also matches its parent level: `/sys/{pk}/{dn}` itself.
    if product_key.is_empty() || device_name.is_empty() || !carries_downlink(topic) {
        return None;
    }
    Some(device_session_id(product_key, device_name))
}

/// Whether the implicit downlink route carries `topic` (a topic under `/sys/{pk}/{dn}`).
///
/// The route carries what the platform sends a device, never what a device sends: a device
/// must not get its own uplink echoed (nor another client's message that looks like that
/// device's uplink). Alink topics come in request/reply pairs and a reply travels opposite to
/// its request, so the rule is:
/// - requests the platform makes are downlink: `thing/service/...` (property set and get,
///   service calls), `thing/bootstrap/notify`, `thing/config/push`, `thing/model/down_raw`,
///   `thing/disable|enable|delete`, `thing/topo/change`, `thing/gateway/permit`, and
///   `rrpc/request/...`; their `_reply` topics are the device's answers, uplink;
/// - every other `thing/...` topic is a request the device makes (`event/.../post`,
///   `deviceinfo/update`, `config/get`, `model/up_raw`, `topo/add`, ...), uplink; its `_reply`
///   is the platform's answer, downlink (`thing/event/property/post_reply`);
/// - `rrpc/response/...` is uplink;
/// - anything else under the device's `/sys` namespace (the bare `/sys/{pk}/{dn}`) is
///   downlink, as before.
///
/// A device that explicitly subscribes to one of its uplink topics still gets it: this limits
/// only the subscription it never made.
pub fn carries_downlink(topic: &str) -> bool {
    // Runs on every delivery through the implicit route: string slicing, no allocation.
    let Some(rest) = topic.strip_prefix("/sys/") else { return false };
    let mut parts = rest.splitn(3, '/');
    let (Some(_product), Some(_device)) = (parts.next(), parts.next()) else { return false };
    let Some(tail) = parts.next() else { return true };
    if let Some(rrpc) = tail.strip_prefix("rrpc/") {
        return !(rrpc == "response" || rrpc.starts_with("response/"));
    }
    let Some(thing) = tail.strip_prefix("thing/") else { return true };
    let (request, last) = thing.rsplit_once('/').unwrap_or(("", thing));
    let (last, reply) = match last.strip_suffix("_reply") {
        Some(request) => (request, true),
        None => (last, false),
    };
    let platform_request = request == "service"
        || request.starts_with("service/")
        || matches!(
            (request, last),
            ("bootstrap", "notify")
                | ("config", "push")
                | ("model", "down_raw")
                | ("", "disable" | "enable" | "delete")
                | ("topo", "change")
                | ("gateway", "permit")
        );
    platform_request != reply
}

/// The QoS a device's implicit downlink is granted.
pub const DOWNLINK_QOS: u8 = 1;

/// Whether `topic` (a name, or a filter when `subscribe`) lies inside the device's own
/// namespace. Wildcards may only appear after the levels that name the device.
fn device_topic(key: &DeviceKey, topic: &str, subscribe: bool) -> bool {
    let (pk, dn) = (key.product_key.as_str(), key.device_name.as_str());
    let levels: Vec<&str> = topic.split('/').collect();
    // Every device topic starts with `/`.
    let Some(("", rest)) = levels.split_first().map(|(first, rest)| (*first, rest)) else {
        return false;
    };
    match rest {
        // /sys/{pk}/{dn}/thing/..., /sys/{pk}/{dn}/rrpc/..., and the implicit /sys/{pk}/{dn}/#
        ["sys", p, d, tail @ ..] if *p == pk && *d == dn => match tail {
            ["thing" | "rrpc", _, ..] => true,
            ["#"] => subscribe,
            _ => false,
        },
        // /{pk}/{dn}/user/..., /{pk}/{dn}/update, /{pk}/{dn}/get
        [p, d, tail @ ..] if *p == pk && *d == dn => {
            matches!(tail, ["user", _, ..] | ["update"] | ["get"])
        }
        // /ext/rrpc/{messageId}/{own topic without its leading /}
        ["ext", "rrpc", id, own @ ..] if !own.is_empty() && (subscribe || !is_wildcard(id)) => {
            let inner = format!("/{}", own.join("/"));
            !inner.starts_with("/ext/") && device_topic(key, &inner, subscribe)
        }
        // /shadow/{update|get}/{pk}/{dn}
        ["shadow", action, p, d] => !is_wildcard(action) && *p == pk && *d == dn,
        // /ota/device/{inform|upgrade|progress|request}/{pk}/{dn}
        ["ota", "device", action, p, d] => !is_wildcard(action) && *p == pk && *d == dn,
        // /broadcast/{pk}/... (subscribe only)
        ["broadcast", p, _, ..] => subscribe && *p == pk,
        _ => false,
    }
}

/// Whether an application client of `account` may use `topic` (a name or a filter). The
/// product level must be spelled out (not a wildcard). A topic naming one device follows that
/// device's owner, so the destination of a device transfer reaches its devices and the source
/// no longer does (PROTOCOL §6); a wildcard device level needs the product itself.
fn application_topic(account: &AccountId, topic: &str, view: &RegistryView) -> bool {
    let levels: Vec<&str> = topic.split('/').collect();
    let Some(Scope { product, device }) = scope(&levels) else {
        return false;
    };
    if is_wildcard(product) {
        return false;
    }
    match device.filter(|device| !is_wildcard(device)) {
        Some(device) => view.account_may_use_device(account, product, device),
        None => view.account_owns_product(account, product),
    }
}

/// The product and device levels of a device-platform topic or filter.
struct Scope<'a> {
    product: &'a str,
    /// `None` for product-wide topics (`/broadcast/{pk}/...`).
    device: Option<&'a str>,
}

fn scope<'a>(levels: &[&'a str]) -> Option<Scope<'a>> {
    let (product, device) = match levels {
        ["", "sys", pk, rest @ ..] => (*pk, rest.first()),
        ["", "ext", "rrpc", _, "sys", pk, rest @ ..] => (*pk, rest.first()),
        ["", "shadow", _, pk, rest @ ..] => (*pk, rest.first()),
        ["", "ota", "device", _, pk, rest @ ..] => (*pk, rest.first()),
        ["", "broadcast", pk, ..] => (*pk, None),
        ["", pk, dn, _, ..] => (*pk, Some(dn)),
        _ => return None,
    };
    Some(Scope { product, device: device.copied() })
}

/// Whether `topic` is one of device `{pk}/{dn}`'s topics, as application clients address it.
pub fn names_device(topic: &str, key: &DeviceKey) -> bool {
    let levels: Vec<&str> = topic.split('/').collect();
    scope(&levels).is_some_and(|scope| {
        scope.product == key.product_key.as_str() && scope.device == Some(key.device_name.as_str())
    })
}

/// The product key and device name of the device `topic` is one of the topics of, as
/// application clients address it (see [`names_device`]).
pub fn named_device(topic: &str) -> Option<(&str, &str)> {
    let levels: Vec<&str> = topic.split('/').collect();
    scope(&levels).and_then(|scope| Some((scope.product, scope.device?)))
}

/// Whether `topic` is one of product `product`'s broadcast topics.
pub fn is_broadcast_of(topic: &str, product: &str) -> bool {
    broadcast_product(topic) == Some(product)
}

/// The product whose broadcast topics `topic` is one of.
pub fn broadcast_product(topic: &str) -> Option<&str> {
    let mut levels = topic.split('/');
    match (levels.next(), levels.next(), levels.next()) {
        (Some(""), Some("broadcast"), Some(pk)) => Some(pk),
        _ => None,
    }
}

fn is_wildcard(level: &str) -> bool {
    level == "+" || level == "#"
}

#[cfg(test)]
mod tests;
