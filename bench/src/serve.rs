//! `meridian-bench serve-broker`: Meridian's broker in a process of its own, so the hold
//! scenario's resident memory is the broker's alone and the load generator does not share its
//! runtime. Seeds the benchmark fleet into a temporary registry, starts
//! `meridian_broker::daemon::start` on `127.0.0.1:0` with the default limits, prints
//! `listening ADDR` and serves until killed or until its stdin closes.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use meridian_broker::config::{BrokerConfig, LimitsConfig};
use meridian_broker::daemon::{self, Listeners};
use tokio::io::AsyncReadExt;

use crate::fleet::{self, Fleet};

#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Devices to create in the registry.
    #[arg(long, default_value_t = 0)]
    pub devices: usize,
}

/// The configuration every benchmarked Meridian broker runs with: the shipped defaults
/// (`deploy/broker.toml`), plus the benchmark's standard user.
pub fn broker_config(instance: &str, listen: &str) -> Result<BrokerConfig> {
    Ok(BrokerConfig {
        instance: instance.parse()?,
        listen: listen.into(),
        tls: None,
        websocket_listen: None,
        limits: LimitsConfig::default(),
        users: HashMap::from([(fleet::USER.0.to_owned(), fleet::USER.1.to_owned())]),
        applications: HashMap::new(),
        allow_anonymous: false,
        notify_reply_wait: Duration::from_secs(2),
    })
}

pub async fn serve_broker(args: ServeArgs) -> Result<()> {
    let fleet = Fleet::seed(args.devices).await?;
    let config = broker_config(fleet::SOURCE, "127.0.0.1:0")?;
    let listeners = Listeners::bind(&config).await?;
    let addr = listeners.tcp.local_addr()?;
    let daemon =
        daemon::start(config, fleet.store.clone(), fleet.sealer.clone(), listeners).await?;
    println!("listening {addr}");
    // Until the parent closes our stdin (or kills us).
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    daemon.shutdown().await;
    Ok(())
}
