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
    /// Subscriptions of a standard client.
    pub max_subscriptions: usize,
    /// Time allowed between accepting a socket and receiving CONNECT.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bootstrap notifies sent per second when many devices leave at once (a large
    /// distribution task), so the destination is not hit by a reconnect storm all at once.
    pub notify_rate: u32,
    /// How often usage counters are written to the registry.
    #[serde(with = "humantime_serde")]
    pub usage_flush: Duration,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_packet: 1024 * 1024,
            inflight: 32,
            queued: 1000,
            mailbox: 256,
            slow_consumer_drops: 1000,
            max_subscriptions: 1000,
            connect_timeout: Duration::from_secs(10),
            notify_rate: 2_000,
            usage_flush: Duration::from_secs(10),
        }
    }
}

fn default_notify_reply_wait() -> Duration {
    Duration::from_secs(2)
}
