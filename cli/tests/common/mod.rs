//! What the daemon tests share: `meridian` processes whose logs are scanned, free ports, the
//! admin API over plain HTTP, and raw device CONNECTs.

// Test helpers panic on failure by design; not every test file uses every helper.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use meridian_registry::signature::{SdkShape, sign_connect};
use meridian_tests::raw::{self, ConnectReturnCode as Code};

/// A daemon process whose log is scanned for the lines tests wait on.
pub struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    pub fn start(args: &[&str], config: &Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(args)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("MERIDIAN_SECRET_KEY")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meridian");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        // Every line also goes to `{config}.log`, for reading after a failure.
        let mut log = std::fs::File::create(config.with_extension("log")).unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                let _ = tx.send(line);
            }
        });
        Daemon { child, lines }
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_for(&self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("no {needle:?} in the log"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn terminate(mut self) {
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Daemon {
    /// A failing test must not leave daemons behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The `name=value` address in a log line.
pub fn field(line: &str, name: &str) -> SocketAddr {
    let value = line.split(&format!("{name}=")).nth(1).unwrap();
    value.split_whitespace().next().unwrap().parse().unwrap()
}

/// The output of `meridian generate-config` (with `args`), paths under `data/`.
pub fn generated_config(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .arg("generate-config")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().replace("../data/", "data/")
}

/// One admin API request with the API key in `key_file`; returns (status, body).
pub fn api(admin: u16, key_file: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let key = std::fs::read_to_string(key_file).unwrap();
    let mut stream = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    let content_type = if body.is_empty() { "" } else { "Content-Type: application/json\r\n" };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        key.trim(),
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

/// A raw CONNECT of device `dev-{n:05}` of `product` (secret `secret-{n:05}`); returns the
/// CONNACK code and the open stream.
pub fn connect(broker: SocketAddr, product: &str, n: usize) -> (Code, TcpStream) {
    let name = format!("dev-{n:05}");
    let signed = sign_connect(SdkShape::CSdk, product, &name, &format!("secret-{n:05}"), None);
    let login = Some((signed.username.as_str(), signed.password.as_str()));
    let mut stream = TcpStream::connect(broker).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let connack =
        raw::blocking::handshake(&mut stream, &raw::connect_packet(&signed.client_id, login, 60));
    (connack.unwrap().code, stream)
}

/// Connects device `n` until the broker accepts it (its view may not have the device yet).
pub fn accepted(broker: SocketAddr, product: &str, n: usize) -> TcpStream {
    loop {
        let (code, stream) = connect(broker, product, n);
        if code == Code::Success {
            return stream;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The JSON body creating devices `dev-{from}`..`dev-{to}` with their known secrets.
pub fn devices_body(range: std::ops::Range<usize>) -> String {
    let devices: Vec<String> = range
        .map(|n| format!(r#"{{"deviceName":"dev-{n:05}","deviceSecret":"secret-{n:05}"}}"#))
        .collect();
    format!(r#"{{"devices":[{}]}}"#, devices.join(","))
}

/// The `"id":"…"` of a JSON reply.
pub fn id_of(reply: &str) -> String {
    reply.split("\"id\":\"").nth(1).unwrap().split('"').next().unwrap().to_owned()
}
