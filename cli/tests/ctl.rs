//! `meridian ctl` end to end: the real binary against a real admin API served in-process on
//! 127.0.0.1, over a control plane on a temporary redb store, with the task executor running
//! where a test needs tasks to move.
//!
//! Every run of the binary is checked for the credentials the test passed it: the API keys and
//! the operator token must never show in any output or error.

use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::watch;

use meridian_control::ControlPlane;
use meridian_registry::clock::{SystemClock, Timestamp};
use meridian_registry::model::{InstanceUsage, MqttEndpoint, Region};
use meridian_registry::secret::SecretKey;
use meridian_registry::store::{RedbStore, Store};
use meridian_registry::{Registry, encode, keys};

const OPERATOR_TOKEN: &str = "operator-token-for-ctl-tests";
const PK: &str = "a13FN5TplKq";
/// How long a test waits for something that should happen promptly before calling it a hang.
const HANG: Duration = Duration::from_secs(60);

/// An admin API on 127.0.0.1:0; dropping it shuts the server (and executor) down.
struct Api {
    url: String,
    plane: ControlPlane,
    shutdown: watch::Sender<()>,
    /// Every credential handed to the binary: none may ever be printed back.
    secrets: Mutex<Vec<String>>,
    _dir: tempfile::TempDir,
}

/// One finished run of `meridian ctl`.
struct Run {
    output: Output,
    stdout: String,
    stderr: String,
}

impl Api {
    async fn start() -> Api {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(dir.path().join("registry.redb")).expect("open store"));
        let sealer = SecretKey::from_hex(&SecretKey::generate_hex().expect("key")).expect("key");
        let registry = Registry::new(store, sealer, Arc::new(SystemClock));
        for (id, latitude, longitude) in
            [("cn-shanghai", 31.23, 121.47), ("eu-central-1", 50.11, 8.68)]
        {
            let region = Region {
                id: id.parse().expect("region id"),
                display_name: id.into(),
                latitude,
                longitude,
                bias_km: 0.0,
                public_endpoint: (id == "cn-shanghai").then(|| MqttEndpoint {
                    host: "mqtt-sh.platform.example".into(),
                    tcp_port: 1883,
                    tls_port: None,
                }),
            };
            registry.put_region(region).await.expect("region");
        }
        let plane = ControlPlane::new(registry, OPERATOR_TOKEN);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (shutdown, stopped) = watch::channel(());
        tokio::spawn(meridian_control::api::serve(listener, plane.clone(), stopped_on(stopped)));
        Api {
            url,
            plane,
            shutdown,
            secrets: Mutex::new(vec![OPERATOR_TOKEN.to_owned()]),
            _dir: dir,
        }
    }

    /// Starts the task executor, which moves submitted tasks' devices.
    fn start_executor(&self) {
        let stopped = self.shutdown.subscribe();
        tokio::spawn(self.plane.clone().run_executor(stopped_on(stopped)));
    }

    /// Runs `meridian ctl <args>` against this API with `key` (if any) in the environment.
    async fn ctl(&self, key: Option<&str>, args: &[&str]) -> Run {
        self.ctl_with(key, args, &self.url).await
    }

    async fn ctl_with(&self, key: Option<&str>, args: &[&str], url: &str) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_meridian"));
        command
            .arg("ctl")
            .args(args)
            .env("MERIDIAN_URL", url)
            .env_remove("MERIDIAN_API_KEY")
            .env_remove("MERIDIAN_OPERATOR_TOKEN")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        if let Some(key) = key {
            command.env("MERIDIAN_API_KEY", key);
        }
        let output = tokio::time::timeout(HANG, command.output())
            .await
            .expect("meridian ctl finishes")
            .expect("meridian runs");
        let run = Run {
            stdout: String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout"),
            stderr: String::from_utf8(output.stderr.clone()).expect("UTF-8 stderr"),
            output,
        };
        for secret in self.secrets.lock().expect("secrets").iter() {
            assert!(
                !run.stdout.contains(secret.as_str()) && !run.stderr.contains(secret.as_str()),
                "a credential was printed by `ctl {}`:\n{}{}",
                args.join(" "),
                run.stdout,
                run.stderr
            );
        }
        run
    }

    /// `accounts create` as the operator; returns the new API key, from now on watched for.
    async fn account(&self, id: &str) -> String {
        let created = self
            .ctl(
                None,
                &[
                    "--operator-token",
                    OPERATOR_TOKEN,
                    "--output",
                    "json",
                    "accounts",
                    "create",
                    "--id",
                    id,
                    "--name",
                    &format!("{id} Ltd"),
                    "--kind",
                    "individual",
                ],
            )
            .await
            .json();
        let key = created["api_key"].as_str().expect("api_key").to_owned();
        self.secrets.lock().expect("secrets").push(key.clone());
        key
    }

    /// `instances create` as the operator: an instance of `owner` with endpoint `host:1883`.
    async fn provision(&self, owner: &str, instance: &str, region: &str, host: &str) -> Run {
        self.ctl(
            None,
            &[
                "--operator-token",
                OPERATOR_TOKEN,
                "instances",
                "create",
                "--owner",
                owner,
                "--id",
                instance,
                "--region",
                region,
                "--host",
                host,
            ],
        )
        .await
    }

    /// An account with an instance per region (`{id}-sh`, `{id}-fra`, provisioned by the
    /// operator) and product `pk` homed in Shanghai; returns its key.
    async fn tenant(&self, id: &str, pk: &str) -> String {
        let key = self.account(id).await;
        for (suffix, region) in [("sh", "cn-shanghai"), ("fra", "eu-central-1")] {
            let instance = format!("{id}-{suffix}");
            let host = format!("{suffix}.example");
            self.provision(id, &instance, region, &host).await.ok();
        }
        let home = format!("{id}-sh");
        self.ctl(
            Some(&key),
            &["products", "create", "--key", pk, "--name", "Lamp", "--instance", &home],
        )
        .await
        .ok();
        key
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.send_replace(());
    }
}

/// Resolves once the channel says so or its sender is gone.
async fn stopped_on(mut stopped: watch::Receiver<()>) {
    let _ = stopped.changed().await;
}

impl Run {
    /// Asserts success; returns stdout.
    #[track_caller]
    fn ok(&self) -> &str {
        assert!(self.output.status.success(), "failed: {}\n{}", self.stderr, self.stdout);
        &self.stdout
    }

    /// Asserts failure with exit status 1; returns stderr.
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

#[tokio::test]
async fn operator_creates_an_account_whose_key_is_shown_once() {
    let api = Api::start().await;
    let run = api
        .ctl(
            None,
            &[
                "accounts",
                "create",
                "--id",
                "acme",
                "--name",
                "Acme Ltd",
                "--kind",
                "individual",
                "--operator-token",
                OPERATOR_TOKEN,
            ],
        )
        .await;
    let stdout = run.ok();
    assert!(stdout.contains("created account acme (Acme Ltd, individual)"), "{stdout}");
    let key = stdout
        .lines()
        .find_map(|line| line.strip_prefix("API key: "))
        .expect("the key is printed")
        .to_owned();
    assert!(run.stderr.contains("shown only this once"), "{}", run.stderr);
    api.secrets.lock().unwrap().push(key.clone());

    let shown = api.ctl(Some(&key), &["accounts", "show"]).await;
    assert!(shown.ok().contains("Acme Ltd"), "{}", shown.stdout);

    // Without the operator token: refused before any request, with the way out.
    let refused = api
        .ctl(None, &["accounts", "create", "--id", "x", "--name", "X", "--kind", "individual"])
        .await;
    assert!(refused.fails().contains("--operator-token or set MERIDIAN_OPERATOR_TOKEN"));
    // An API key is not the operator token: the API says so.
    let wrong = api
        .ctl_with(
            None,
            &[
                "--operator-token",
                &key,
                "accounts",
                "create",
                "--id",
                "y",
                "--name",
                "Y",
                "--kind",
                "individual",
            ],
            &api.url,
        )
        .await;
    assert_eq!(wrong.fails(), "error: missing or invalid credentials (HTTP 401)\n");
    // An enterprise account needs its entity: a usage error (exit 2), no request.
    let usage = api
        .ctl(None, &["accounts", "create", "--id", "c", "--name", "C", "--kind", "enterprise"])
        .await;
    assert_eq!(usage.output.status.code(), Some(2), "{}", usage.stderr);
}

/// `instances create` is the operator's: with a tenant's API key it is refused with the API's
/// message and nothing is created; with the operator token it provisions for `--owner`.
#[tokio::test]
async fn only_the_operator_provisions_instances() {
    let api = Api::start().await;
    let key = api.account("evil").await;
    let args = [
        "instances",
        "create",
        "--owner",
        "evil",
        "--id",
        "aaa-evil",
        "--region",
        "cn-shanghai",
        "--host",
        "evil.example",
    ];
    // The API key alone is not the operator's credential.
    let refused = api.ctl(Some(&key), &args).await;
    let stderr = refused.fails();
    assert!(stderr.contains("operator token"), "{stderr}");
    // And the API itself refuses an API key that tries.
    let status = post_instance_with_api_key(&api.url, &key).await;
    assert!(status.contains("403"), "{status}");
    assert!(status.contains("provisioned by the platform operator"), "{status}");
    assert!(api.ctl(Some(&key), &["instances", "list"]).await.ok().contains("no instances"));

    let created = api.provision("evil", "evil-sh", "cn-shanghai", "mqtt-sh.platform.example").await;
    assert!(
        created.ok().contains("created instance evil-sh in cn-shanghai for evil"),
        "{}",
        created.stdout
    );
    let listed = api.ctl(Some(&key), &["instances", "list"]).await;
    assert!(listed.ok().contains("mqtt-sh.platform.example:1883"), "{}", listed.stdout);
    let shown = api.ctl(Some(&key), &["instances", "show", "evil-sh"]).await;
    assert!(shown.ok().contains("evil"), "{}", shown.stdout);
}

/// `POST /v1/instances` with an API key, as an old `ctl` sent it: the raw answer.
async fn post_instance_with_api_key(url: &str, key: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = r#"{"id":"aaa-evil","region":"cn-shanghai","endpoint":{"host":"evil.example","tcp_port":1883}}"#;
    let request = format!(
        "POST /v1/instances HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
}

#[tokio::test]
async fn instances_products_and_devices() {
    let api = Api::start().await;
    let key = api.tenant("acme", PK).await;
    let key = Some(key.as_str());

    let regions = api.ctl(key, &["regions", "list"]).await;
    assert!(regions.ok().contains("eu-central-1"), "{}", regions.stdout);
    assert!(regions.stdout.contains("mqtt-sh.platform.example:1883"), "{}", regions.stdout);
    let instances = api.ctl(key, &["instances", "list"]).await;
    let listed = instances.ok();
    assert!(listed.starts_with("ID "), "{listed}");
    assert!(listed.contains("acme-sh") && listed.contains("fra.example:1883"), "{listed}");
    let instance = api.ctl(key, &["instances", "show", "acme-fra"]).await;
    assert!(instance.ok().contains("eu-central-1"), "{}", instance.stdout);

    // A product defined from files.
    let dir = tempfile::tempdir().unwrap();
    let tsl = dir.path().join("tsl.json");
    std::fs::write(&tsl, r#"{"properties":[{"identifier":"power","dataType":"bool"}]}"#).unwrap();
    let topics = dir.path().join("topics.json");
    std::fs::write(
        &topics,
        r#"[{"topic":"/${productKey}/${deviceName}/user/update","operation":"publish"}]"#,
    )
    .unwrap();
    let script = dir.path().join("parse.js");
    std::fs::write(&script, "function rawDataToProtocol(bytes) { return {}; }").unwrap();
    let (tsl, topics, script) =
        (tsl.to_str().unwrap(), topics.to_str().unwrap(), script.to_str().unwrap());
    let created = api
        .ctl(
            key,
            &[
                "products",
                "create",
                "--name",
                "Plug",
                "--instance",
                "acme-fra",
                "--tsl",
                tsl,
                "--topic-categories",
                topics,
            ],
        )
        .await;
    assert!(created.ok().starts_with("created product "), "{}", created.stdout);
    api.ctl(key, &["products", "update", PK, "--script", script, "--name", "Lamp 2"]).await.ok();
    api.ctl(key, &["products", "publish", PK]).await.ok();
    let product = api.ctl(key, &["--output", "json", "products", "show", PK]).await.json();
    assert_eq!(product["name"], "Lamp 2");
    assert_eq!(product["published"], true);
    assert!(product["parsing_script"].as_str().unwrap().contains("rawDataToProtocol"));
    let products = api.ctl(key, &["products", "list"]).await;
    assert!(products.ok().contains("Plug") && products.stdout.contains("Lamp 2"));
    // `update` with nothing to change is a usage error.
    let nothing = api.ctl(key, &["products", "update", PK]).await;
    assert_eq!(nothing.output.status.code(), Some(2), "{}", nothing.stderr);
    // A TSL file that is not JSON is refused before any request.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "not json").unwrap();
    let refused = api.ctl(key, &["products", "update", PK, "--tsl", bad.to_str().unwrap()]).await;
    assert!(refused.fails().contains("is not JSON"), "{}", refused.stderr);

    // Devices from names, then from CSV; secrets shown once, with a warning.
    let run = api.ctl(key, &["devices", "create", PK, "lamp-0001", "lamp-0002"]).await;
    let table = run.ok();
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("lamp-0001 "), "{table}");
    assert!(run.stderr.contains("shown only this once"), "{}", run.stderr);
    let csv = dir.path().join("devices.csv");
    std::fs::write(&csv, "deviceName,deviceSecret\nlamp-0003,\nlamp-0004,chosen-secret-0004\n")
        .unwrap();
    let imported = api
        .ctl(key, &["--output", "json", "devices", "import", PK, csv.to_str().unwrap()])
        .await
        .json();
    let imported = imported["devices"].as_array().unwrap();
    assert_eq!(imported.len(), 2);
    assert_eq!(imported[1]["deviceSecret"], "chosen-secret-0004");
    let listed = api.ctl(key, &["--output", "json", "devices", "list", PK]).await.json();
    assert_eq!(listed["devices"].as_array().unwrap().len(), 4);
    assert!(!listed.to_string().contains("chosen-secret-0004"), "secrets never listed");

    let disabled = api.ctl(key, &["devices", "disable", PK, "lamp-0001"]).await;
    assert_eq!(disabled.ok(), "device lamp-0001 disabled\n");
    let shown = api.ctl(key, &["devices", "show", PK, "lamp-0001"]).await;
    assert!(shown.ok().contains("disabled"), "{}", shown.stdout);
    api.ctl(key, &["devices", "enable", PK, "lamp-0001"]).await.ok();
    assert_eq!(
        api.ctl(key, &["devices", "delete", PK, "lamp-0004"]).await.ok(),
        "device lamp-0004 deleted\n"
    );
    let table = api.ctl(key, &["devices", "list", PK]).await;
    assert_eq!(table.ok().lines().count(), 4, "header and three devices: {}", table.stdout);

    let audit = api.ctl(key, &["audit"]).await;
    assert!(audit.ok().contains("device.deleted"), "{}", audit.stdout);
}

#[tokio::test]
async fn distribute_waits_for_the_task_and_records_download() {
    let api = Api::start().await;
    api.start_executor();
    let key = api.tenant("acme", PK).await;
    let key = Some(key.as_str());
    api.ctl(key, &["devices", "create", PK, "lamp-0001", "lamp-0002", "lamp-0003"]).await.ok();

    // Two real devices and one that does not exist: recorded as failed, the task distributed.
    let run = api
        .ctl(
            key,
            &[
                "distribute",
                PK,
                "--devices",
                "lamp-0001,lamp-0002,ghost-0001",
                "--instance",
                "acme-fra",
                "--wait",
            ],
        )
        .await;
    let stdout = run.ok();
    let id = stdout
        .split_whitespace()
        .nth(1)
        .filter(|_| stdout.starts_with("task "))
        .expect("task id")
        .to_owned();
    assert!(stdout.contains("3 devices of a13FN5TplKq to instance acme-fra"), "{stdout}");
    assert!(
        stdout.contains(&format!("task {id} Distributed: 3/3 handled, 2 succeeded, 1 failed")),
        "{stdout}"
    );
    let device = api.ctl(key, &["devices", "show", PK, "lamp-0001"]).await;
    assert!(device.ok().contains("instance acme-fra"), "{}", device.stdout);

    // The record, to a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("records.csv");
    let run = api.ctl(key, &["tasks", "records", &id, "-o", file.to_str().unwrap()]).await;
    assert!(run.ok().starts_with("wrote 3 records to "), "{}", run.stdout);
    let records = std::fs::read_to_string(&file).unwrap();
    let mut lines = records.lines();
    assert_eq!(lines.next(), Some("productKey,deviceName,result,reason"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 3, "{records}");
    assert!(rows.contains(&"a13FN5TplKq,ghost-0001,failed,device does not exist"), "{records}");
    // And to stdout.
    assert_eq!(api.ctl(key, &["tasks", "records", &id]).await.ok(), records);

    // From a CSV file, waiting, as JSON: one document, the settled task.
    let csv = dir.path().join("distribute.csv");
    let template = api.ctl(key, &["tasks", "template"]).await;
    let mut text = template.ok().to_owned();
    assert_eq!(text, "productKey,deviceName\n");
    text.push_str(&format!("{PK},lamp-0003\n"));
    std::fs::write(&csv, text).unwrap();
    let task = api
        .ctl(
            key,
            &[
                "--output",
                "json",
                "distribute",
                PK,
                "--csv",
                csv.to_str().unwrap(),
                "--nearest",
                "acme-sh,acme-fra",
                "--wait",
            ],
        )
        .await
        .json();
    assert_eq!(task["state"], "Distributed");
    assert_eq!(task["succeeded"], 1);

    // Both in the list; a settled task's watch ends at once.
    let list = api.ctl(key, &["tasks", "list"]).await;
    let listed = list.ok();
    assert!(listed.contains(&id) && listed.contains(task["id"].as_str().unwrap()), "{listed}");
    assert!(listed.contains("Distributed") && listed.contains("nearest of acme-sh, acme-fra"));
    let shown = api.ctl(key, &["tasks", "show", &id]).await;
    assert!(shown.ok().contains("3/3"), "{}", shown.stdout);
    let watched = api.ctl(key, &["tasks", "show", &id, "--watch"]).await;
    assert!(watched.ok().contains("Distributed"), "{}", watched.stdout);
}

#[tokio::test]
async fn a_failed_task_exits_non_zero_and_a_retry_finishes_it() {
    let api = Api::start().await;
    let key = api.tenant("acme", PK).await;
    let key = Some(key.as_str());
    api.ctl(key, &["devices", "create", PK, "lamp-0001"]).await.ok();
    let task = api
        .ctl(
            key,
            &[
                "--output",
                "json",
                "distribute",
                PK,
                "--devices",
                "lamp-0001",
                "--instance",
                "acme-fra",
            ],
        )
        .await
        .json();
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(task["state"], "Initializing");

    // The product vanishes before the executor gets to the task: the task fails.
    let store = api.plane.registry().store().clone();
    let product = store.get(&keys::product(&PK.parse().unwrap())).await.unwrap().unwrap();
    store.delete(&product.key).await.unwrap();
    api.start_executor();
    let run = api.ctl(key, &["tasks", "show", &id, "--watch"]).await;
    let stderr = run.fails();
    assert_eq!(stderr, format!("error: task {id} failed: product {PK} no longer exists\n"));
    assert!(run.stdout.contains(&format!("task {id} Failed: 0/1 handled")), "{}", run.stdout);

    // Back again, a retry distributes it.
    store.put(&product.key, product.value.clone()).await.unwrap();
    let run = api.ctl(key, &["tasks", "retry", &id, "--watch"]).await;
    assert!(
        run.ok().contains(&format!("task {id} Distributed: 1/1 handled, 1 succeeded")),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn cross_account_distribution_takes_a_code() {
    let api = Api::start().await;
    api.start_executor();
    let acme = api.tenant("acme", PK).await;
    let bravo = api.tenant("bravo", "b13FN5TplKq").await;
    api.ctl(Some(&acme), &["devices", "create", PK, "lamp-0001"]).await.ok();

    let wrong = api
        .ctl(
            Some(&acme),
            &[
                "distribute",
                PK,
                "--devices",
                "lamp-0001",
                "--to-account",
                "bravo",
                "--code",
                "000000",
            ],
        )
        .await;
    assert!(wrong.fails().starts_with("error: verification code is invalid or expired (HTTP 422)"));

    let code = api.ctl(Some(&bravo), &["--output", "json", "codes", "request"]).await.json();
    let code = code["code"].as_str().unwrap();
    let run = api
        .ctl(
            Some(&acme),
            &[
                "distribute",
                PK,
                "--devices",
                "lamp-0001",
                "--to-account",
                "bravo Ltd",
                "--code",
                code,
                "--wait",
            ],
        )
        .await;
    let stdout = run.ok();
    assert!(stdout.contains("to instance bravo-sh of account bravo"), "{stdout}");
    assert!(stdout.contains("1 succeeded"), "{stdout}");
    let copies = api.ctl(Some(&bravo), &["products", "copies"]).await;
    assert!(copies.ok().contains(PK), "{}", copies.stdout);
}

#[tokio::test]
async fn usage_shows_each_instance() {
    let api = Api::start().await;
    let key = api.tenant("acme", PK).await;
    let usage = InstanceUsage {
        instance: "acme-fra".parse().unwrap(),
        connections: 3,
        connects_total: 4,
        connected_seconds: 3723,
        messages_in: 41,
        messages_out: 17,
        updated_at: Timestamp(1_700_000_000_000),
    };
    let store = api.plane.registry().store();
    store.put(&keys::usage(&usage.instance), encode(&usage).unwrap()).await.unwrap();

    let run = api.ctl(Some(&key), &["usage"]).await;
    let table = run.ok();
    let fra = table.lines().find(|line| line.starts_with("acme-fra")).expect("acme-fra row");
    let cells: Vec<&str> =
        fra.split("   ").map(str::trim).filter(|cell| !cell.is_empty()).collect();
    assert_eq!(
        cells,
        ["acme-fra", "3", "4", "1h 2m 3s", "41", "17", "2023-11-14T22:13:20Z"],
        "{table}"
    );
    let sh = table.lines().find(|line| line.starts_with("acme-sh")).expect("acme-sh row");
    assert!(sh.trim_end().ends_with(" -"), "never reported: {table}");
}

#[tokio::test]
async fn api_errors_exit_non_zero_with_the_message() {
    let api = Api::start().await;
    let key = api.tenant("acme", PK).await;
    let key = Some(key.as_str());

    let missing = api.ctl(key, &["products", "show", "missingPk123"]).await;
    assert_eq!(missing.fails(), "error: product missingPk123 not found (HTTP 404)\n");
    assert!(missing.stdout.is_empty());
    api.ctl(key, &["devices", "create", PK, "lamp-0001"]).await.ok();
    let taken = api.ctl(key, &["devices", "create", PK, "lamp-0001"]).await;
    assert!(taken.fails().starts_with("error: "), "{}", taken.stderr);
    assert!(taken.stderr.ends_with("(HTTP 409)\n"), "{}", taken.stderr);
    // Names that need encoding reach the API as one segment.
    let odd = api.ctl(key, &["devices", "show", PK, "no/such device"]).await;
    assert!(odd.fails().contains("not found (HTTP 404)"), "{}", odd.stderr);
    let rule = api.ctl(key, &["distribute", PK, "--nearest", "acme-sh"]).await;
    assert_eq!(
        rule.fails(),
        "error: nearest access cannot distribute a product alone (HTTP 422)\n"
    );
}

#[tokio::test]
async fn a_missing_key_or_an_unreachable_api_is_explained() {
    let api = Api::start().await;
    let run = api.ctl(None, &["instances", "list"]).await;
    assert_eq!(run.fails(), "error: no API key: pass --api-key or set MERIDIAN_API_KEY\n");
    let empty = api.ctl(Some(""), &["instances", "list"]).await;
    assert!(empty.fails().contains("no API key"), "{}", empty.stderr);

    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let run = api.ctl_with(Some("k1.some-key"), &["instances", "list"], &url).await;
    let stderr = run.fails();
    assert!(
        stderr.starts_with(&format!("error: cannot reach the admin API at {url}: ")),
        "{stderr}"
    );
    assert!(stderr.contains("set --url or MERIDIAN_URL"), "{stderr}");
    // An https URL is refused as a usage error.
    let https =
        api.ctl_with(Some("k1.some-key"), &["instances", "list"], "https://127.0.0.1:1").await;
    assert_eq!(https.output.status.code(), Some(2), "{}", https.stderr);
}

#[tokio::test]
async fn the_api_key_never_appears_in_any_output_or_error() {
    let api = Api::start().await;
    let key = api.tenant("acme", PK).await;
    let wrong = format!("{key}0");
    let unsendable = format!("{key}\nX-Injected: 1");
    api.secrets.lock().unwrap().extend([wrong.clone(), unsendable.clone()]);

    // Help, with the key in the environment.
    api.ctl(Some(&key), &["--help"]).await.ok();
    api.ctl(Some(&key), &["distribute", "--help"]).await.ok();
    // Success, in both formats, with the key from the environment and from the flag.
    api.ctl(Some(&key), &["--output", "json", "accounts", "show"]).await.ok();
    api.ctl(None, &["--api-key", &key, "instances", "list"]).await.ok();
    // Refusals: a wrong key, a key no header can carry, an unreachable API.
    let refused = api.ctl(Some(&wrong), &["products", "list"]).await;
    assert_eq!(refused.fails(), "error: missing or invalid credentials (HTTP 401)\n");
    let run = api.ctl(None, &["--api-key", &unsendable, "products", "list"]).await;
    assert!(run.fails().contains("API key holds characters"), "{}", run.stderr);
    api.ctl_with(Some(&key), &["products", "list"], "http://127.0.0.1:1").await.fails();
    // Another account's resource is a plain 404.
    let other = api.tenant("other", "b13FN5TplKq").await;
    let run = api.ctl(Some(&other), &["products", "show", PK]).await;
    assert!(run.fails().contains("not found (HTTP 404)"), "{}", run.stderr);
}

#[tokio::test]
async fn a_task_whose_record_does_not_decode_is_listed_as_unreadable() {
    let api = Api::start().await;
    let key = api.tenant("acme", PK).await;
    let damaged = br#"{"owner":"acme","state":"Exploded"}"#.to_vec();
    api.plane.registry().store().put("tasks/dt-broken000001", damaged.into()).await.expect("put");

    let run = api.ctl(Some(&key), &["tasks", "list"]).await;
    let stdout = run.ok();
    assert!(stdout.contains("dt-broken000001") && stdout.contains("unreadable"), "{stdout}");
    assert!(run.stderr.contains("does not decode"), "{}", run.stderr);
}
