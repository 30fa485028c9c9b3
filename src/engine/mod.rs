//! Protocol semantics, once for every backend.
//!
//! The engine serializes mutations per stream (one async writer lock each, none
//! global), enforces content types, `Stream-Seq`, idempotent producers, closure,
//! TTL and expiry, forks with reference counts and soft delete, and publishes
//! each stream's durable tail on a `tokio::sync::watch` channel that wakes every
//! live reader with one send. It knows nothing of HTTP.

mod producer;

pub use producer::{decide, ProducerDecision};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::{watch, Mutex, OnceCell, OwnedMutexGuard};

use crate::protocol::{
    is_json, json_prefix_len, json_to_wire, same_media_type, EmptyArray, JsonError,
    ProducerHeaders, ReadFrom, DEFAULT_CONTENT_TYPE,
};
use crate::storage::{
    Append, CreateOutcome, Cut, Expiry, ForkOrigin, ProducerTuple, ReadChunk, Storage,
    StorageError, StreamConfig, StreamRecord,
};

const SHARDS: usize = 64;

type Shard = RwLock<HashMap<String, Arc<Handle>>>;

/// Why an engine operation was refused. Each variant maps to one protocol answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No such stream (404).
    #[error("stream not found")]
    NotFound,
    /// The stream was deleted but forks still read through it (410).
    #[error("stream has been deleted")]
    Gone,
    /// The request is malformed for this stream (400).
    #[error("{0}")]
    BadRequest(String),
    /// A create conflicts with the existing stream's configuration (409).
    #[error("{0}")]
    Conflict(String),
    /// An append to a closed stream (409 with `Stream-Closed`).
    #[error("stream is closed")]
    Closed {
        /// The final tail.
        tail: u64,
    },
    /// The append's content type differs from the stream's (409).
    #[error("content type {given} does not match the stream's {expected}")]
    ContentTypeMismatch {
        /// The stream's content type.
        expected: String,
        /// The request's content type.
        given: String,
    },
    /// `Stream-Seq` did not increase (409).
    #[error("Stream-Seq {given:?} is not greater than the last accepted {last:?}")]
    SeqRegression {
        /// The last accepted value.
        last: String,
        /// The request's value.
        given: String,
    },
    /// The producer's epoch is stale (403).
    #[error("producer epoch is stale; current epoch is {current}")]
    StaleEpoch {
        /// The server's epoch for this producer.
        current: u64,
    },
    /// A new epoch did not start at sequence 0 (400).
    #[error("a new producer epoch must start at Producer-Seq 0")]
    NewEpochNotAtZero,
    /// Producer sequence numbers were skipped (409).
    #[error("producer sequence gap: expected {expected}, received {received}")]
    SequenceGap {
        /// Expected sequence.
        expected: u64,
        /// Received sequence.
        received: u64,
    },
    /// The append would make the stream longer than the configured maximum (413).
    #[error("the append would make the stream longer than {limit} bytes")]
    StreamTooLarge {
        /// The per-stream limit.
        limit: u64,
    },
    /// The storage backend is out of room; nothing was written (507).
    #[error("the storage backend is full; nothing was written")]
    Full,
    /// The storage layer failed (500).
    #[error("storage failure")]
    Storage(#[source] StorageError),
}

impl From<StorageError> for EngineError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Full => EngineError::Full,
            other => EngineError::Storage(other),
        }
    }
}

impl From<JsonError> for EngineError {
    fn from(e: JsonError) -> Self {
        EngineError::BadRequest(e.to_string())
    }
}

/// What readers can see of a stream; published on its watch channel.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The configuration of the current incarnation; `None` if there is no stream.
    pub config: Option<Arc<StreamConfig>>,
    /// Deleted but still referenced by forks.
    pub soft_deleted: bool,
    /// The durable tail.
    pub tail: u64,
    /// Closed, with every byte up to `tail` final.
    pub closed: bool,
}

impl View {
    fn of(record: Option<&StreamRecord>) -> Self {
        record.map_or_else(View::default, |r| View {
            config: Some(Arc::new(r.config.clone())),
            soft_deleted: r.soft_deleted,
            tail: r.tail,
            closed: r.closed,
        })
    }
}

struct Writer {
    record: Option<StreamRecord>,
    /// Forks (live or soft-deleted) whose source is this stream.
    ref_count: u64,
}

struct Handle {
    writer: Arc<Mutex<Writer>>,
    view: watch::Sender<View>,
    last_access_ms: AtomicU64,
    /// Removed from the map; holders must look the key up again.
    detached: AtomicBool,
    /// Appends that failed in storage; duplicates waiting on them give up.
    failures: AtomicU64,
}

impl Handle {
    fn new(record: Option<StreamRecord>, ref_count: u64) -> Arc<Self> {
        let (view, _) = watch::channel(View::of(record.as_ref()));
        Arc::new(Handle {
            writer: Arc::new(Mutex::new(Writer { record, ref_count })),
            view,
            last_access_ms: AtomicU64::new(now_ms()),
            detached: AtomicBool::new(false),
            failures: AtomicU64::new(0),
        })
    }

    fn publish(&self, record: Option<&StreamRecord>) {
        self.view.send_replace(View::of(record));
    }

    fn touch(&self) {
        self.last_access_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Renews a sliding TTL; streams without one skip the clock read.
    fn touch_for(&self, config: &StreamConfig) {
        if matches!(config.expiry, Expiry::Ttl(_)) {
            self.touch();
        }
    }

    fn expired(&self, config: &StreamConfig) -> bool {
        if self.view.receiver_count() > 0 {
            // Live readers keep a stream alive (section 5.1).
            self.touch();
        }
        match config.expiry {
            Expiry::Never => false,
            Expiry::Ttl(secs) => {
                let idle = now_ms().saturating_sub(self.last_access_ms.load(Ordering::Relaxed));
                idle >= secs.saturating_mul(1000)
            }
            Expiry::At(at) => OffsetDateTime::now_utc() >= at,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// A request to create a stream or a fork.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// The `Content-Type`, if given.
    pub content_type: Option<String>,
    /// The requested expiry.
    pub expiry: Expiry,
    /// Create the stream closed.
    pub closed: bool,
    /// Initial bytes.
    pub body: Bytes,
    /// Fork parameters.
    pub fork: Option<ForkRequest>,
}

/// The fork part of a create request.
#[derive(Debug, Clone, Default)]
pub struct ForkRequest {
    /// The source stream's key.
    pub source: String,
    /// `Stream-Fork-Offset` position; the source's tail when absent.
    pub offset: Option<u64>,
    /// `Stream-Fork-Sub-Offset`.
    pub sub_offset: u64,
}

/// The result of a create.
#[derive(Debug, Clone)]
pub struct Created {
    /// `true` for 201, `false` for an idempotent 200.
    pub created: bool,
    /// The stream's configuration.
    pub config: Arc<StreamConfig>,
    /// Its tail.
    pub tail: u64,
    /// Whether it is closed.
    pub closed: bool,
}

/// A request to append to (and possibly close) a stream.
#[derive(Debug, Clone, Default)]
pub struct AppendRequest {
    /// The `Content-Type`, if given.
    pub content_type: Option<String>,
    /// The bytes to append (may be empty only when closing).
    pub body: Bytes,
    /// Close the stream with this request.
    pub close: bool,
    /// `Stream-Seq`.
    pub stream_seq: Option<String>,
    /// Idempotent producer headers.
    pub producer: Option<ProducerHeaders>,
}

/// How an append was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendKind {
    /// New data (or a new close) was written.
    Written,
    /// A producer retry of something already written.
    Duplicate,
    /// A close-only request on a stream that was already closed.
    AlreadyClosed,
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// What happened.
    pub kind: AppendKind,
    /// The tail afterwards.
    pub tail: u64,
    /// Whether the stream is now closed.
    pub closed: bool,
    /// `(Producer-Epoch, Producer-Seq)` to echo, for producer requests.
    pub producer: Option<(u64, u64)>,
}

/// Bytes of a read and where they sit in the stream.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// The stream's configuration.
    pub config: Arc<StreamConfig>,
    /// Position of the first returned byte.
    pub start: u64,
    /// Position after the last returned byte.
    pub end: u64,
    /// The tail when the read was made.
    pub tail: u64,
    /// Whether the stream was closed when the read was made.
    pub closed: bool,
    /// The bytes.
    pub data: Vec<Bytes>,
}

impl ReadResult {
    /// Whether this read reached the tail.
    pub fn up_to_date(&self) -> bool {
        self.end >= self.tail
    }
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// Removed.
    Removed,
    /// Kept as soft-deleted for the forks that read through it.
    SoftDeleted,
}

/// The protocol engine over one storage backend.
pub struct Engine {
    storage: Arc<dyn Storage>,
    shards: Box<[Shard]>,
    loaded: OnceCell<()>,
    max_read_bytes: usize,
    max_stream_bytes: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("storage", &self.storage)
            .field("max_read_bytes", &self.max_read_bytes)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `storage` that serves reads of at most `max_read_bytes` each.
    pub fn new(storage: Arc<dyn Storage>, max_read_bytes: usize) -> Self {
        Engine {
            storage,
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            loaded: OnceCell::new(),
            max_read_bytes: max_read_bytes.max(1),
            max_stream_bytes: u64::MAX,
        }
    }

    /// Refuses appends (and creates) that would make a stream longer than
    /// `limit` bytes, counting inherited fork bytes. Unlimited by default.
    pub fn with_max_stream_bytes(mut self, limit: u64) -> Self {
        self.max_stream_bytes = limit;
        self
    }

    fn check_size(&self, tail: u64) -> Result<(), EngineError> {
        if tail > self.max_stream_bytes {
            Err(EngineError::StreamTooLarge {
                limit: self.max_stream_bytes,
            })
        } else {
            Ok(())
        }
    }

    /// Loads every stream from storage (once); later calls return at once.
    pub async fn ready(&self) -> Result<(), EngineError> {
        self.loaded
            .get_or_try_init(|| async {
                let all = self.storage.load().await?;
                let mut refs: HashMap<&str, u64> = HashMap::new();
                for (_, record) in &all {
                    if let Some(fork) = &record.config.fork {
                        *refs.entry(fork.source.as_str()).or_default() += 1;
                    }
                }
                let handles: Vec<_> = all
                    .iter()
                    .map(|(key, record)| {
                        let count = refs.get(key.as_str()).copied().unwrap_or(0);
                        (key.clone(), Handle::new(Some(record.clone()), count))
                    })
                    .collect();
                for (key, handle) in handles {
                    self.shard(&key)
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, handle);
                }
                // A crash between deleting a last fork and its soft-deleted source
                // leaves the source unreferenced: finish that clean-up now.
                let orphans: Vec<String> = all
                    .iter()
                    .filter(|(key, record)| {
                        record.soft_deleted && !refs.contains_key(key.as_str())
                    })
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in orphans {
                    if let Some(handle) = self.existing(&key) {
                        handle.writer.lock().await.ref_count += 1;
                    }
                    if let Err(e) = self.release(&key).await {
                        tracing::warn!(stream = %key, error = %e, "could not remove an unreferenced deleted stream");
                    }
                }
                Ok::<_, EngineError>(())
            })
            .await
            .map(|_| ())
    }

    fn shard(&self, key: &str) -> &Shard {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        &self.shards[(hash as usize) % SHARDS]
    }

    fn existing(&self, key: &str) -> Option<Arc<Handle>> {
        self.shard(key)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn handle(&self, key: &str) -> Arc<Handle> {
        if let Some(handle) = self.existing(key) {
            return handle;
        }
        self.shard(key)
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_insert_with(|| Handle::new(None, 0))
            .clone()
    }

    /// Locks the writer of `key`'s handle, creating the handle if `create`.
    async fn lock(&self, key: &str, create: bool) -> Option<(Arc<Handle>, OwnedWriter)> {
        loop {
            let handle = if create {
                self.handle(key)
            } else {
                self.existing(key)?
            };
            let guard = OwnedWriter(handle.writer.clone().lock_owned().await);
            if handle.detached.load(Ordering::Acquire) {
                continue;
            }
            return Some((handle, guard));
        }
    }

    /// Removes the handle of a stream that no longer exists from the map. Called
    /// with the handle's writer lock held, so nobody can create the stream in the
    /// meantime; holders of the old handle see `detached` and look the key up again.
    fn forget_locked(&self, key: &str, handle: &Arc<Handle>, writer: &OwnedWriter) {
        if writer.get().record.is_some() || writer.get().ref_count > 0 {
            return;
        }
        let mut shard = self.shard(key).write().unwrap_or_else(|e| e.into_inner());
        if shard.get(key).is_some_and(|h| Arc::ptr_eq(h, handle)) {
            handle.detached.store(true, Ordering::Release);
            shard.remove(key);
        }
    }

    /// The current view of `key`, after expiring it if its time has come.
    async fn live_view(&self, key: &str) -> Result<(Arc<Handle>, View), EngineError> {
        let handle = self.existing(key).ok_or(EngineError::NotFound)?;
        let view = handle.view.borrow().clone();
        let config = view.config.as_ref().ok_or(EngineError::NotFound)?;
        if view.soft_deleted || !handle.expired(config) {
            return Ok((handle, view));
        }
        drop(handle);
        self.expire(key).await?;
        let handle = self.existing(key).ok_or(EngineError::NotFound)?;
        let view = handle.view.borrow().clone();
        Ok((handle, view))
    }

    /// Locks the writer of a handle already looked up, or of `key`'s current
    /// handle if that one has been detached in the meantime.
    async fn lock_handle(
        &self,
        key: &str,
        handle: Arc<Handle>,
    ) -> Option<(Arc<Handle>, OwnedWriter)> {
        let guard = OwnedWriter(handle.writer.clone().lock_owned().await);
        if handle.detached.load(Ordering::Acquire) {
            drop(guard);
            return self.lock(key, false).await;
        }
        Some((handle, guard))
    }

    /// Deletes `key` if it has expired.
    async fn expire(&self, key: &str) -> Result<(), EngineError> {
        let Some((handle, writer)) = self.lock(key, false).await else {
            return Ok(());
        };
        let expired = writer
            .get()
            .record
            .as_ref()
            .is_some_and(|r| !r.soft_deleted && handle.expired(&r.config));
        if expired {
            tracing::debug!(stream = key, "stream expired");
            self.delete_locked(key, &handle, writer).await?;
        }
        Ok(())
    }

    /// The streams whose time has come (a quick scan that does not wait).
    pub fn due_for_expiry(&self) -> Vec<String> {
        self.shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.read().unwrap_or_else(|e| e.into_inner());
                shard
                    .iter()
                    .filter(|(_, h)| {
                        let view = h.view.borrow();
                        view.config
                            .as_ref()
                            .is_some_and(|c| !view.soft_deleted && h.expired(c))
                    })
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Expires the given streams if they are still due.
    pub async fn expire_all(&self, keys: &[String]) {
        for key in keys {
            if let Err(e) = self.expire(key).await {
                tracing::warn!(stream = %key, error = %e, "could not expire stream");
            }
        }
    }

    /// A stream's metadata, for `HEAD`. Does not renew a TTL.
    pub async fn head(&self, key: &str) -> Result<View, EngineError> {
        self.ready().await?;
        let (_, view) = self.live_view(key).await?;
        match view.config {
            None => Err(EngineError::NotFound),
            Some(_) if view.soft_deleted => Err(EngineError::Gone),
            Some(_) => Ok(view),
        }
    }

    /// Subscribes to `key`'s view, to wait for appends, closure or deletion.
    /// A stream with subscribers does not expire.
    pub fn subscribe(&self, key: &str) -> Option<watch::Receiver<View>> {
        self.existing(key).map(|h| h.view.subscribe())
    }

    /// Renews `key`'s sliding TTL.
    pub fn touch(&self, key: &str) {
        if let Some(handle) = self.existing(key) {
            handle.touch();
        }
    }

    /// Creates a stream or a fork (`PUT`).
    pub async fn create(&self, key: &str, request: CreateRequest) -> Result<Created, EngineError> {
        self.ready().await?;
        // Expire what is due first, outside any lock, so that creating never has
        // to clean up (and take another stream's lock) while holding this one.
        self.expire(key).await?;
        if let Some(fork) = &request.fork {
            self.expire(&fork.source).await?;
            return self.create_fork(key, fork.clone(), request).await;
        }
        let content_type = request
            .content_type
            .clone()
            .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned());
        let initial = initial_bytes(&content_type, request.body.clone())?;
        let (handle, mut writer) = self.lock(key, true).await.ok_or(EngineError::NotFound)?;
        let result = match existing_live(&writer) {
            Err(e) => Err(e),
            Ok(Some(existing)) => matches_existing(
                &existing,
                &content_type,
                request.expiry,
                request.closed,
                None,
            ),
            Ok(None) => {
                let config = StreamConfig {
                    id: fastrand::u64(..),
                    content_type,
                    expiry: request.expiry,
                    fork: None,
                };
                let mut record = StreamRecord::new(config, 0);
                record.closed = request.closed;
                self.store_new(key, &handle, &mut writer, record, initial)
                    .await
            }
        };
        self.forget_locked(key, &handle, &writer);
        result
    }

    async fn store_new(
        &self,
        key: &str,
        handle: &Arc<Handle>,
        writer: &mut OwnedWriter,
        record: StreamRecord,
        initial: Bytes,
    ) -> Result<Created, EngineError> {
        self.check_size(record.tail + initial.len() as u64)?;
        match self
            .storage
            .create(key, record.clone(), initial.clone())
            .await?
        {
            CreateOutcome::Created => {
                let mut record = record;
                record.tail += initial.len() as u64;
                let created = Created {
                    created: true,
                    config: Arc::new(record.config.clone()),
                    tail: record.tail,
                    closed: record.closed,
                };
                handle.touch();
                writer.get_mut().record = Some(record);
                handle.publish(writer.get().record.as_ref());
                Ok(created)
            }
            CreateOutcome::Exists(existing) => {
                // Another instance created it first: adopt its record.
                let existing = *existing;
                writer.get_mut().record = Some(existing.clone());
                handle.publish(Some(&existing));
                matches_existing(
                    &existing,
                    &record.config.content_type,
                    record.config.expiry,
                    record.closed,
                    record.config.fork.as_ref(),
                )
            }
        }
    }

    async fn create_fork(
        &self,
        key: &str,
        fork: ForkRequest,
        request: CreateRequest,
    ) -> Result<Created, EngineError> {
        if fork.source == key {
            return Err(EngineError::Conflict(
                "a stream cannot be forked from itself".into(),
            ));
        }
        // Lock both streams in key order so concurrent forks cannot deadlock.
        let (target, source) = if key < fork.source.as_str() {
            let target = self.lock(key, true).await.ok_or(EngineError::NotFound)?;
            (target, self.lock(&fork.source, false).await)
        } else {
            let source = self.lock(&fork.source, false).await;
            (
                self.lock(key, true).await.ok_or(EngineError::NotFound)?,
                source,
            )
        };
        let (handle, mut writer) = target;
        let result = self
            .create_fork_locked(key, &fork, &request, &handle, &mut writer, source)
            .await;
        self.forget_locked(key, &handle, &writer);
        result
    }

    async fn create_fork_locked(
        &self,
        key: &str,
        fork: &ForkRequest,
        request: &CreateRequest,
        handle: &Arc<Handle>,
        writer: &mut OwnedWriter,
        source: Option<(Arc<Handle>, OwnedWriter)>,
    ) -> Result<Created, EngineError> {
        // An existing fork is compared with what it was created with, whatever
        // has happened to its source since.
        if let Some(existing) = existing_live(writer)? {
            let origin = existing.config.fork.as_ref();
            let anchor = fork.offset.or(origin.map(|o| o.anchor)).unwrap_or_default();
            let requested = ForkOrigin {
                source: fork.source.clone(),
                anchor,
                sub_offset: fork.sub_offset,
                position: 0,
            };
            let content_type = request
                .content_type
                .clone()
                .unwrap_or_else(|| existing.config.content_type.clone());
            let expiry = match request.expiry {
                Expiry::Never => existing.config.expiry,
                own => own,
            };
            return matches_existing(
                &existing,
                &content_type,
                expiry,
                request.closed,
                Some(&requested),
            );
        }
        let (_, mut source_writer) = source.ok_or(EngineError::NotFound)?;
        let source_record = source_writer
            .get()
            .record
            .clone()
            .ok_or(EngineError::NotFound)?;
        if source_record.soft_deleted {
            return Err(EngineError::Conflict(
                "the fork source has been deleted".into(),
            ));
        }
        let source_ct = &source_record.config.content_type;
        let content_type = match &request.content_type {
            Some(ct) if !same_media_type(ct, source_ct) => {
                return Err(EngineError::Conflict(format!(
                    "content type {ct} differs from the source's {source_ct}"
                )))
            }
            Some(ct) => ct.clone(),
            None => source_ct.clone(),
        };
        let anchor = fork.offset.unwrap_or(source_record.tail);
        if anchor > source_record.tail {
            return Err(EngineError::BadRequest(
                "Stream-Fork-Offset is beyond the source stream's tail".into(),
            ));
        }
        let position = if fork.sub_offset == 0 {
            anchor
        } else {
            let config = Arc::new(source_record.config.clone());
            let next = self
                .read_stitched(
                    &fork.source,
                    &config,
                    anchor,
                    source_record.tail,
                    1,
                    Cut::RecordBoundary,
                )
                .await?;
            let available = next.data.concat();
            let prefix = if is_json(source_ct) {
                json_prefix_len(&available, fork.sub_offset).map(|n| n as u64)
            } else {
                Some(fork.sub_offset).filter(|&n| n <= available.len() as u64)
            };
            anchor
                + prefix.ok_or_else(|| {
                    EngineError::BadRequest(
                        "Stream-Fork-Sub-Offset points past the next data boundary".into(),
                    )
                })?
        };
        let expiry = match (request.expiry, source_record.config.expiry) {
            (Expiry::Never, inherited) => inherited,
            (own, _) => own,
        };
        let initial = initial_bytes(&content_type, request.body.clone())?;
        let config = StreamConfig {
            id: fastrand::u64(..),
            content_type,
            expiry,
            fork: Some(ForkOrigin {
                source: fork.source.clone(),
                anchor,
                sub_offset: fork.sub_offset,
                position,
            }),
        };
        let mut record = StreamRecord::new(config, position);
        record.closed = request.closed;
        let created = self.store_new(key, handle, writer, record, initial).await?;
        if created.created {
            source_writer.get_mut().ref_count += 1;
        }
        Ok(created)
    }

    /// Appends to (and possibly closes) a stream (`POST`).
    pub async fn append(&self, key: &str, request: AppendRequest) -> Result<Appended, EngineError> {
        self.ready().await?;
        let (handle, view) = self.live_view(key).await?;
        let config = view.config.ok_or(EngineError::NotFound)?;
        if view.soft_deleted {
            return Err(EngineError::Gone);
        }
        let has_body = !request.body.is_empty();
        // JSON validation and flattening is CPU work: do it before taking the lock.
        let json = if has_body && is_json(&config.content_type) {
            let given = request.content_type.as_deref().unwrap_or_default();
            if same_media_type(given, &config.content_type) {
                Some(json_to_wire(&request.body, EmptyArray::Reject).map(|(wire, _)| wire))
            } else {
                None
            }
        } else {
            None
        };
        let (handle, mut writer) = self
            .lock_handle(key, handle)
            .await
            .ok_or(EngineError::NotFound)?;
        // Decide with the record borrowed under the lock: no copy on the hot path.
        let (append, tail) = {
            let record = match writer.get().record.as_ref() {
                Some(r) if r.config.id == config.id && r.soft_deleted => {
                    return Err(EngineError::Gone)
                }
                Some(r) if r.config.id == config.id => r,
                _ => return Err(EngineError::NotFound),
            };
            if record.closed {
                let record = record.clone();
                drop(writer);
                return self
                    .answer_closed(&handle, &record, &request, has_body)
                    .await;
            }
            let data = if has_body {
                let given = request.content_type.as_deref().unwrap_or_default();
                if !same_media_type(given, &config.content_type) {
                    return Err(EngineError::ContentTypeMismatch {
                        expected: config.content_type.clone(),
                        given: given.to_owned(),
                    });
                }
                match json {
                    Some(wire) => wire?,
                    None => request.body.clone(),
                }
            } else {
                Bytes::new()
            };
            let mut producer_update = None;
            if let Some(p) = &request.producer {
                let state = record.producers.get(&p.id).copied();
                match decide(state, p.epoch, p.seq) {
                    ProducerDecision::Accept(state) => {
                        producer_update = Some((p.id.clone(), state))
                    }
                    ProducerDecision::Duplicate { last_seq } => {
                        let (id, tail) = (record.config.id, record.tail);
                        drop(writer);
                        self.settled(&handle, id, tail, false).await?;
                        return Ok(Appended {
                            kind: AppendKind::Duplicate,
                            tail,
                            closed: false,
                            producer: Some((p.epoch, last_seq)),
                        });
                    }
                    ProducerDecision::StaleEpoch { current } => {
                        return Err(EngineError::StaleEpoch { current })
                    }
                    ProducerDecision::NewEpochNotAtZero => {
                        return Err(EngineError::NewEpochNotAtZero)
                    }
                    ProducerDecision::Gap { expected, received } => {
                        return Err(EngineError::SequenceGap { expected, received })
                    }
                }
            }
            if let (Some(given), Some(last)) = (&request.stream_seq, &record.stream_seq) {
                if given.as_bytes() <= last.as_bytes() {
                    return Err(EngineError::SeqRegression {
                        last: last.clone(),
                        given: given.clone(),
                    });
                }
            }
            let close = request.close.then(|| {
                request.producer.as_ref().map(|p| ProducerTuple {
                    id: p.id.clone(),
                    epoch: p.epoch,
                    seq: p.seq,
                })
            });
            let append = Append {
                stream_id: record.config.id,
                expected_tail: record.tail,
                data,
                stream_seq: request.stream_seq.clone(),
                producer: producer_update,
                close,
            };
            (append, record.tail)
        };
        let new_tail = tail + append.data.len() as u64;
        self.check_size(new_tail)?;
        let closed = append.close.is_some();
        let stream_id = append.stream_id;
        if let Some(r) = writer.get_mut().record.as_mut() {
            r.apply(&append);
        }
        // Ordered now, durable later: the lock is released before the wait so a
        // backend with group commit can batch this stream's next appends.
        let pending = self.storage.append(key, append);
        drop(writer);
        if let Err(e) = pending.await {
            tracing::error!(stream = key, error = %e, "append failed; reloading stream state");
            self.refresh(key).await;
            return Err(self.storage_error(e));
        }
        handle.touch_for(&config);
        // Wake live readers only if there are any: a reader that subscribes
        // later reads the updated view itself (the count is read under the
        // view's write lock, which its first `borrow` waits for).
        handle.view.send_if_modified(|v| {
            if v.config.as_ref().is_some_and(|c| c.id == stream_id) {
                v.tail = v.tail.max(new_tail);
                v.closed |= closed;
                handle.view.receiver_count() > 0
            } else {
                false
            }
        });
        Ok(Appended {
            kind: AppendKind::Written,
            tail: new_tail,
            closed,
            producer: request.producer.as_ref().map(|p| (p.epoch, p.seq)),
        })
    }

    /// Answers an append to a closed stream (section 5.2.1): the retry of the
    /// closing producer request is a duplicate, a stale epoch is fenced, a
    /// close-only request is idempotent, anything else is refused.
    async fn answer_closed(
        &self,
        handle: &Arc<Handle>,
        record: &StreamRecord,
        request: &AppendRequest,
        has_body: bool,
    ) -> Result<Appended, EngineError> {
        if let Some(p) = &request.producer {
            let state = record.producers.get(&p.id).copied();
            if let ProducerDecision::StaleEpoch { current } = decide(state, p.epoch, p.seq) {
                return Err(EngineError::StaleEpoch { current });
            }
            let closer = record
                .closed_by
                .as_ref()
                .is_some_and(|t| t.id == p.id && t.epoch == p.epoch && t.seq == p.seq);
            if closer {
                self.settled(handle, record.config.id, record.tail, record.closed)
                    .await?;
                return Ok(Appended {
                    kind: AppendKind::Duplicate,
                    tail: record.tail,
                    closed: true,
                    producer: Some((p.epoch, state.map_or(p.seq, |s| s.last_seq))),
                });
            }
        }
        if has_body {
            return Err(EngineError::Closed { tail: record.tail });
        }
        self.settled(handle, record.config.id, record.tail, record.closed)
            .await?;
        Ok(Appended {
            kind: AppendKind::AlreadyClosed,
            tail: record.tail,
            closed: true,
            producer: None,
        })
    }

    /// Waits until everything in `record` (tail and closure) is durable, so that a
    /// duplicate is never acknowledged before the original append it stands for.
    async fn settled(
        &self,
        handle: &Arc<Handle>,
        id: u64,
        tail: u64,
        closed: bool,
    ) -> Result<(), EngineError> {
        let failures = handle.failures.load(Ordering::Acquire);
        let mut rx = handle.view.subscribe();
        loop {
            {
                let view = rx.borrow_and_update();
                if view.config.as_ref().map(|c| c.id) != Some(id) {
                    return Err(EngineError::NotFound);
                }
                if view.tail >= tail && (view.closed || !closed) {
                    return Ok(());
                }
            }
            if handle.failures.load(Ordering::Acquire) != failures {
                return Err(StorageError::Io(std::io::Error::other(
                    "the write this request repeats did not complete",
                ))
                .into());
            }
            if rx.changed().await.is_err() {
                return Err(EngineError::NotFound);
            }
        }
    }

    fn storage_error(&self, error: StorageError) -> EngineError {
        match error {
            StorageError::NotFound => EngineError::NotFound,
            other => other.into(),
        }
    }

    /// Reloads one stream's cached state from storage after a failed write.
    async fn refresh(&self, key: &str) {
        if let Some((handle, mut writer)) = self.lock(key, false).await {
            match self.storage.get(key).await {
                Ok(record) => {
                    writer.get_mut().record = record;
                    handle.failures.fetch_add(1, Ordering::AcqRel);
                    handle.publish(writer.get().record.as_ref());
                }
                Err(e) => {
                    tracing::error!(stream = key, error = %e, "could not reload stream state")
                }
            }
        }
    }

    /// Reads from `from` (`GET`), renewing the stream's TTL.
    pub async fn read(&self, key: &str, from: ReadFrom) -> Result<ReadResult, EngineError> {
        self.ready().await?;
        let (handle, view) = self.live_view(key).await?;
        let config = view.config.clone().ok_or(EngineError::NotFound)?;
        if view.soft_deleted {
            return Err(EngineError::Gone);
        }
        handle.touch_for(&config);
        let start = match from {
            ReadFrom::Start => 0,
            ReadFrom::Now => view.tail,
            ReadFrom::At(offset) => offset.position(),
        };
        self.read_at(key, &config, start, &view).await
    }

    /// Reads the bytes at `start` given a view obtained earlier (live reads).
    pub async fn read_at(
        &self,
        key: &str,
        config: &Arc<StreamConfig>,
        start: u64,
        view: &View,
    ) -> Result<ReadResult, EngineError> {
        if start > view.tail {
            return Err(EngineError::BadRequest(
                "offset is beyond the stream's tail".into(),
            ));
        }
        let cut = if is_json(&config.content_type) {
            Cut::RecordBoundary
        } else {
            Cut::AnyByte
        };
        let chunk = self
            .read_stitched(key, config, start, view.tail, self.max_read_bytes, cut)
            .await?;
        Ok(ReadResult {
            config: config.clone(),
            start,
            end: chunk.end,
            tail: view.tail,
            closed: view.closed,
            data: chunk.data,
        })
    }

    /// Reads `from..to` of `key`, following fork origins into sources.
    async fn read_stitched(
        &self,
        key: &str,
        config: &Arc<StreamConfig>,
        from: u64,
        to: u64,
        max_bytes: usize,
        cut: Cut,
    ) -> Result<ReadChunk, EngineError> {
        let mut out = ReadChunk {
            data: Vec::new(),
            end: from,
        };
        let mut budget = max_bytes;
        while out.end < to && budget > 0 {
            // Find the stream that holds position `out.end`.
            let (mut seg_key, mut seg_config, mut seg_to) =
                (std::borrow::Cow::Borrowed(key), config.clone(), to);
            while let Some(fork) = seg_config.fork.clone() {
                if out.end >= fork.position {
                    break;
                }
                seg_to = seg_to.min(fork.position);
                // A source can only vanish if the fork was deleted meanwhile.
                let source = self
                    .existing(&fork.source)
                    .and_then(|h| h.view.borrow().config.clone())
                    .ok_or(EngineError::NotFound)?;
                seg_key = std::borrow::Cow::Owned(fork.source);
                seg_config = source;
            }
            let chunk = self
                .storage
                .read(&seg_key, out.end, seg_to, budget, cut)
                .await
                .map_err(|e| self.storage_error(e))?;
            if chunk.end <= out.end {
                return Err(StorageError::Corrupt(format!(
                    "no data at position {} of {seg_key}",
                    out.end
                ))
                .into());
            }
            budget = budget.saturating_sub((chunk.end - out.end) as usize);
            out.end = chunk.end;
            if out.data.is_empty() {
                out.data = chunk.data;
            } else {
                out.data.extend(chunk.data);
            }
            if out.end < seg_to {
                // The backend stopped early: the budget is spent.
                break;
            }
        }
        Ok(out)
    }

    /// Deletes a stream (`DELETE`): soft if forks still read through it.
    pub async fn delete(&self, key: &str) -> Result<Deleted, EngineError> {
        self.ready().await?;
        self.expire(key).await?;
        let (handle, writer) = self.lock(key, false).await.ok_or(EngineError::NotFound)?;
        match writer.get().record.as_ref() {
            None => return Err(EngineError::NotFound),
            Some(r) if r.soft_deleted => return Err(EngineError::Gone),
            Some(_) => {}
        }
        self.delete_locked(key, &handle, writer).await
    }

    /// Deletes the locked stream; releases its source after dropping the lock.
    async fn delete_locked(
        &self,
        key: &str,
        handle: &Arc<Handle>,
        mut writer: OwnedWriter,
    ) -> Result<Deleted, EngineError> {
        let w = writer.get_mut();
        let Some(record) = w.record.clone() else {
            return Err(EngineError::NotFound);
        };
        if w.ref_count > 0 {
            self.storage.soft_delete(key).await?;
            if let Some(r) = w.record.as_mut() {
                r.soft_deleted = true;
            }
            handle.publish(w.record.as_ref());
            return Ok(Deleted::SoftDeleted);
        }
        self.storage.delete(key).await?;
        w.record = None;
        handle.publish(None);
        self.forget_locked(key, handle, &writer);
        drop(writer);
        if let Some(fork) = &record.config.fork {
            self.release(&fork.source).await?;
        }
        Ok(Deleted::Removed)
    }

    /// Drops one fork reference from `key`, cleaning up soft-deleted sources
    /// whose last fork is gone, up the chain.
    async fn release(&self, key: &str) -> Result<(), EngineError> {
        let mut next = Some(key.to_owned());
        while let Some(key) = next.take() {
            let Some((handle, mut writer)) = self.lock(&key, false).await else {
                return Ok(());
            };
            let w = writer.get_mut();
            w.ref_count = w.ref_count.saturating_sub(1);
            let Some(record) = w.record.clone() else {
                self.forget_locked(&key, &handle, &writer);
                return Ok(());
            };
            if w.ref_count > 0 || !record.soft_deleted {
                return Ok(());
            }
            self.storage.delete(&key).await?;
            w.record = None;
            handle.publish(None);
            self.forget_locked(&key, &handle, &writer);
            drop(writer);
            next = record.config.fork.map(|f| f.source);
        }
        Ok(())
    }
}

/// The live record under a writer lock, refusing a soft-deleted one (409).
fn existing_live(writer: &OwnedWriter) -> Result<Option<StreamRecord>, EngineError> {
    match writer.get().record.as_ref() {
        Some(r) if r.soft_deleted => Err(EngineError::Conflict(
            "a deleted stream at this path is still referenced by forks".into(),
        )),
        other => Ok(other.cloned()),
    }
}

/// The stored bytes of a create body.
fn initial_bytes(content_type: &str, body: Bytes) -> Result<Bytes, EngineError> {
    if is_json(content_type) && !body.is_empty() {
        Ok(json_to_wire(&body, EmptyArray::Allow)?.0)
    } else {
        Ok(body)
    }
}

/// Decides an idempotent create against an existing stream: 200 or 409.
fn matches_existing(
    existing: &StreamRecord,
    content_type: &str,
    expiry: Expiry,
    closed: bool,
    fork: Option<&ForkOrigin>,
) -> Result<Created, EngineError> {
    let config = &existing.config;
    let mismatch = if !same_media_type(&config.content_type, content_type) {
        Some("content type")
    } else if config.expiry != expiry {
        Some("TTL or expiry")
    } else if existing.closed != closed {
        Some("closure status")
    } else if config
        .fork
        .as_ref()
        .map(|f| (&f.source, f.anchor, f.sub_offset))
        != fork.map(|f| (&f.source, f.anchor, f.sub_offset))
    {
        Some("fork origin")
    } else {
        None
    };
    match mismatch {
        Some(what) => Err(EngineError::Conflict(format!(
            "a stream already exists at this path with a different {what}"
        ))),
        None => Ok(Created {
            created: false,
            config: Arc::new(config.clone()),
            tail: existing.tail,
            closed: existing.closed,
        }),
    }
}

/// A writer guard that keeps its handle's lock alive on its own.
struct OwnedWriter(OwnedMutexGuard<Writer>);

impl OwnedWriter {
    fn get(&self) -> &Writer {
        &self.0
    }

    fn get_mut(&mut self) -> &mut Writer {
        &mut self.0
    }
}
