//! A TCP proxy on loopback that a test can cut: while cut, every connection through it is
//! dropped and new ones are closed as soon as they are accepted, as when a network link is down.
//! It stands between a NATS leaf node and its hub (`crate::nats::LeafNode`), but forwards any
//! TCP stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The link's state, watched by the accept loop and every forwarding task.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Link {
    Up,
    Cut,
    /// The proxy was dropped: everything ends.
    Gone,
}

pub struct CuttableProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    link: watch::Sender<Link>,
    /// Connections currently forwarded.
    open: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl CuttableProxy {
    /// Listens on 127.0.0.1 (a port the kernel picks) and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (link, _) = watch::channel(Link::Up);
        let open = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(accept_loop(listener, upstream, link.subscribe(), open.clone()));
        CuttableProxy { addr, upstream, link, open, accept }
    }

    /// Where clients connect to reach the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where connections are forwarded.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Drops every connection through the proxy and closes new ones at once.
    pub fn cut(&self) {
        self.link.send_replace(Link::Cut);
    }

    /// Forwards new connections again (dropped ones stay dropped: the client reconnects).
    pub fn heal(&self) {
        self.link.send_replace(Link::Up);
    }

    pub fn is_cut(&self) -> bool {
        *self.link.borrow() == Link::Cut
    }

    /// Connections being forwarded now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.link.send_replace(Link::Gone);
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mut link: watch::Receiver<Link>,
    open: Arc<AtomicUsize>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = link.changed() => {
                if changed.is_err() || *link.borrow() == Link::Gone {
                    return;
                }
                continue;
            }
        };
        let Ok((client, _)) = accepted else {
            // A failed accept (e.g. the peer reset before we took it) concerns that one
            // connection only.
            continue;
        };
        match *link.borrow() {
            Link::Up => {}
            // Closing at once is what the client sees of a link that is down; it retries.
            Link::Cut => continue,
            Link::Gone => return,
        }
        tokio::spawn(forward(client, upstream, link.clone(), open.clone()));
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut link: watch::Receiver<Link>,
    open: Arc<AtomicUsize>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        // The upstream is down (a killed server): the client sees its connection close.
        return;
    };
    open.fetch_add(1, Ordering::SeqCst);
    tokio::select! {
        // Either side closing, or an error, ends the connection.
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = link.wait_for(|link| *link != Link::Up) => {}
    }
    open.fetch_sub(1, Ordering::SeqCst);
    // Dropping both streams closes them; a cut closes them with nothing more forwarded.
}
