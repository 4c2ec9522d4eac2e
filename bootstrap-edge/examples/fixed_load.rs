//! Sends an exact number of bootstrap requests and waits for every answer, for counting a
//! server's instructions per request under `valgrind --tool=callgrind` (deterministic, unlike
//! requests per second on a shared machine). The requests are `bench/bootstrap-http.lua`'s: the
//! C SDK's form for a random device of the `edge_load` fleet (about 5 % unknown) with an
//! `X-Forwarded-For` from several continents, drawn from a fixed seed so every run sends the
//! same ones. Each connection keeps one request in flight, as wrk does.
//!
//! `cargo run --release -p meridian-edge --example fixed_load -- 127.0.0.1:18080 20000 8 100000`
//! (address, requests, connections, fleet size). The callgrind procedure is in
//! `docs/BENCHMARKS.md`.

use std::collections::BTreeMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: [&str; 8] = [
    "81.2.69.160",    // London
    "80.156.0.1",     // Germany
    "8.8.8.8",        // USA
    "202.96.209.133", // Shanghai
    "1.0.0.1",        // Australia
    "200.160.2.3",    // Brazil
    "2003::1",        // Germany, IPv6
    "10.20.30.40",    // private: default region
];

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18080".to_owned());
    let requests: u64 = args.next().map_or(20_000, |n| n.parse().expect("request count"));
    let connections: u64 = args.next().map_or(8, |n| n.parse().expect("connection count"));
    let devices: u64 = args.next().map_or(100_000, |n| n.parse().expect("device count"));

    let mut tasks = Vec::new();
    for connection in 0..connections {
        // Connection `c` sends requests c, c + connections, …: all of them, none twice.
        let share = (connection..requests).step_by(usize::try_from(connections).expect("small"));
        let stream = TcpStream::connect(&addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let requests: Vec<u64> = share.collect();
        tasks.push(tokio::spawn(exchange(stream, requests, devices)));
    }
    let mut statuses = BTreeMap::new();
    for task in tasks {
        for (status, count) in task.await.expect("connection task") {
            *statuses.entry(status).or_insert(0u64) += count;
        }
    }
    println!("{requests} requests over {connections} connections: statuses {statuses:?}");
}

/// Sends `requests` (their numbers pick the device and client) one after another; returns how
/// many answers had each status.
async fn exchange(mut stream: TcpStream, requests: Vec<u64>, devices: u64) -> BTreeMap<u16, u64> {
    let mut statuses = BTreeMap::new();
    let mut buffer = Vec::with_capacity(4096);
    for number in requests {
        stream.write_all(request(number, devices).as_bytes()).await.expect("send");
        let status = response(&mut stream, &mut buffer).await;
        *statuses.entry(status).or_insert(0) += 1;
    }
    statuses
}

/// Request `number` of the fixed sequence.
fn request(number: u64, devices: u64) -> String {
    let random = splitmix64(number);
    let device = random % (devices * 105 / 100);
    let client = CLIENTS[usize::try_from((random >> 32) % 8).expect("small")];
    let (pk, dn) = (format!("loadtest{:03}", device % 10), format!("dev-{device:06}"));
    let body = format!(
        "productKey={pk}&deviceName={dn}&clientId={pk}.{dn}&timestamp=2524608000000&resources=mqtt"
    );
    format!(
        "POST /auth/bootstrap HTTP/1.1\r\nHost: iot-auth-global.example.com\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nX-Forwarded-For: {client}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads one response (head, then `Content-Length` bytes of body); returns its status.
/// `buffer` carries bytes read past it over to the next call.
async fn response(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> u16 {
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        read_more(stream, buffer).await;
    };
    let head = std::str::from_utf8(&buffer[..head_end]).expect("ASCII head");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
        })
        .expect("Content-Length");
    while buffer.len() < head_end + length {
        read_more(stream, buffer).await;
    }
    buffer.drain(..head_end + length);
    status
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let read = stream.read(&mut chunk).await.expect("receive");
    assert!(read > 0, "server closed the connection");
    buffer.extend_from_slice(&chunk[..read]);
}

/// SplitMix64: a fixed, dependency-free stream of random numbers.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
