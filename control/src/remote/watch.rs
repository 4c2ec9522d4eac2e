//! [`RemoteStore::watch_from`](super::RemoteStore): the NDJSON watch stream, reconnected with
//! backoff from the last delivered revision whenever the connection drops, goes silent, or the
//! server restarts.
//!
//! The invariant that makes reconnection exact: the stream only reconnects when every change it
//! has parsed has been delivered, so "the last delivered revision" is also "the last received",
//! and a partial line from the old connection is discarded with it.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use meridian_registry::store::{Change, Revision, StoreError, Watch};

use super::{RemoteError, RemoteStore, status_error, transport};
use crate::internal::wire::{self, WatchLine, code};

/// Longest line accepted. Records are at most a few hundred KiB (a product's TSL model); a
/// line without an end this long means the peer is not the internal API.
const MAX_LINE: usize = 32 * 1024 * 1024;

pub(super) fn watch(store: RemoteStore, after: Revision) -> Watch {
    let backoff = store.inner.options.reconnect_min;
    let follower = Follower {
        store,
        cursor: after,
        body: None,
        buffer: BytesMut::new(),
        pending: VecDeque::new(),
        terminal: None,
        failed: false,
        backoff,
    };
    Box::pin(futures::stream::unfold(follower, Follower::next))
}

/// Why a connection attempt gave no stream.
enum Failure {
    /// Reconnecting cannot help (compacted, token refused, request refused): end the watch.
    Fatal(StoreError),
    /// Try again after a pause.
    Retry(String),
}

struct Follower {
    store: RemoteStore,
    /// Revision of the last change delivered to the caller (or the starting point).
    cursor: Revision,
    /// The open stream, if any.
    body: Option<Incoming>,
    /// Received bytes not yet forming a whole line.
    buffer: BytesMut,
    /// Parsed changes not yet delivered.
    pending: VecDeque<Change>,
    /// An error to deliver once `pending` is empty (the server's final line).
    terminal: Option<StoreError>,
    /// After an error the stream ends.
    failed: bool,
    /// Pause before the next reconnect; doubles per failure, reset by any valid line.
    backoff: Duration,
}

impl Follower {
    async fn next(mut self) -> Option<(Result<Change, StoreError>, Follower)> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(change) = self.pending.pop_front() {
                self.cursor = change.revision;
                return Some((Ok(change), self));
            }
            if let Some(error) = self.terminal.take() {
                self.failed = true;
                return Some((Err(error), self));
            }
            let Some(body) = self.body.as_mut() else {
                match self.connect().await {
                    Ok(body) => self.body = Some(body),
                    Err(Failure::Fatal(error)) => {
                        self.failed = true;
                        return Some((Err(error), self));
                    }
                    Err(Failure::Retry(reason)) => self.pause(&reason).await,
                }
                continue;
            };
            let idle = self.store.inner.options.watch_idle_timeout;
            let outcome = match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => Err(format!("no change or heartbeat for {idle:?}")),
                Ok(None) => Err("the server ended the stream".to_owned()),
                Ok(Some(Err(error))) => Err(transport(error).to_string()),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.buffer.extend_from_slice(&data);
                        self.parse_lines()
                    }
                    // Trailers: nothing to read.
                    Err(_) => Ok(()),
                },
            };
            if let Err(reason) = outcome {
                self.body = None;
                self.buffer.clear();
                // Changes parsed before the failure are still delivered, then we reconnect
                // from the last of them.
                if self.pending.is_empty() && self.terminal.is_none() {
                    self.pause(&reason).await;
                }
            }
        }
    }

    async fn connect(&self) -> Result<Incoming, Failure> {
        let after = self.cursor.to_string();
        let request = self
            .store
            .request(Method::GET, wire::WATCH, Some(("after", &after)), None)
            .map_err(|e| Failure::Fatal(e.into()))?;
        let timeout = self.store.inner.options.request_timeout;
        let response =
            match tokio::time::timeout(timeout, self.store.inner.client.request(request)).await {
                Err(_) => return Err(Failure::Retry(format!("no answer within {timeout:?}"))),
                Ok(Err(error)) => return Err(Failure::Retry(transport(error).to_string())),
                Ok(Ok(response)) => response,
            };
        let status = response.status();
        if status == StatusCode::OK {
            return Ok(response.into_body());
        }
        let body = match tokio::time::timeout(timeout, response.into_body().collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            _ => bytes::Bytes::new(),
        };
        let error = status_error(status, &body);
        match error {
            RemoteError::Status { status, .. } if status >= 500 => {
                Err(Failure::Retry(error.to_string()))
            }
            // 401, 403, 400, 410: the same request will be refused again.
            error => Err(Failure::Fatal(error.into())),
        }
    }

    /// Parses every complete line in the buffer into `pending` (or `terminal`).
    fn parse_lines(&mut self) -> Result<(), String> {
        while let Some(end) = self.buffer.iter().position(|byte| *byte == b'\n') {
            let line = self.buffer.split_to(end + 1);
            let line = &line[..end];
            if line.is_empty() {
                continue;
            }
            // Never echo the line: it may hold a sealed secret.
            let parsed: WatchLine = serde_json::from_slice(line)
                .map_err(|e| format!("unreadable watch line ({} bytes): {e}", line.len()))?;
            self.backoff = self.store.inner.options.reconnect_min;
            match parsed {
                WatchLine::Change { revision, key, value } => {
                    let last = self.pending.back().map_or(self.cursor, |change| change.revision);
                    // The server sends each revision once per stream; never re-deliver one.
                    if revision > last {
                        self.pending.push_back(Change { revision, key, value: value.map(|v| v.0) });
                    }
                }
                WatchLine::Heartbeat { .. } => {}
                WatchLine::Error { error, message, requested, compacted } => {
                    if error == code::COMPACTED {
                        self.terminal = Some(StoreError::Compacted {
                            requested: requested.unwrap_or(self.cursor),
                            compacted: compacted.unwrap_or_default(),
                        });
                        self.body = None;
                        self.buffer.clear();
                        return Ok(());
                    }
                    return Err(format!("server error: {error}: {}", message.unwrap_or_default()));
                }
            }
        }
        if self.buffer.remaining() > MAX_LINE {
            return Err(format!("a watch line longer than {MAX_LINE} bytes"));
        }
        Ok(())
    }

    /// Waits before reconnecting: a random point in the upper half of the current backoff, so
    /// a fleet of nodes losing the control plane together does not reconnect together.
    async fn pause(&mut self, reason: &str) {
        let options = &self.store.inner.options;
        let half = self.backoff / 2;
        let jitter = getrandom::u64().unwrap_or(0) % (half.as_millis() as u64 + 1);
        let delay = half + Duration::from_millis(jitter);
        tracing::warn!(
            url = %self.store.inner.base,
            after = self.cursor,
            reason,
            retry_in = ?delay,
            "registry watch interrupted; reconnecting"
        );
        tokio::time::sleep(delay).await;
        self.backoff = (self.backoff * 2).min(options.reconnect_max);
    }
}
