//! The load-test peer of the bootstrap edge: the same hyper server set-up (HTTP/1.1 keep-alive,
//! header read timeout, flattened writes, `TCP_NODELAY`, multi-threaded tokio) answering every
//! request with a fixed bootstrap body after reading the request body, and doing nothing else.
//! The gap between this and the edge is what the edge's own work costs. See
//! `bench/bootstrap-http.sh`.
//!
//! `cargo run --release -p meridian-edge --example bare_hyper -- 127.0.0.1:18081`

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

const BODY: &[u8] = br#"{"code":200,"data":{"resources":{"mqtt":{"host":"fra.mqtt.example","port":1883}}},"message":"success"}"#;

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18081".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    println!("bare hyper listening on {addr}");
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_header_size(8 * 1024)
        .keep_alive(true)
        .writev(false);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let http = http.clone();
        tokio::spawn(async move {
            let _ = http.serve_connection(TokioIo::new(stream), service_fn(answer)).await;
        });
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body as any real endpoint must, so keep-alive works the same way.
    let _ = request.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json;charset=utf-8"));
    Ok(response)
}
