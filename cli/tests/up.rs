//! The `meridian` binary end to end: the documented default parses, and `meridian up` seeds the
//! store, serves, and stops cleanly on SIGTERM, twice over the same data.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use meridian_registry::store::{RedbStore, Store};

fn meridian() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
}

/// Starts `meridian up` and returns once it logged that it is ready.
fn start_up(config: &std::path::Path) -> Child {
    let mut child = meridian()
        .args(["up", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env_remove("MERIDIAN_SECRET_KEY")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meridian up");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines.next().expect("meridian up exited before ready").expect("read stderr");
        if line.contains("meridian up: ready") {
            break;
        }
    }
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

fn terminate(mut child: Child) {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    assert!(status.expect("run kill").success());
    let exit = child.wait().expect("wait for meridian up");
    assert!(exit.success(), "meridian up exited with {exit}");
}

#[test]
fn generate_config_prints_the_documented_default() {
    let output = meridian().arg("generate-config").output().expect("run generate-config");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("[store]") && text.contains("[[regions]]"), "{text}");
    assert!(text.lines().filter(|l| l.starts_with('#')).count() > 5, "documented with comments");
}

#[tokio::test]
async fn up_seeds_the_store_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meridian.toml");
    let text = String::from_utf8(meridian().arg("generate-config").output().unwrap().stdout)
        .unwrap()
        .replace("../data/", "data/");
    std::fs::write(&config, text).unwrap();

    terminate(start_up(&config));
    let key_file = dir.path().join("data/secret.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "sealing key readable by the owner only");
    }

    // A second start reuses the key and finds everything in place.
    terminate(start_up(&config));
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);

    let store = RedbStore::open(dir.path().join("data/meridian.redb")).unwrap();
    let regions = store.scan_prefix("regions/").await.unwrap().entries;
    let instances = store.scan_prefix("instances/").await.unwrap().entries;
    assert_eq!(regions.len(), 3);
    assert_eq!(instances.len(), 3);
    assert!(store.get("accounts/demo").await.unwrap().is_some());
}

#[test]
fn up_refuses_a_broken_config_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[store]\npath = 'x'\n").unwrap();
    let output = meridian().args(["up", "--config"]).arg(&config).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("secrets"), "names the missing section: {stderr}");
}
