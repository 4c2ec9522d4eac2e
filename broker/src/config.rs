//! The broker's configuration, parsed once into typed values.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use meridian_registry::ids::{AccountId, InstanceId};
use serde::Deserialize;

/// One broker instance's settings (`[broker]` in a regional config).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// The instance this broker serves; devices placed elsewhere are refused.
    pub instance: InstanceId,
    /// Plain MQTT listener, `host:port`.
    pub listen: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// WebSocket listener (`mqtt` subprotocol), `host:port`.
    #[serde(default)]
    pub websocket_listen: Option<String>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Standard MQTT users: username → password.
    #[serde(default)]
    pub users: HashMap<String, String>,
    /// Application clients (server-side subscription): username → credential.
    #[serde(default)]
    pub applications: HashMap<String, ApplicationConfig>,
    /// Accept CONNECT without username as a standard client.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// How long a force-offline waits for the device's `notify_reply` before disconnecting it.
    #[serde(default = "default_notify_reply_wait", with = "humantime_serde")]
    pub notify_reply_wait: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle for client certificates; when set, clients must present one it signed.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationConfig {
    pub password: String,
    pub account: AccountId,
}

/// Resource bounds; every one of them is per connection unless it says otherwise.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest packet accepted (remaining length), bytes.
    pub max_packet: usize,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// QoS 1/2 messages queued behind the inflight window, online or offline.
    pub queued: usize,
    /// Deliveries buffered between the router and a connection task.
    pub mailbox: usize,
    /// Consecutive dropped deliveries after which a slow consumer is disconnected.
    pub slow_consumer_drops: u32,
    /// How long a publisher is held back (its socket not read) waiting for a subscriber whose
    /// QoS 1/2 queue it filled; a subscriber still full after it is disconnected as a slow
    /// consumer (`backpressure_slow_consumer`; each hold counts `backpressure_held`).
    #[serde(with = "humantime_serde")]
    pub backpressure_wait: Duration,
    /// Subscriptions of a standard or application client (devices: 100, PROTOCOL §3).
    pub max_subscriptions: usize,
    /// Devices' persistent sessions and subscription memory (`[broker.limits.device]`); their
    /// topics are at most 128 bytes (PROTOCOL §3).
    #[serde(deserialize_with = "device_limits")]
    pub device: ClientLimits,
    /// Standard users' (`[broker.limits.standard]`).
    #[serde(deserialize_with = "standard_limits")]
    pub standard: ClientLimits,
    /// Application clients' (`[broker.limits.application]`).
    #[serde(deserialize_with = "application_limits")]
    pub application: ClientLimits,
    /// Bytes of subscriptions (each filter plus its bookkeeping) and parked persistent
    /// sessions, broker-wide. Beyond it a new subscription gets SUBACK 0x80 and a persistent
    /// session that ends is forgotten instead of parked (`session_state_full`). Counted in the
    /// memory cap's estimate too.
    pub max_session_state_bytes: usize,
    /// Time allowed between accepting a socket and receiving CONNECT.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bootstrap notifies sent per second when many devices leave at once (a large
    /// distribution task), so the destination is not hit by a reconnect storm all at once.
    /// The default is about a third of the connects a broker accepts per second on two cores
    /// (docs/BENCHMARKS.md, connect), so the destination keeps headroom for its own traffic.
    pub notify_rate: u32,
    /// How often usage counters are written to the registry.
    #[serde(with = "humantime_serde")]
    pub usage_flush: Duration,
    // Hostile-client limits (docs/RELIABILITY.md). Each one that triggers counts
    // `meridian_broker_limited_total{limit="…"}` with the label named in its comment.
    /// Open connections across all listeners; beyond it a new socket is closed at accept,
    /// before any TLS or WebSocket handshake (`max_connections`). Broker-wide.
    pub max_connections: usize,
    /// New connections per second per source address (IPv6: per /64) once its burst is used;
    /// beyond it sockets are closed at accept (`connection_rate`). 0 disables.
    pub connection_rate: u32,
    /// Connections a source address may open at once, e.g. a NAT gateway whose devices all
    /// reconnect after an outage.
    pub connection_burst: u32,
    /// Failed logins from one source address (IPv6: per /64) within `auth_backoff` after which
    /// every CONNECT from it gets CONNACK 5 without its password being checked, for
    /// `auth_backoff` (`auth_backoff_address`). High, because many devices share a NAT. 0
    /// disables.
    pub auth_failures_per_address: u32,
    /// Failed logins for one username (a device's `{dn}&{pk}`) within `auth_backoff` after
    /// which CONNECTs for it get CONNACK 5 unchecked, for `auth_backoff`
    /// (`auth_backoff_username`). 0 disables.
    pub auth_failures_per_username: u32,
    /// The failure-counting window and the back-off period.
    #[serde(with = "humantime_serde")]
    pub auth_backoff: Duration,
    /// Addresses and usernames tracked for back-off, each; bounds the tables' memory.
    pub auth_backoff_entries: usize,
    /// Filters in one SUBSCRIBE; more closes the connection (`subscribe_filters`).
    pub max_filters_per_subscribe: usize,
    /// Levels (`/`-separated) in a subscription filter; a deeper filter gets SUBACK 0x80
    /// (`topic_levels`).
    pub max_topic_levels: usize,
    /// Messages queued for delivery across all sessions (mailboxes, queues behind inflight
    /// windows, offline sessions). Broker-wide; see `max_queued_bytes` for the shedding policy.
    pub max_queued_messages: usize,
    /// Payload bytes queued across all sessions. Above three quarters of either cap, QoS 0
    /// deliveries are dropped (`queue_shed_qos0`) and QoS 1/2 is refused for queues that are
    /// not draining: offline sessions and connections whose mailbox is half full
    /// (`queue_backlogged`). At the cap every delivery is dropped (`queue_full`).
    pub max_queued_bytes: usize,
    /// Topics with a retained message. Broker-wide. A retained PUBLISH for a new topic beyond
    /// it is delivered but not retained (`retained_full`).
    pub max_retained_messages: usize,
    /// Topic and payload bytes of all retained messages. Broker-wide. A retained PUBLISH that
    /// would exceed it is delivered but not retained (`retained_full`); replacing a topic's
    /// message with one no larger always fits.
    pub max_retained_bytes: usize,
    /// The broker process's resident memory, bytes; 0 disables. From 85 % of it, QoS 0 and
    /// queues that are not draining are shed (`memory_shed`); from 95 %, no delivery is queued
    /// and new connections are closed at accept (`memory_full`). A backstop for what the other
    /// bounds do not see: set it below the memory the host or container gives the broker.
    pub max_rss: usize,
    /// MQTT 5.0 Topic Alias Maximum the broker offers in CONNACK: aliases a 5.0 client may
    /// set for its publications (0 allows none; PROTOCOL §11).
    pub topic_alias_maximum: u16,
    /// MQTT 5.0 Receive Maximum the broker offers in CONNACK: QoS 2 publications a 5.0 client
    /// may leave unreleased at once (beyond it: DISCONNECT 0x93). QoS 1 is acknowledged at once.
    pub receive_maximum: u16,
    /// When set, every 5.0 client is told this Server Keep Alive instead of its own keepalive
    /// (seconds; devices still within 30–1200).
    pub server_keep_alive: Option<u16>,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_packet: 1024 * 1024,
            inflight: 32,
            queued: 1000,
            mailbox: 256,
            slow_consumer_drops: 1000,
            backpressure_wait: Duration::from_secs(5),
            max_subscriptions: 1000,
            device: ClientLimits::DEVICE,
            standard: ClientLimits::STANDARD,
            application: ClientLimits::APPLICATION,
            max_session_state_bytes: 256 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            notify_rate: 5_000,
            usage_flush: Duration::from_secs(10),
            max_connections: 200_000,
            connection_rate: 100,
            connection_burst: 1_000,
            auth_failures_per_address: 100,
            auth_failures_per_username: 10,
            auth_backoff: Duration::from_secs(60),
            auth_backoff_entries: 100_000,
            max_filters_per_subscribe: 64,
            max_topic_levels: 32,
            max_queued_messages: 1_000_000,
            max_queued_bytes: 512 * 1024 * 1024,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 256 * 1024 * 1024,
            max_rss: 0,
            topic_alias_maximum: 64,
            receive_maximum: 1024,
            server_keep_alive: None,
        }
    }
}

/// What one kind of client may keep in the broker's memory. A key left out of its table keeps
/// that kind's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// How long a persistent session (clean session 0) is kept after its connection ends,
    /// with its subscriptions and queued messages; a client that returns later starts afresh
    /// (CONNACK session present 0). `0s` keeps none.
    pub session_expiry: Duration,
    /// Longest topic name or subscription filter, bytes (a PUBLISH or will beyond it closes
    /// the connection; a SUBSCRIBE beyond it is malformed and closes it too).
    pub max_topic_len: usize,
    /// Bytes of all of one session's subscription filters together; a filter beyond it gets
    /// SUBACK 0x80 (`subscription_bytes`).
    pub max_subscription_bytes: usize,
}

impl ClientLimits {
    /// Devices reconnect with clean session set (PROTOCOL §2), so few keep a session; a week
    /// covers one offline for days. Topics are at most 128 bytes (PROTOCOL §3), and 100
    /// subscriptions of typical device topics take a few KiB.
    pub const DEVICE: ClientLimits = ClientLimits {
        session_expiry: Duration::from_secs(7 * 24 * 3600),
        max_topic_len: 128,
        max_subscription_bytes: 8 * 1024,
    };
    /// Configured users: a day away keeps the session; topics far longer than any device's.
    pub const STANDARD: ClientLimits = ClientLimits {
        session_expiry: Duration::from_secs(24 * 3600),
        max_topic_len: 4096,
        max_subscription_bytes: 256 * 1024,
    };
    /// Tenants' server-side clients reach device topics only, which are short; any tenant can
    /// open many, so each is kept small.
    pub const APPLICATION: ClientLimits = ClientLimits {
        session_expiry: Duration::from_secs(24 * 3600),
        max_topic_len: 256,
        max_subscription_bytes: 64 * 1024,
    };
}

/// A `[broker.limits.<kind>]` table as written: each key optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientLimitsTable {
    #[serde(default, with = "humantime_serde")]
    session_expiry: Option<Duration>,
    #[serde(default)]
    max_topic_len: Option<usize>,
    #[serde(default)]
    max_subscription_bytes: Option<usize>,
}

impl ClientLimitsTable {
    fn over(self, defaults: ClientLimits) -> ClientLimits {
        ClientLimits {
            session_expiry: self.session_expiry.unwrap_or(defaults.session_expiry),
            max_topic_len: self.max_topic_len.unwrap_or(defaults.max_topic_len),
            max_subscription_bytes: self
                .max_subscription_bytes
                .unwrap_or(defaults.max_subscription_bytes),
        }
    }
}

fn device_limits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ClientLimits, D::Error> {
    ClientLimitsTable::deserialize(d).map(|table| table.over(ClientLimits::DEVICE))
}

fn standard_limits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ClientLimits, D::Error> {
    ClientLimitsTable::deserialize(d).map(|table| table.over(ClientLimits::STANDARD))
}

fn application_limits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ClientLimits, D::Error> {
    ClientLimitsTable::deserialize(d).map(|table| table.over(ClientLimits::APPLICATION))
}

fn default_notify_reply_wait() -> Duration {
    Duration::from_secs(2)
}

#[cfg(test)]
mod tests;
