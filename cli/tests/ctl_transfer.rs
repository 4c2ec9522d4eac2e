//! `meridian ctl transfer` end to end: the real binary against a real admin API served
//! in-process on 127.0.0.1, over a control plane on a temporary redb store with a manual clock
//! (instances must be 5 days old to transfer). Set-up goes through the plane; every transfer
//! step goes through the binary.

// Test helpers outside `#[test]` functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::watch;

use meridian_control::{ControlPlane, NewAccount, NewInstance, NewProduct, ProductPatch};
use meridian_registry::Registry;
use meridian_registry::clock::{Clock, ManualClock, SystemClock};
use meridian_registry::model::{AccountKind, Edition, MqttEndpoint, Region};
use meridian_registry::secret::SecretKey;
use meridian_registry::store::{RedbStore, Store};

const OPERATOR_TOKEN: &str = "operator-token-for-transfer-tests";
const PK: &str = "a13FN5TplKq";
const HANG: Duration = Duration::from_secs(60);

struct Api {
    url: String,
    plane: ControlPlane,
    clock: ManualClock,
    _shutdown: watch::Sender<()>,
    _dir: tempfile::TempDir,
}

struct Run {
    output: Output,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn ok(&self) -> &str {
        assert!(self.output.status.success(), "failed: {}\n{}", self.stderr, self.stdout);
        &self.stdout
    }

    #[track_caller]
    fn fails(&self) -> &str {
        assert_eq!(self.output.status.code(), Some(1), "{}\n{}", self.stdout, self.stderr);
        &self.stderr
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).expect("JSON on stdout")
    }
}

impl Api {
    async fn start() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(dir.path().join("registry.redb")).unwrap());
        let sealer = SecretKey::from_hex(&SecretKey::generate_hex().unwrap()).unwrap();
        let clock = ManualClock::new(SystemClock.now());
        let registry = Registry::new(store, sealer, Arc::new(clock.clone()));
        registry
            .put_region(Region {
                id: "cn-shanghai".parse().unwrap(),
                display_name: "Shanghai".into(),
                latitude: 31.23,
                longitude: 121.47,
                bias_km: 0.0,
                public_endpoint: None,
            })
            .await
            .unwrap();
        let plane = ControlPlane::new(registry, OPERATOR_TOKEN);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, mut stopped) = watch::channel(());
        tokio::spawn(meridian_control::api::serve(listener, plane.clone(), async move {
            let _ = stopped.changed().await;
        }));
        Api { url, plane, clock, _shutdown: shutdown, _dir: dir }
    }

    async fn ctl(&self, key: Option<&str>, args: &[&str]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_meridian"));
        command
            .arg("ctl")
            .args(args)
            .env("MERIDIAN_URL", &self.url)
            .env_remove("MERIDIAN_API_KEY")
            .env_remove("MERIDIAN_OPERATOR_TOKEN")
            .kill_on_drop(true);
        if let Some(key) = key {
            command.env("MERIDIAN_API_KEY", key);
        }
        let output = tokio::time::timeout(HANG, command.output()).await.unwrap().unwrap();
        let run = Run {
            stdout: String::from_utf8(output.stdout.clone()).unwrap(),
            stderr: String::from_utf8(output.stderr.clone()).unwrap(),
            output,
        };
        for secret in [Some(OPERATOR_TOKEN), key].into_iter().flatten() {
            assert!(!run.stdout.contains(secret) && !run.stderr.contains(secret), "secret shown");
        }
        run
    }

    /// An individual account with instances `{id}-1` and `{id}-2`; returns its key.
    async fn account(&self, id: &str) -> String {
        let (_, key) = self
            .plane
            .create_account(NewAccount {
                id: id.parse().unwrap(),
                name: format!("{id} Ltd"),
                kind: AccountKind::Individual,
                verified_entity: None,
            })
            .await
            .unwrap();
        for n in 1..=2 {
            let new = NewInstance {
                id: format!("{id}-{n}").parse().unwrap(),
                region: "cn-shanghai".parse().unwrap(),
                edition: Edition::Public,
                endpoint: MqttEndpoint {
                    host: "sh.example".into(),
                    tcp_port: 1883,
                    tls_port: None,
                },
                lifetime_days: 365,
            };
            self.plane.create_instance(&id.parse().unwrap(), new).await.unwrap();
        }
        key
    }
}

#[tokio::test]
async fn device_and_instance_transfers_through_ctl() {
    let api = Api::start().await;
    let alpha = api.account("alpha").await;
    let bravo = api.account("bravo").await;
    let source = "alpha".parse().unwrap();
    let product = NewProduct {
        key: Some(PK.parse().unwrap()),
        name: "Lamp".into(),
        home_instance: "alpha-1".parse().unwrap(),
        topic_categories: Vec::new(),
        tsl: Value::Null,
        parsing_script: None,
    };
    api.plane.create_product(&source, product).await.unwrap();
    let publish = ProductPatch { published: Some(true), ..ProductPatch::default() };
    api.plane.update_product(&source, &PK.parse().unwrap(), publish).await.unwrap();
    let names = ["lamp-0001", "lamp-0002"].map(|name| (name.parse().unwrap(), None));
    api.plane.create_devices(&source, &PK.parse().unwrap(), names.to_vec()).await.unwrap();

    // Device transfer: refused until the operator allow-lists the source.
    let create = ["transfer", "devices", "create", PK, "--to", "bravo", "--devices", "lamp-0001"];
    let refused = api.ctl(Some(&alpha), &create).await;
    assert!(refused.fails().contains("not on the transfer allow-list"), "{}", refused.stderr);
    let allowed =
        api.ctl(None, &["--operator-token", OPERATOR_TOKEN, "transfer", "allow", "alpha"]).await;
    assert!(allowed.ok().contains("account alpha may transfer devices out"), "{}", allowed.stdout);
    let list = api.ctl(None, &["--operator-token", OPERATOR_TOKEN, "transfer", "allow-list"]).await;
    assert!(list.ok().contains("alpha"), "{}", list.stdout);
    let usage =
        api.ctl(Some(&alpha), &["transfer", "devices", "create", PK, "--to", "bravo"]).await;
    assert_eq!(usage.output.status.code(), Some(2), "devices or CSV is required");

    let created = api.ctl(Some(&alpha), &[&["--output", "json"][..], &create[..]].concat()).await;
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let pending = api.ctl(Some(&bravo), &["transfer", "devices", "list"]).await;
    let row = pending.ok().lines().find(|line| line.contains(&id)).unwrap_or_default().to_owned();
    assert!(row.contains("from alpha") && row.contains("Pending"), "{}", pending.stdout);
    assert!(!pending.stdout.contains(PK), "the destination never sees the ProductKey");
    let accepted = api.ctl(Some(&bravo), &["transfer", "devices", "accept", &id]).await;
    assert!(accepted.ok().contains(&format!("transfer {id} accepted")), "{}", accepted.stdout);

    let views = api.ctl(Some(&bravo), &["--output", "json", "transfer", "views", "list"]).await;
    let view = views.json()["product_views"][0]["id"].as_str().unwrap().to_owned();
    let devices = api.ctl(Some(&bravo), &["transfer", "views", "devices", &view]).await;
    assert!(devices.ok().contains("lamp-0001"), "{}", devices.stdout);
    assert!(!devices.stdout.contains("lamp-0002"), "{}", devices.stdout);
    let disabled =
        api.ctl(Some(&bravo), &["transfer", "views", "disable", &view, "lamp-0001"]).await;
    assert!(disabled.ok().contains("lamp-0001 disabled"), "{}", disabled.stdout);
    let gone = api.ctl(Some(&alpha), &["devices", "show", PK, "lamp-0001"]).await;
    assert!(gone.fails().contains("(HTTP 404)"), "{}", gone.stderr);

    // Instance transfer: one old enough, one too young, in one batch.
    api.clock.advance(Duration::from_secs(6 * 24 * 60 * 60));
    let young = NewInstance {
        id: "alpha-young".parse().unwrap(),
        region: "cn-shanghai".parse().unwrap(),
        edition: Edition::Public,
        endpoint: MqttEndpoint { host: "sh.example".into(), tcp_port: 1883, tls_port: None },
        lifetime_days: 365,
    };
    api.plane.create_instance(&source, young).await.unwrap();
    let code =
        api.ctl(Some(&alpha), &["--output", "json", "codes", "request"]).await.json()["code"]
            .as_str()
            .unwrap()
            .to_owned();
    let batch = api
        .ctl(
            Some(&alpha),
            &[
                "transfer",
                "instances",
                "create",
                "--to",
                "bravo",
                "--code",
                &code,
                "alpha-2",
                "alpha-young",
            ],
        )
        .await;
    assert!(batch.fails().contains("1 of 2 orders failed"), "{}", batch.stderr);
    assert!(batch.stdout.contains("created less than 5 days ago"), "{}", batch.stdout);
    let orders =
        api.ctl(Some(&bravo), &["--output", "json", "transfer", "instances", "list"]).await.json();
    let order = orders["orders"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(orders["orders"][0]["instance"], "alpha-2");
    let renew = api.ctl(Some(&alpha), &["instances", "renew", "alpha-2", "--days", "30"]).await;
    assert!(renew.fails().contains("pending transfer order"), "{}", renew.stderr);
    let confirmed = api.ctl(Some(&bravo), &["transfer", "instances", "confirm", &order]).await;
    assert!(confirmed.ok().contains("Confirmed"), "{}", confirmed.stdout);
    let shown = api.ctl(Some(&bravo), &["instances", "show", "alpha-2"]).await;
    assert!(shown.ok().contains("alpha-2"), "{}", shown.stdout);
    let renewed = api.ctl(Some(&bravo), &["instances", "renew", "alpha-2", "--days", "30"]).await;
    assert!(renewed.ok().contains("instance alpha-2 renewed"), "{}", renewed.stdout);

    // The organisation window.
    let set = api
        .ctl(
            None,
            &[
                "--operator-token",
                OPERATOR_TOKEN,
                "transfer",
                "set-organisation",
                "bravo",
                "--organisation",
                "org-1",
                "--admin",
            ],
        )
        .await;
    assert!(set.ok().contains("as its admin"), "{}", set.stdout);
    let window = api.ctl(Some(&bravo), &["transfer", "organisation", "orders"]).await;
    assert!(window.ok().contains(&order), "{}", window.stdout);
}
