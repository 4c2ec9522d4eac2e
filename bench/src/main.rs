//! `meridian-bench`: load generator for Meridian and peer MQTT brokers.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

fn main() -> anyhow::Result<()> {
    anyhow::bail!("no scenarios yet")
}
