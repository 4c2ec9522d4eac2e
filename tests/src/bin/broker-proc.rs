//! A broker in a process of its own, for tests that measure the broker's resident memory
//! (`tests/tests/memory_cap.rs`): in-process, the test's own clients would be counted too.
//!
//! Usage: `broker-proc <max_rss bytes> <max_queued_bytes>`. It starts a broker on a fresh
//! registry with the standard user of `meridian_tests::USER`, prints `listening <addr>`, and
//! serves until its standard input closes, so it ends with the test that started it.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::io::BufRead;

use meridian_tests::{SHANGHAI, TestRegistry};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(max_rss), Some(max_queued_bytes)) = (args.next(), args.next()) else {
        return Err("usage: broker-proc <max_rss bytes> <max_queued_bytes>".into());
    };
    let (max_rss, max_queued_bytes): (usize, usize) = (max_rss.parse()?, max_queued_bytes.parse()?);
    let registry = TestRegistry::new().await;
    let broker = registry
        .broker(SHANGHAI, |config| {
            config.limits.max_rss = max_rss;
            config.limits.max_queued_bytes = max_queued_bytes;
            // Per-session queues far above the load: only the broker-wide bounds apply.
            config.limits.queued = 10_000_000;
        })
        .await;
    println!("listening {}", broker.addr);
    tokio::task::spawn_blocking(|| {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() {
                break;
            }
        }
    })
    .await?;
    broker.daemon.shutdown().await;
    Ok(())
}
