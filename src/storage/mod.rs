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
mod queue;
#[cfg(feature = "redb")]
mod redb;
#[cfg(feature = "redb")]
pub use self::redb::RedbStorage;
pub mod testkit;

pub(crate) use codec::apply_append;
pub use file::{Durability, FileStats, FileStorage};
pub use memory::MemoryStorage;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use time::OffsetDateTime;

/// How a stream expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

/// What never changes for one incarnation of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// An idempotent producer's state on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerState {
    /// The current epoch.
    pub epoch: u64,
    /// The highest sequence number accepted in that epoch.
    pub last_seq: u64,
}

/// The `(producer, epoch, seq)` that closed a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerTuple {
    /// `Producer-Id`.
    pub id: String,
    /// `Producer-Epoch`.
    pub epoch: u64,
    /// `Producer-Seq`.
    pub seq: u64,
}

/// Everything a backend persists about one stream besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// One append, as the engine decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// Bytes of a range, as the backend holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadChunk {
    /// The bytes, in order, without copying where the backend can avoid it.
    pub data: Vec<Bytes>,
    /// Position after the last returned byte.
    pub end: u64,
}

/// How a read may cut the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Anywhere (binary and text streams).
    AnyByte,
    /// Only at append boundaries, returning at least one whole record (JSON streams).
    RecordBoundary,
}

/// Creating a stream found one already there.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Any other backend error.
    #[error("storage backend error")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Resolves once an append is durable (and may then become visible to readers).
pub type AppendFuture = Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send + 'static>>;

/// A boxed future returned by the object-safe async methods of [`Storage`].
pub type StorageFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send + 'a>>;

/// Where streams live. Held by the engine as `Arc<dyn Storage>`.
///
/// Implementations must keep blocking work off the async worker threads.
/// [`testkit`] checks a backend's behaviour.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// Every stream the backend holds, for the engine's start-up.
    fn load(&self) -> StorageFuture<'_, Vec<(String, StreamRecord)>>;

    /// The current record of one stream, to refresh the engine's cached state.
    fn get<'a>(&'a self, key: &'a str) -> StorageFuture<'a, Option<StreamRecord>>;

    /// Creates the stream at `key` with `initial` bytes at its start position,
    /// unless one exists there already.
    fn create<'a>(
        &'a self,
        key: &'a str,
        record: StreamRecord,
        initial: Bytes,
    ) -> StorageFuture<'a, CreateOutcome>;

    /// Orders `append` after every append submitted before it for this stream and
    /// returns a future that resolves once it is durable.
    fn append(&self, key: &str, append: Append) -> AppendFuture;

    /// Reads the stream's own bytes in `from..to`, up to about `max_bytes`.
    ///
    /// With [`Cut::RecordBoundary`] the result ends at an append boundary (or at
    /// `to`) and holds at least one record when `from < to`.
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
    fn delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()>;
}
