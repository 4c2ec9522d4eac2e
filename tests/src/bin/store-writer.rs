//! Writes to a store as fast as it can and prints each acknowledged revision, so a test can
//! kill it with SIGKILL at an arbitrary point and check that every acknowledged write survived.
//!
//! Usage: `store-writer <path> <prefix>`; writes `<prefix>/<n>` forever, alternating single puts
//! and two-key batches, printing `<n> <revision>` after each commit returns.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::io::Write;

use meridian_registry::store::{Op, RedbStore, Store};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(prefix)) = (args.next(), args.next()) else {
        return Err("usage: store-writer <path> <prefix>".into());
    };
    let store = RedbStore::open(&path)?;
    let mut stdout = std::io::stdout().lock();
    for n in 0u64.. {
        let key = format!("{prefix}/{n}");
        let value = n.to_string().into_bytes();
        let revision = if n % 2 == 0 {
            store.put(&key, value.into()).await?
        } else {
            let pair = Op::put(format!("{key}/pair"), value.clone());
            store.batch(vec![pair, Op::put(key, value)]).await?
        };
        writeln!(stdout, "{n} {revision}")?;
        stdout.flush()?;
    }
    Ok(())
}
