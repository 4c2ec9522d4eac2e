//! The `Store` conformance suite (`meridian_registry::store::conformance`), one set of cases
//! run unchanged against both backends: the embedded redb store, and JetStream on a real
//! `nats-server` process (restarted in the middle of a watch by the restart case).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use meridian_registry::store::conformance::{self, Backend};
use meridian_registry::store::{JetStreamStore, NatsConfig, RedbStore, Store};
use meridian_tests::nats::NatsServer;

/// A fresh redb file per store; there is no server to restart.
struct Redb {
    dir: tempfile::TempDir,
    made: AtomicUsize,
}

impl Redb {
    async fn new() -> Redb {
        Redb { dir: tempfile::tempdir().expect("tempdir"), made: AtomicUsize::new(0) }
    }
}

#[async_trait::async_trait]
impl Backend for Redb {
    async fn store(&self) -> Arc<dyn Store> {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("store-{n}.redb"));
        Arc::new(RedbStore::open(path).expect("open redb"))
    }

    async fn restart(&self) {}
}

/// One real nats-server with JetStream per case; each store is a bucket of its own on it.
struct Nats {
    server: tokio::sync::Mutex<NatsServer>,
    url: String,
    made: AtomicUsize,
}

impl Nats {
    async fn new() -> Nats {
        let server = NatsServer::start().await;
        let url = server.url();
        Nats { server: tokio::sync::Mutex::new(server), url, made: AtomicUsize::new(0) }
    }
}

#[async_trait::async_trait]
impl Backend for Nats {
    async fn store(&self) -> Arc<dyn Store> {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let config: NatsConfig =
            toml::from_str(&format!("servers = [{:?}]\nbucket = \"conformance{n}\"", self.url))
                .expect("config");
        let store = JetStreamStore::connect(config).await.expect("connect");
        store.provision().await.expect("provision");
        Arc::new(store)
    }

    async fn restart(&self) {
        self.server.lock().await.restart().await;
    }
}

macro_rules! conformance {
    ($backend:ident, $make:expr, [$($case:ident),* $(,)?]) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = $make.await;
                    conformance::$case(&backend).await;
                }
            )*
        }
    };
}

macro_rules! every_backend {
    ($($case:ident),* $(,)?) => {
        conformance!(redb, Redb::new(), [$($case),*]);
        conformance!(nats, Nats::new(), [$($case),*]);
    };
}

every_backend!(
    put_get_and_revisions_increase,
    compare_and_swap,
    failed_batch_writes_nothing,
    refuses_bad_batches,
    scan_prefix,
    deletes,
    batch_atomicity_under_concurrent_writers,
    watch_resume_without_gap_or_duplicate,
    server_restart_during_watch,
);
