//! The broker's metrics, through the `metrics` facade; the process installs the Prometheus
//! exporter. Names are `meridian_broker_*`; label values are fixed strings, never client input.

use metrics::{counter, gauge};
use mqttbytes::v4::ConnectReturnCode;

use crate::packet::Packet;

pub fn connect_result(result: &'static str) {
    counter!("meridian_broker_connects_total", "result" => result).increment(1);
}

/// The metric label for a refused CONNECT.
pub fn refusal(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Success => "accepted",
        ConnectReturnCode::RefusedProtocolVersion => "unacceptable_protocol",
        ConnectReturnCode::BadClientId => "identifier_rejected",
        ConnectReturnCode::ServiceUnavailable => "server_unavailable",
        ConnectReturnCode::BadUserNamePassword => "bad_username_password",
        ConnectReturnCode::NotAuthorized => "not_authorized",
    }
}

pub fn connection_opened() {
    gauge!("meridian_broker_connections").increment(1.0);
}

pub fn connection_closed() {
    gauge!("meridian_broker_connections").decrement(1.0);
}

pub fn packet_in(packet: &Packet) {
    if let Packet::Publish(publish) = packet {
        message_in(publish.qos as u8);
    }
}

pub fn packet_out(packet: &Packet) {
    if let Packet::Publish(publish) = packet {
        counter!("meridian_broker_messages_out_total", "qos" => qos_label(publish.qos as u8))
            .increment(1);
    }
}

pub fn message_in(qos: u8) {
    counter!("meridian_broker_messages_in_total", "qos" => qos_label(qos)).increment(1);
}

pub fn routed(_delivered: usize, dropped: usize) {
    if dropped > 0 {
        counter!("meridian_broker_dropped_total", "reason" => "subscriber_queue_full")
            .increment(dropped as u64);
    }
}

pub fn dropped(reason: &'static str) {
    counter!("meridian_broker_dropped_total", "reason" => reason).increment(1);
}

/// A hostile-client limit triggered (docs/RELIABILITY.md lists every `limit` label).
pub fn limited(limit: &'static str) {
    counter!("meridian_broker_limited_total", "limit" => limit).increment(1);
}

/// Parked persistent sessions forgotten because their expiry passed.
pub fn expired_sessions(count: usize) {
    counter!("meridian_broker_limited_total", "limit" => "session_expired").increment(count as u64);
}

/// The broker-wide queue budget's use.
pub fn queued(messages: usize, bytes: usize) {
    gauge!("meridian_broker_queued_messages").set(messages as f64);
    gauge!("meridian_broker_queued_bytes").set(bytes as f64);
}

/// The process's resident set, as the memory cap last read it.
pub fn resident(bytes: usize) {
    gauge!("meridian_broker_resident_bytes").set(bytes as f64);
}

pub fn publish_denied() {
    counter!("meridian_broker_publish_denied_total").increment(1);
}

pub fn notify_sent() {
    counter!("meridian_broker_bootstrap_notify_total").increment(1);
}

pub fn bytes_in(n: usize) {
    counter!("meridian_broker_bytes_in_total").increment(n as u64);
}

pub fn bytes_out(n: usize) {
    counter!("meridian_broker_bytes_out_total").increment(n as u64);
}

fn qos_label(qos: u8) -> &'static str {
    match qos {
        0 => "0",
        1 => "1",
        _ => "2",
    }
}

/// Devices' kept subscriptions written to the registry (PROTOCOL §2); `skipped` were of devices
/// deleted meanwhile.
pub fn kept_subscriptions_written(devices: usize, skipped: usize) {
    counter!("meridian_broker_kept_subscriptions_written_total").increment(devices as u64);
    if skipped > 0 {
        counter!("meridian_broker_kept_subscriptions_skipped_total").increment(skipped as u64);
    }
}

/// Devices whose kept subscriptions the registry refused alone; they are not kept.
pub fn kept_subscriptions_refused(devices: usize) {
    counter!("meridian_broker_kept_subscriptions_refused_total").increment(devices as u64);
}

/// A write of kept subscriptions failed; it is retried.
pub fn kept_subscriptions_failed() {
    counter!("meridian_broker_kept_subscriptions_failures_total").increment(1);
}
