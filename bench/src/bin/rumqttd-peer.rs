//! rumqttd as a peer broker for `meridian-bench`: one MQTT 3.1.1 listener on the given address,
//! no authentication, no TLS, no console or metrics endpoint, and no delay between accepts
//! (rumqttd's sample config sleeps `next_connection_delay_ms` after each accept, which would
//! cap its connect rate).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Parser;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long, default_value_t = 20_000)]
    max_connections: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // The values of rumqttd's own sample configuration (`rumqttd.toml`) except where noted.
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        // Room for the benchmark's 1 KiB payloads and more.
        max_payload_size: 1024 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4-1".into(),
        listen: args.listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: args.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: 104_857_600,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Config::default()
    };
    Broker::new(config).start().context("rumqttd stopped")
}
