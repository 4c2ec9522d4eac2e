//! The scale-out [`Store`]: a NATS JetStream key/value bucket (`[store] backend = "nats"`).
//!
//! The bucket is an ordinary JetStream KV bucket (stream `KV_{bucket}`, subjects
//! `$KV.{bucket}.>`, one value per key), so `nats kv get meridian …` reads what Meridian wrote.
//! It is created with atomic batch publish allowed, which [`Store::batch`] needs.
//!
//! | [`Store`]               | here                                                          |
//! |-------------------------|---------------------------------------------------------------|
//! | [`Revision`]            | the stream sequence of the write                              |
//! | [`Store::get`]          | last message on the key's subject (`STREAM.MSG.GET`, leader)  |
//! | [`Store::scan_prefix`]  | ordered consumer, last message per subject, until caught up   |
//! | [`Store::batch`]        | one publish, or an atomic batch of at most 1,000 messages     |
//! | [`Expect`]              | `Nats-Expected-Last-Subject-Sequence` on the message          |
//! | [`Store::watch_from`]   | ordered consumer from `after + 1`                             |
//! | [`Store::compact`]      | nothing: the bucket keeps one value per key by itself         |
//!
//! Where this is weaker than the embedded store (the trait's docs list what every consumer
//! must tolerate): the feed has gaps (a superseded value is gone from the stream, so a watcher
//! from an old revision sees each key's newest value once, not every intermediate one), a
//! delete of a missing key still writes a delete marker, and a store reading from a regional
//! mirror ([`NatsRead`]) is not read-your-writes: its reads lag the home cluster's writes.
//!
//! Keys map to subjects one to one: `/` separates subject tokens (so a prefix scan is a subject
//! filter), and the two characters a token would misread are escaped (`.` as `=2E`, `=` as
//! `=3D`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{HeaderMap, HeaderValue};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use jetstream_extra::batch_publish::BatchPublishExt;
use serde::Deserialize;

use super::{Change, Entry, Expect, Op, Revision, Snapshot, Store, StoreError, Watch};

/// The most messages JetStream commits in one atomic batch (a server limit).
pub const MAX_ATOMIC_BATCH: usize = 1000;

/// The smallest server `max_payload` every record fits in: a distribution task of 10,000
/// devices is one record of about 1.3 MB (the server default is 1 MB).
pub const MIN_MAX_PAYLOAD: usize = 4 * 1024 * 1024;

const OPERATION: &str = "KV-Operation";
const BATCH_ID: &str = "Nats-Batch-Id";
const BATCH_COMMIT: &str = "Nats-Batch-Commit";
const EXPECTED_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
/// JetStream's "wrong last sequence": an expected sequence did not hold.
const WRONG_LAST_SEQUENCE: usize = 10071;
/// How many point reads [`Store::get_many`] keeps in flight.
const PARALLEL_GETS: usize = 64;
/// How often a batch refused because the stream has too many batches in flight is retried.
const INFLIGHT_RETRIES: u32 = 20;

/// `[store.nats]`: where the bucket is and how to reach it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Seed servers, e.g. `["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]`.
    pub servers: Vec<String>,
    /// The KV bucket (stream `KV_{bucket}`).
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// Replicas of the bucket's stream when it is created (3 in a cluster).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// The JetStream domain holding the bucket, when clients connect through a leaf node of
    /// another domain (a region's leaf reaches the home cluster as `$JS.{domain}.API`).
    #[serde(default)]
    pub domain: Option<String>,
    /// A `.creds` file (JWT and NKey seed) for decentralised auth.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// A file holding an NKey seed (`SU…`), for NKey auth without JWTs.
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: Option<NatsTls>,
    /// Read from a mirror of the bucket in this process's region instead of the home cluster.
    #[serde(default)]
    pub read: Option<NatsRead>,
    /// How long one JetStream request may take before it fails.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// TLS towards the NATS servers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTls {
    /// CA certificates (PEM) that sign the servers' certificates.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), when the servers verify clients.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// `[store.nats.read]`: a region's local, read-only copy of the bucket. Writes still go to the
/// home cluster; reads, scans and the feed come from the mirror, so the region keeps serving
/// the last state it saw while its link to the home cluster is down.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsRead {
    /// The JetStream domain of the region's leaf node.
    pub domain: String,
    /// The mirror stream there; created (mirroring the home bucket) when missing.
    pub stream: String,
}

fn default_bucket() -> String {
    "meridian".into()
}

fn default_replicas() -> usize {
    1
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(5)
}

/// A [`Store`] on a JetStream KV bucket. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct JetStreamStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: NatsConfig,
    /// The JetStream API of the domain holding the bucket: every write goes here.
    home: jetstream::Context,
    /// The stream reads come from: the bucket itself, or the region's mirror of it.
    reader: stream::Stream<()>,
    /// `$KV.{bucket}.`
    prefix: String,
}

impl JetStreamStore {
    /// Connects to the servers. It does not create the bucket (see [`JetStreamStore::provision`]),
    /// so a daemon that only reads can start while the home cluster is out of reach; it creates
    /// the regional mirror it reads from when that is missing.
    pub async fn connect(config: NatsConfig) -> Result<JetStreamStore, StoreError> {
        if config.servers.is_empty() {
            return Err(StoreError::Backend("store.nats.servers is empty".into()));
        }
        let mut options = async_nats::ConnectOptions::new()
            .name("meridian")
            .request_timeout(Some(config.request_timeout))
            // Daemons outlive any one server: keep reconnecting for as long as they run.
            .max_reconnects(None);
        if let Some(path) = &config.credentials_file {
            options = options.credentials_file(path).await.map_err(|error| {
                StoreError::Backend(format!("reading credentials {}: {error}", path.display()))
            })?;
        }
        if let Some(path) = &config.nkey_seed_file {
            let seed = std::fs::read_to_string(path).map_err(|error| {
                StoreError::Backend(format!("reading NKey seed {}: {error}", path.display()))
            })?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let Some(tls) = &config.tls {
            options = options.require_tls(true);
            if let Some(ca) = &tls.ca_file {
                options = options.add_root_certificates(ca.clone());
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(cert), Some(key)) => {
                    options = options.add_client_certificate(cert.clone(), key.clone());
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Backend(
                        "store.nats.tls needs both cert_file and key_file, or neither".into(),
                    ));
                }
            }
        }
        let client = options
            .connect(config.servers.as_slice())
            .await
            .map_err(|error| StoreError::Backend(format!("connecting to NATS: {error}")))?;
        let max_payload = client.server_info().max_payload;
        if max_payload < MIN_MAX_PAYLOAD {
            tracing::warn!(
                max_payload,
                needed = MIN_MAX_PAYLOAD,
                "the NATS servers' max_payload is too small for a 10,000-device distribution task \
                 record; set max_payload: 8MB in their configuration"
            );
        }
        let home = match &config.domain {
            Some(domain) => jetstream::with_domain(client.clone(), domain),
            None => jetstream::new(client.clone()),
        };
        let reader = match &config.read {
            None => home.get_stream_no_info(stream_name(&config.bucket)).await.map_err(backend)?,
            Some(read) => {
                let local = jetstream::with_domain(client.clone(), &read.domain);
                ensure_mirror(&local, &config, read).await?;
                local.get_stream_no_info(&read.stream).await.map_err(backend)?
            }
        };
        let prefix = format!("$KV.{}.", config.bucket);
        Ok(JetStreamStore { inner: Arc::new(Inner { config, home, reader, prefix }) })
    }

    /// Creates the bucket (or brings an existing one's settings up to date): the control plane
    /// does this at start; readers only connect.
    pub async fn provision(&self) -> Result<(), StoreError> {
        let config = &self.inner.config;
        let stream = stream::Config {
            name: stream_name(&config.bucket),
            description: Some("Meridian registry".into()),
            subjects: vec![format!("$KV.{}.>", config.bucket)],
            max_messages_per_subject: 1,
            num_replicas: config.replicas.max(1),
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            allow_atomic_publish: true,
            ..Default::default()
        };
        self.inner.home.create_or_update_stream(stream).await.map_err(backend)?;
        Ok(())
    }

    fn subject(&self, key: &str) -> String {
        format!("{}{}", self.inner.prefix, encode_key(key))
    }

    /// The subject filter that covers every key starting with `prefix` (a superset when the
    /// prefix ends inside a segment; the caller filters).
    fn filter(&self, prefix: &str) -> String {
        match prefix.rfind('/') {
            Some(end) => format!("{}{}.>", self.inner.prefix, encode_key(&prefix[..end])),
            None => format!("{}>", self.inner.prefix),
        }
    }

    /// The key a feed message is about, and its value (`None` for a delete marker).
    fn decode(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Option<(String, Option<Bytes>)> {
        let key = decode_key(subject.strip_prefix(self.inner.prefix.as_str())?)?;
        let deleted = headers
            .and_then(|headers| headers.get(OPERATION))
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        Some((key, (!deleted).then_some(payload)))
    }

    /// Records `message` in a scan's result when its key is under `prefix`.
    fn keep_newest(
        &self,
        newest: &mut std::collections::BTreeMap<String, Option<(Revision, Bytes)>>,
        prefix: &str,
        message: &jetstream::Message,
        sequence: Revision,
    ) {
        let decoded =
            self.decode(&message.subject, message.headers.as_ref(), message.payload.clone());
        if let Some((key, value)) = decoded
            && key.starts_with(prefix)
        {
            newest.insert(key, value.map(|value| (sequence, value)));
        }
    }

    /// The last message on `key`'s subject: its sequence and whether it is a live value.
    async fn last(&self, key: &str) -> Result<Option<(Revision, Option<Bytes>)>, StoreError> {
        let subject = self.subject(key);
        match self.inner.reader.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => {
                let (_, value) = self
                    .decode(&message.subject, Some(&message.headers), message.payload)
                    .ok_or_else(|| StoreError::Backend(format!("unexpected subject {subject}")))?;
                Ok(Some((message.sequence, value)))
            }
            Err(error) if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(error) => Err(backend(error)),
        }
    }

    /// The expected-sequence header each op needs, checking `Absent` against what is there
    /// (a deleted key's marker has a sequence of its own, which `Absent` must expect).
    async fn expectation(&self, op: &Op) -> Result<Option<u64>, StoreError> {
        match op.expect {
            Expect::Any => Ok(None),
            Expect::Revision(revision) => Ok(Some(revision)),
            Expect::Absent => match self.last(&op.key).await? {
                None => Ok(Some(0)),
                Some((marker, None)) => Ok(Some(marker)),
                Some((found, Some(_))) => Err(StoreError::Conflict {
                    key: op.key.clone(),
                    expected: Expect::Absent,
                    found: Some(found),
                }),
            },
        }
    }

    /// After the server refused a batch for a wrong expected sequence: which op did not hold.
    async fn conflict(&self, ops: &[Op]) -> StoreError {
        for op in ops.iter().filter(|op| op.expect != Expect::Any) {
            let found = match self.last(&op.key).await {
                Ok(last) => last.and_then(|(revision, value)| value.map(|_| revision)),
                Err(error) => return error,
            };
            let holds = match op.expect {
                Expect::Any => true,
                Expect::Absent => found.is_none(),
                Expect::Revision(expected) => found == Some(expected),
            };
            if !holds {
                return StoreError::Conflict { key: op.key.clone(), expected: op.expect, found };
            }
        }
        // Every precondition holds now: another writer changed and restored a key between the
        // refusal and this look. Report the first expectation; the caller re-reads anyway.
        let op = ops.iter().find(|op| op.expect != Expect::Any);
        StoreError::Conflict {
            key: op.map(|op| op.key.clone()).unwrap_or_default(),
            expected: op.map_or(Expect::Any, |op| op.expect),
            found: None,
        }
    }

    fn message(&self, op: &Op, expected: Option<u64>) -> jetstream::message::OutboundMessage {
        let mut headers = HeaderMap::new();
        if let Some(sequence) = expected {
            headers.insert(
                EXPECTED_SUBJECT_SEQUENCE,
                HeaderValue::from(sequence.to_string().as_str()),
            );
        }
        if op.value.is_none() {
            headers.insert(OPERATION, "DEL");
        }
        jetstream::message::OutboundMessage {
            subject: self.subject(&op.key).into(),
            payload: op.value.clone().unwrap_or_default(),
            headers: Some(headers),
        }
    }

    async fn publish_one(
        &self,
        message: jetstream::message::OutboundMessage,
    ) -> Result<Revision, PublishFailure> {
        let headers = message.headers.unwrap_or_default();
        let ack = self
            .inner
            .home
            .publish_with_headers(message.subject, headers, message.payload)
            .await
            .map_err(|error| PublishFailure::Other(error.to_string()))?;
        match ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(error)
                if error.kind() == jetstream::context::PublishErrorKind::WrongLastSequence =>
            {
                Err(PublishFailure::WrongSequence)
            }
            Err(error) => Err(PublishFailure::Other(error.to_string())),
        }
    }

    async fn publish_batch(
        &self,
        mut messages: Vec<jetstream::message::OutboundMessage>,
    ) -> Result<Revision, PublishFailure> {
        let last = messages.pop().ok_or_else(|| PublishFailure::Other("empty batch".into()))?;
        let mut batch =
            self.inner.home.batch_publish().timeout(self.inner.config.request_timeout).build();
        for message in messages {
            batch.add_message(message).await.map_err(batch_failure)?;
        }
        batch.commit_message(last).await.map(|ack| ack.sequence).map_err(batch_failure)
    }
}

/// The batch a stored message opens or continues (its ID and the message's sequence), unless it
/// is a batch's last message or in no batch.
fn open_batch_of(headers: Option<&HeaderMap>, sequence: Revision) -> Option<(String, Revision)> {
    let headers = headers?;
    let batch = headers.get(BATCH_ID)?;
    headers.get(BATCH_COMMIT).is_none().then(|| (batch.as_str().to_owned(), sequence))
}

/// Why a publish failed, before it is turned into a [`StoreError`].
enum PublishFailure {
    WrongSequence,
    /// The stream has too many batches in flight; worth retrying.
    Busy,
    Other(String),
}

fn batch_failure(error: jetstream_extra::batch_publish::BatchPublishError) -> PublishFailure {
    use jetstream_extra::batch_publish::BatchPublishErrorKind as Kind;
    if error.kind() == Kind::BatchPublishTooManyInflight {
        return PublishFailure::Busy;
    }
    let wrong_sequence = std::error::Error::source(&error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|api| {
            api.code() == WRONG_LAST_SEQUENCE || api.error_code().0 == WRONG_LAST_SEQUENCE as u64
        });
    if wrong_sequence {
        PublishFailure::WrongSequence
    } else {
        PublishFailure::Other(error.to_string())
    }
}

#[async_trait]
impl Store for JetStreamStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        super::validate_key(key)?;
        Ok(self.last(key).await?.and_then(|(revision, value)| {
            value.map(|value| Entry { key: key.to_owned(), value, revision })
        }))
    }

    /// Point reads in parallel: JetStream has no multi-key read, so unlike the embedded store
    /// the values are not read as of one revision.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, StoreError> {
        let keys = keys.to_vec();
        futures::stream::iter(keys)
            .map(|key| {
                let store = self.clone();
                async move { store.get(&key).await }
            })
            .buffered(PARALLEL_GETS)
            .try_collect()
            .await
    }

    /// Reads every message under the prefix in stream order through one ordered consumer, until
    /// it has caught up, keeping each key's newest. The bucket holds one message per key, so this
    /// is the prefix's live data plus delete markers. Reading in stream order (not "last per
    /// subject", which the server computes subject by subject while writes land) makes the result
    /// the prefix exactly as of the newest message read: an atomic batch is in it whole or not at
    /// all.
    async fn scan_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let before = self.revision().await?;
        let consumer =
            self.ordered_consumer(self.filter(prefix), consumer::DeliverPolicy::All).await?;
        let mut snapshot = Snapshot { entries: Vec::new(), revision: before };
        if consumer.cached_info().num_pending == 0 {
            return Ok(snapshot);
        }
        let mut messages = consumer.messages().await.map_err(backend)?;
        let mut newest = std::collections::BTreeMap::new();
        // A batch is stored message by message, so "caught up" can fall inside one: its stored
        // messages carry their batch's ID, and the last one its commit marker.
        let mut open_batch: Option<(String, Revision)> = None;
        while let Some(message) = messages.next().await {
            let message = message.map_err(backend)?;
            let info = message.info().map_err(|error| StoreError::Backend(error.to_string()))?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            snapshot.revision = snapshot.revision.max(sequence);
            open_batch = open_batch_of(message.headers.as_ref(), sequence);
            self.keep_newest(&mut newest, prefix, &message, sequence);
            if pending == 0 {
                break;
            }
        }
        if let Some((batch, sequence)) = open_batch {
            // The batch's other messages may be under other prefixes: read on, over the whole
            // bucket, to its end.
            let mut rest = self.consumer_after(sequence).await?;
            while let Some(message) = rest.next().await {
                let message = message.map_err(backend)?;
                let Ok(info) = message.info() else { continue };
                let sequence = info.stream_sequence;
                let member = message.headers.as_ref().and_then(|h| h.get(BATCH_ID));
                if member.map(|id| id.as_str()) != Some(batch.as_str()) {
                    // Batches are stored contiguously: past its last message (or past messages
                    // of it a later write superseded), the batch is whole.
                    break;
                }
                snapshot.revision = snapshot.revision.max(sequence);
                self.keep_newest(&mut newest, prefix, &message, sequence);
                if open_batch_of(message.headers.as_ref(), sequence).is_none() {
                    break;
                }
            }
        }
        snapshot.entries = newest
            .into_iter()
            .filter_map(|(key, value)| {
                value.map(|(revision, value)| Entry { key, value, revision })
            })
            .collect();
        Ok(snapshot)
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        super::check_batch(&ops)?;
        if ops.is_empty() {
            return self.revision().await;
        }
        if ops.len() > MAX_ATOMIC_BATCH {
            return Err(StoreError::BatchTooLarge { ops: ops.len(), max: MAX_ATOMIC_BATCH });
        }
        // `Absent` needs a read per op (see `expectation`); a distribution step has hundreds.
        let expectations: Vec<Option<u64>> = futures::stream::iter(ops.iter().cloned())
            .map(|op| {
                let store = self.clone();
                async move { store.expectation(&op).await }
            })
            .buffered(PARALLEL_GETS)
            .try_collect()
            .await?;
        let messages: Vec<_> =
            ops.iter().zip(expectations).map(|(op, expected)| self.message(op, expected)).collect();
        let mut attempt = 0;
        loop {
            let outcome = match messages.as_slice() {
                [one] => self.publish_one(clone_message(one)).await,
                many => self.publish_batch(many.iter().map(clone_message).collect()).await,
            };
            match outcome {
                Ok(revision) => return Ok(revision),
                Err(PublishFailure::WrongSequence) => return Err(self.conflict(&ops).await),
                Err(PublishFailure::Busy) if attempt < INFLIGHT_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                }
                Err(PublishFailure::Busy) => {
                    return Err(StoreError::Backend(
                        "too many batches in flight on the bucket".into(),
                    ));
                }
                Err(PublishFailure::Other(error)) => return Err(StoreError::Backend(error)),
            }
        }
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let info = self.inner.reader.get_info().await.map_err(backend)?;
        Ok(info.state.last_sequence)
    }

    /// Follows the bucket through an ordered consumer. When the consumer fails (a server
    /// restarted, the connection moved to another node, heartbeats stopped), a new one starts
    /// right after the last change handed out, so the feed carries on without a gap or a
    /// repeat; the feed itself never fails or ends.
    fn watch_from(&self, after: Revision) -> Watch {
        let state = Follow { store: self.clone(), after, messages: None, failures: 0 };
        Box::pin(futures::stream::unfold(state, Follow::next))
    }

    /// Nothing to do: the bucket keeps only each key's newest value, so it never grows past
    /// the live data, and no watcher is ever refused for being too far behind.
    async fn compact(&self, _through: Revision) -> Result<(), StoreError> {
        Ok(())
    }

    fn max_batch(&self) -> usize {
        MAX_ATOMIC_BATCH
    }
}

/// Where one feed is: the last change handed out, and the consumer delivering after it.
struct Follow {
    store: JetStreamStore,
    after: Revision,
    messages: Option<consumer::push::Ordered>,
    /// Consecutive failures, for the back-off before the next consumer.
    failures: u32,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Change, StoreError>, Follow)> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                if self.failures > 0 {
                    let backoff = Duration::from_millis(100 << self.failures.min(4));
                    tokio::time::sleep(backoff).await;
                }
                match self.store.consumer_after(self.after).await {
                    Ok(messages) => self.messages = Some(messages),
                    Err(error) => {
                        self.failures += 1;
                        tracing::warn!(%error, after = self.after, "registry feed: cannot start a consumer; retrying");
                    }
                }
                continue;
            };
            let message = match messages.next().await {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::info!(%error, after = self.after, "registry feed: consumer failed; resuming");
                    self.messages = None;
                    self.failures += 1;
                    continue;
                }
                None => {
                    self.messages = None;
                    self.failures += 1;
                    continue;
                }
            };
            let Ok(info) = message.info() else { continue };
            let revision = info.stream_sequence;
            if revision <= self.after {
                // A consumer restarted by the client library may repeat what was handed out.
                continue;
            }
            self.failures = 0;
            self.after = revision;
            let decoded = self.store.decode(
                &message.subject,
                message.headers.as_ref(),
                message.payload.clone(),
            );
            if let Some((key, value)) = decoded {
                return Some((Ok(Change { revision, key, value }), self));
            }
        }
    }
}

impl JetStreamStore {
    /// An ordered consumer over the whole bucket, delivering from `after + 1`.
    async fn consumer_after(&self, after: Revision) -> Result<consumer::push::Ordered, StoreError> {
        let deliver_policy = match after {
            0 => consumer::DeliverPolicy::All,
            after => consumer::DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
        };
        let filter = format!("{}>", self.inner.prefix);
        self.ordered_consumer(filter, deliver_policy).await?.messages().await.map_err(backend)
    }

    /// An ordered (ephemeral, flow-controlled, self-healing) consumer on the stream reads come
    /// from: what scans and the feed both read through.
    async fn ordered_consumer(
        &self,
        filter_subject: String,
        deliver_policy: consumer::DeliverPolicy,
    ) -> Result<jetstream::consumer::Consumer<consumer::push::OrderedConfig>, StoreError> {
        self.inner
            .reader
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.inner.home.client().new_inbox(),
                description: Some("meridian".into()),
                filter_subject,
                deliver_policy,
                replay_policy: consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(backend)
    }
}

fn clone_message(
    message: &jetstream::message::OutboundMessage,
) -> jetstream::message::OutboundMessage {
    jetstream::message::OutboundMessage {
        subject: message.subject.clone(),
        payload: message.payload.clone(),
        headers: message.headers.clone(),
    }
}

/// Creates the region's mirror of the bucket if it does not exist yet. Mirrors keep the
/// origin's sequence numbers, so revisions read there are the home cluster's.
async fn ensure_mirror(
    local: &jetstream::Context,
    config: &NatsConfig,
    read: &NatsRead,
) -> Result<(), StoreError> {
    if local.get_stream(&read.stream).await.is_ok() {
        return Ok(());
    }
    let external = config.domain.as_ref().map(|domain| stream::External {
        api_prefix: format!("$JS.{domain}.API"),
        delivery_prefix: None,
    });
    let mirror = stream::Config {
        name: read.stream.clone(),
        description: Some(format!(
            "Meridian registry, mirrored from {}",
            stream_name(&config.bucket)
        )),
        mirror: Some(stream::Source {
            name: stream_name(&config.bucket),
            external,
            ..Default::default()
        }),
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        allow_direct: true,
        mirror_direct: true,
        ..Default::default()
    };
    match local.create_stream(mirror).await {
        Ok(_) => Ok(()),
        // Another daemon of the region created it first.
        Err(_) if local.get_stream(&read.stream).await.is_ok() => Ok(()),
        Err(error) => Err(StoreError::Backend(format!("creating mirror {}: {error}", read.stream))),
    }
}

fn stream_name(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// `devices/a.b/c` → `devices.a=2Eb.c`: `/` becomes the subject separator, and `.` and `=`
/// inside a segment are escaped so the mapping stays one to one.
pub(crate) fn encode_key(key: &str) -> String {
    let mut subject = String::with_capacity(key.len() + 8);
    for c in key.chars() {
        match c {
            '/' => subject.push('.'),
            '.' => subject.push_str("=2E"),
            '=' => subject.push_str("=3D"),
            c => subject.push(c),
        }
    }
    subject
}

/// The inverse of [`encode_key`]; `None` for a subject no key maps to.
pub(crate) fn decode_key(subject: &str) -> Option<String> {
    let mut key = String::with_capacity(subject.len());
    let mut chars = subject.chars();
    while let Some(c) = chars.next() {
        match c {
            '.' => key.push('/'),
            '=' => match (chars.next(), chars.next()) {
                (Some('2'), Some('E')) => key.push('.'),
                (Some('3'), Some('D')) => key.push('='),
                _ => return None,
            },
            c => key.push(c),
        }
    }
    Some(key)
}

fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(error.to_string())
}
