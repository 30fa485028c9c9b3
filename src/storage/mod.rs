//! Persistence: a small object-safe trait that stores what the engine decided.
//!
//! The engine owns every protocol rule; a backend only keeps stream records and
//! byte ranges and reports what it has. One append (data, producer state,
//! `Stream-Seq`, closed flag) is one call, so a backend that commits it atomically
//! never keeps the data while losing the dedup state that guards it.
//!
//! Appends are *conditional* (they name the tail they expect) so that several
//! service instances over one shared database can detect each other's writes,
//! and *pipelined*: [`Storage::append`] orders the append when it returns and the
//! returned future resolves once the append is durable. The engine calls it while
//! holding the stream's writer lock and awaits the future after releasing it, so a
//! backend with group commit can batch concurrent appends to one stream, or to
//! thousands, into one flush.

pub mod backup;
mod codec;
mod file;
mod memory;
mod plan;
#[cfg(feature = "postgres")]
mod postgres;
mod queue;
mod reserve;
mod shared;
#[cfg(feature = "postgres")]
pub use self::postgres::{PostgresConfig, PostgresStats, PostgresStorage};
#[cfg(feature = "redb")]
mod redb;
#[cfg(feature = "redb")]
pub use self::redb::RedbStorage;
pub mod testkit;

pub use file::{Compaction, CompactionReport, Durability, FileStats, FileStorage};
pub use memory::MemoryStorage;
pub use plan::{RangePlan, Take};
pub use shared::{Change, ChangeSink, SharedStorage};

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use time::OffsetDateTime;

/// How a stream expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Expiry {
    /// Never.
    #[default]
    Never,
    /// After this many seconds without a read or write.
    Ttl(u64),
    /// At this instant.
    At(OffsetDateTime),
}

/// Where a fork diverges from its source.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForkOrigin {
    /// The source stream's key.
    pub source: String,
    /// The `Stream-Fork-Offset` position the fork was created with.
    pub anchor: u64,
    /// The `Stream-Fork-Sub-Offset` it was created with.
    pub sub_offset: u64,
    /// The resolved divergence position: bytes before it come from the source.
    pub position: u64,
}

impl ForkOrigin {
    /// A fork of `source` created at `anchor` plus `sub_offset`, diverging at
    /// byte `position`.
    pub fn new(source: impl Into<String>, anchor: u64, sub_offset: u64, position: u64) -> Self {
        ForkOrigin {
            source: source.into(),
            anchor,
            sub_offset,
            position,
        }
    }
}

/// What never changes for one incarnation of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamConfig {
    /// Identifies this incarnation (a stream re-created at the same path gets a new one).
    pub id: u64,
    /// The content type given at creation.
    pub content_type: String,
    /// The expiry policy.
    pub expiry: Expiry,
    /// The fork origin, for forks.
    pub fork: Option<ForkOrigin>,
}

impl StreamConfig {
    /// The configuration of incarnation `id`: not a fork.
    ///
    /// ```
    /// use tower_durable_streams::storage::{Expiry, ForkOrigin, StreamConfig};
    ///
    /// let config = StreamConfig::new(7, "text/plain", Expiry::Ttl(60))
    ///     .with_fork(ForkOrigin::new("/source", 10, 0, 10));
    /// assert_eq!(config.fork.map(|f| f.position), Some(10));
    /// ```
    pub fn new(id: u64, content_type: impl Into<String>, expiry: Expiry) -> Self {
        StreamConfig {
            id,
            content_type: content_type.into(),
            expiry,
            fork: None,
        }
    }

    /// The same configuration for a fork with this origin.
    pub fn with_fork(mut self, origin: ForkOrigin) -> Self {
        self.fork = Some(origin);
        self
    }
}

/// An idempotent producer's state on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerState {
    /// The current epoch.
    pub epoch: u64,
    /// The highest sequence number accepted in that epoch.
    pub last_seq: u64,
}

impl ProducerState {
    /// A producer at `epoch` whose last accepted sequence number is `last_seq`.
    pub fn new(epoch: u64, last_seq: u64) -> Self {
        ProducerState { epoch, last_seq }
    }
}

/// The `(producer, epoch, seq)` that closed a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerTuple {
    /// `Producer-Id`.
    pub id: String,
    /// `Producer-Epoch`.
    pub epoch: u64,
    /// `Producer-Seq`.
    pub seq: u64,
}

impl ProducerTuple {
    /// The request of producer `id` at `epoch` with sequence number `seq`.
    pub fn new(id: impl Into<String>, epoch: u64, seq: u64) -> Self {
        ProducerTuple {
            id: id.into(),
            epoch,
            seq,
        }
    }
}

/// Everything a backend persists about one stream besides its bytes.
///
/// Backends store it as they like (the fields are public to read and to set)
/// and give it back from [`Storage::load`] and [`Storage::get`]; the engine
/// makes every decision in it. New fields may be added in minor releases, with
/// [`StreamRecord::new`] giving them their neutral value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamRecord {
    /// Immutable configuration.
    pub config: StreamConfig,
    /// Position after the last byte.
    pub tail: u64,
    /// Whether the stream is closed.
    pub closed: bool,
    /// The producer tuple whose append closed the stream, if one did.
    pub closed_by: Option<ProducerTuple>,
    /// The last accepted `Stream-Seq`.
    pub stream_seq: Option<String>,
    /// Idempotent producer state by `Producer-Id`.
    pub producers: HashMap<String, ProducerState>,
    /// Deleted by its owner but kept for the forks that read through it.
    pub soft_deleted: bool,
}

impl StreamRecord {
    /// A fresh, open, empty stream whose bytes start at `start` (non-zero for forks).
    ///
    /// ```
    /// use tower_durable_streams::storage::{Expiry, StreamConfig, StreamRecord};
    ///
    /// let mut record = StreamRecord::new(StreamConfig::new(1, "text/plain", Expiry::Never), 0);
    /// record.closed = true;
    /// assert_eq!((record.tail, record.own_start()), (0, 0));
    /// ```
    pub fn new(config: StreamConfig, start: u64) -> Self {
        Self {
            config,
            tail: start,
            closed: false,
            closed_by: None,
            stream_seq: None,
            producers: HashMap::new(),
            soft_deleted: false,
        }
    }

    /// Where this stream's own bytes start.
    pub fn own_start(&self) -> u64 {
        self.config.fork.as_ref().map_or(0, |f| f.position)
    }

    /// Applies what `append` changes (tail, `Stream-Seq`, producer state,
    /// closure), exactly as the engine does: backends that keep their own copy
    /// of the record call this after storing the append.
    pub fn apply(&mut self, append: &Append) {
        self.tail += append.data.len() as u64;
        if let Some(seq) = &append.stream_seq {
            self.stream_seq = Some(seq.clone());
        }
        if let Some((id, state)) = &append.producer {
            self.producers.insert(id.clone(), *state);
        }
        if let Some(by) = &append.close {
            self.closed = true;
            self.closed_by = by.clone();
        }
    }
}

/// One append, as the engine decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Append {
    /// The incarnation this append targets.
    pub stream_id: u64,
    /// The tail the engine expects; a backend reports [`StorageError::Conflict`] otherwise.
    pub expected_tail: u64,
    /// Wire bytes to add (possibly empty for a close-only request).
    pub data: Bytes,
    /// New `Stream-Seq`, if the request carried one.
    pub stream_seq: Option<String>,
    /// New state of the producer that sent it.
    pub producer: Option<(String, ProducerState)>,
    /// Close the stream with this append; `Some(tuple)` if a producer closed it.
    pub close: Option<Option<ProducerTuple>>,
    /// The decision does not depend on the exact tail: a backend that several
    /// instances share appends at its current tail (and reports where it
    /// ended) instead of refusing a tail other than `expected_tail`, provided
    /// the stream is still this incarnation, open and not deleted, and the
    /// state the decision read is unchanged: the producer's (`prior_producer`)
    /// when the append carries one, and `prior_stream_seq` when it carries a
    /// `Stream-Seq`. In-process backends, whose single engine always knows the
    /// tail, may ignore it.
    pub at_tail: bool,
    /// With `at_tail`: the producer's state the decision was made on (`None`:
    /// the producer was new).
    pub prior_producer: Option<ProducerState>,
    /// With `at_tail`: the `Stream-Seq` the decision compared against.
    pub prior_stream_seq: Option<String>,
}

impl Append {
    /// `data` appended to incarnation `stream_id`, expected at `expected_tail`.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use tower_durable_streams::storage::{Append, ProducerState};
    ///
    /// let append = Append::new(7, 0, Bytes::from_static(b"hello"))
    ///     .with_producer("writer-1", ProducerState::new(0, 0))
    ///     .closing(None);
    /// assert!(append.close.is_some());
    /// ```
    pub fn new(stream_id: u64, expected_tail: u64, data: Bytes) -> Self {
        Append {
            stream_id,
            expected_tail,
            data,
            stream_seq: None,
            producer: None,
            close: None,
            at_tail: false,
            prior_producer: None,
            prior_stream_seq: None,
        }
    }

    /// Lets a shared backend place the append at its current tail, given the
    /// state the decision read (see [`Append::at_tail`]).
    pub fn at_tail(
        mut self,
        prior_producer: Option<ProducerState>,
        prior_stream_seq: Option<String>,
    ) -> Self {
        self.at_tail = true;
        self.prior_producer = prior_producer;
        self.prior_stream_seq = prior_stream_seq;
        self
    }

    /// Where the stream ends after this append, if it lands at `expected_tail`.
    pub fn end(&self) -> u64 {
        self.expected_tail + self.data.len() as u64
    }

    /// Records `Stream-Seq` with the append.
    pub fn with_stream_seq(mut self, seq: impl Into<String>) -> Self {
        self.stream_seq = Some(seq.into());
        self
    }

    /// Records a producer's new state with the append.
    pub fn with_producer(mut self, id: impl Into<String>, state: ProducerState) -> Self {
        self.producer = Some((id.into(), state));
        self
    }

    /// Closes the stream with the append, naming the producer request that did.
    pub fn closing(mut self, by: Option<ProducerTuple>) -> Self {
        self.close = Some(by);
        self
    }
}

/// Bytes of a range, as the backend holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadChunk {
    /// The bytes, in order, without copying where the backend can avoid it.
    pub data: Vec<Bytes>,
    /// Position after the last returned byte.
    pub end: u64,
}

impl ReadChunk {
    /// These bytes, ending at position `end`.
    pub fn new(data: Vec<Bytes>, end: u64) -> Self {
        ReadChunk { data, end }
    }

    /// Nothing, at position `at`.
    pub fn empty(at: u64) -> Self {
        ReadChunk {
            data: Vec::new(),
            end: at,
        }
    }
}

/// How a read may cut the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cut {
    /// Anywhere (binary and text streams).
    AnyByte,
    /// Only at append boundaries, returning at least one whole record (JSON streams).
    RecordBoundary,
}

/// Creating a stream found one already there.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CreateOutcome {
    /// The stream was created.
    Created,
    /// A stream already exists at this key; here is its record.
    Exists(Box<StreamRecord>),
}

/// A failure of the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The stream does not exist (any more).
    #[error("stream not found in storage")]
    NotFound,
    /// The stream changed under the caller (another writer, another instance).
    #[error("conditional write conflict: storage is at tail {actual_tail}")]
    Conflict {
        /// The tail the backend holds.
        actual_tail: u64,
    },
    /// Stored data failed verification.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The backend is out of capacity.
    #[error("storage is full")]
    Full,
    /// An I/O error.
    #[error("storage I/O error")]
    Io(#[from] std::io::Error),
    /// The backend cannot be reached right now (a database restart, a network
    /// failure); nothing was written and the request may be retried (503).
    #[error("storage is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Any other backend error.
    #[error("storage backend error")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub(crate) fn out_of_space(e: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
}

/// Resolves once an append is durable (and may then become visible to
/// readers), with the stream's tail after it.
pub type AppendFuture = Pin<Box<dyn Future<Output = Result<u64, StorageError>> + Send + 'static>>;

/// A boxed future returned by the object-safe async methods of [`Storage`].
pub type StorageFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send + 'a>>;

/// Where streams live. Held by the engine as `Arc<dyn Storage>`.
///
/// A backend keeps what the engine decided and reports what it holds; it makes
/// no protocol decision of its own. What every backend promises (and
/// [`testkit`] checks):
///
/// - **Atomic appends.** One [`Append`] (bytes, producer state, `Stream-Seq`,
///   closure) is stored whole or not at all, so a crash never keeps data while
///   losing the dedup state that guards it.
/// - **Conditional appends.** An append whose `expected_tail` differs from the
///   stored tail, or that targets a closed stream, is refused with
///   [`StorageError::Conflict`] and changes nothing; one for another
///   incarnation (`stream_id`) or a missing stream gets
///   [`StorageError::NotFound`].
/// - **Pipelined appends.** [`append`](Storage::append) fixes the order of the
///   append when it returns; the future it returns resolves once the append is
///   durable. The engine calls it several times for one stream before awaiting
///   the first future, so each append must be checked against the state the
///   previous ones leave.
/// - **Visibility follows durability.** Once an append's future resolves, reads
///   and [`get`](Storage::get) see it, also after a restart for durable
///   backends.
/// - **Out of room is [`StorageError::Full`]**, with nothing written.
///
/// Implementations must keep blocking work off the async worker threads.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// Every stream the backend holds, for the engine's start-up.
    fn load(&self) -> StorageFuture<'_, Vec<(String, StreamRecord)>>;

    /// The current record of one stream, to refresh the engine's cached state.
    fn get<'a>(&'a self, key: &'a str) -> StorageFuture<'a, Option<StreamRecord>>;

    /// Creates the stream at `key` with `initial` bytes at its start position
    /// (`record.tail`), unless one exists there already: then nothing is
    /// written and the existing record is returned.
    fn create<'a>(
        &'a self,
        key: &'a str,
        record: StreamRecord,
        initial: Bytes,
    ) -> StorageFuture<'a, CreateOutcome>;

    /// Orders `append` after every append submitted before it for this stream and
    /// returns a future that resolves once it is durable, with the stream's
    /// tail after it ([`Append::end`] unless a shared backend placed an
    /// [`at_tail`](Append::at_tail) append elsewhere).
    fn append(&self, key: &str, append: Append) -> AppendFuture;

    /// Reads the stream's own bytes in `from..to`, up to about `max_bytes`.
    ///
    /// With [`Cut::RecordBoundary`] the result ends at an append boundary (or at
    /// `to`) and holds at least one record when `from < to`. [`RangePlan`]
    /// implements these rules over a backend's stored pieces.
    fn read<'a>(
        &'a self,
        key: &'a str,
        from: u64,
        to: u64,
        max_bytes: usize,
        cut: Cut,
    ) -> StorageFuture<'a, ReadChunk>;

    /// Marks the stream soft-deleted (kept for the forks that read through it).
    fn soft_delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()>;

    /// Removes the stream and frees its space.
    ///
    /// A backend that several instances share decides itself, atomically
    /// against fork creation, whether forks still read through the stream: it
    /// then soft-deletes it instead, removes soft-deleted sources whose last
    /// fork this delete removed, and the engine reads the record back to learn
    /// which it did. In-process backends simply remove (their engine knows
    /// every fork).
    fn delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()>;

    /// The keys of live (not soft-deleted) streams that start with `prefix`,
    /// in byte order, after `after` if given, at most `limit` of them: pages
    /// of a listing, which subscriptions use to link the streams a new
    /// pattern matches.
    ///
    /// The default reads every record with [`load`](Storage::load); a backend
    /// holding many streams should answer from an index. The engine asks only
    /// backends that several instances share (it keeps every other
    /// backend's streams in memory).
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StorageFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut keys: Vec<String> = self
                .load()
                .await?
                .into_iter()
                .filter(|(key, record)| {
                    !record.soft_deleted
                        && key.starts_with(prefix)
                        && after.is_none_or(|after| key.as_str() > after)
                })
                .map(|(key, _)| key)
                .collect();
            keys.sort_unstable();
            keys.truncate(limit);
            Ok(keys)
        })
    }

    /// The current records of several streams at once, in the order of
    /// `keys` (`None` for a missing one): what [`get`](Storage::get) gives for
    /// each. Subscriptions read the tails of all of a subscription's streams
    /// this way. The default calls `get` for each key; a backend reached
    /// over a network should answer in one round trip.
    fn get_many<'a>(&'a self, keys: &'a [String]) -> StorageFuture<'a, Vec<Option<StreamRecord>>> {
        Box::pin(async move {
            let mut records = Vec::with_capacity(keys.len());
            for key in keys {
                records.push(self.get(key).await?);
            }
            Ok(records)
        })
    }

    /// What the backend offers when several service instances share it; `None`
    /// (the default) for a backend that one process owns.
    fn shared(&self) -> Option<&dyn SharedStorage> {
        None
    }

    /// Whether the backend can serve writes now: `/readyz`-style checks call
    /// it. Defaults to always.
    fn health(&self) -> StorageFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// A shared store is a store: `Arc<MemoryStorage>`, `Arc<dyn Storage>` and the
/// like can be handed to [`Builder::storage`](crate::Builder::storage) while
/// the host keeps its own handle.
impl<T: Storage + ?Sized> Storage for std::sync::Arc<T> {
    fn load(&self) -> StorageFuture<'_, Vec<(String, StreamRecord)>> {
        (**self).load()
    }

    fn get<'a>(&'a self, key: &'a str) -> StorageFuture<'a, Option<StreamRecord>> {
        (**self).get(key)
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        record: StreamRecord,
        initial: Bytes,
    ) -> StorageFuture<'a, CreateOutcome> {
        (**self).create(key, record, initial)
    }

    fn append(&self, key: &str, append: Append) -> AppendFuture {
        (**self).append(key, append)
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        from: u64,
        to: u64,
        max_bytes: usize,
        cut: Cut,
    ) -> StorageFuture<'a, ReadChunk> {
        (**self).read(key, from, to, max_bytes, cut)
    }

    fn soft_delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()> {
        (**self).soft_delete(key)
    }

    fn delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()> {
        (**self).delete(key)
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StorageFuture<'a, Vec<String>> {
        (**self).list(prefix, after, limit)
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StorageFuture<'a, Vec<Option<StreamRecord>>> {
        (**self).get_many(keys)
    }

    fn shared(&self) -> Option<&dyn SharedStorage> {
        (**self).shared()
    }

    fn health(&self) -> StorageFuture<'_, ()> {
        (**self).health()
    }
}
