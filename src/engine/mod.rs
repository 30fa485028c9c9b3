//! Protocol semantics, once for every backend and every caller.
//!
//! The engine serializes mutations per stream (one async writer lock each, none
//! global), enforces the stream-name grammar, content types, `Stream-Seq`,
//! idempotent producers, closure, TTL and expiry, forks with reference counts
//! and soft delete, and publishes each stream's durable tail on a
//! `tokio::sync::watch` channel that wakes every live reader with one send. It
//! knows nothing of HTTP: the service and the in-process [`Streams`] handle
//! both call it and get the same answers.
//!
//! [`Streams`]: crate::Streams
//!
//! - `registry`: the sharded map of stream handles, their locks and loading;
//! - `create`, `append`, `read`, `lifecycle` (delete, expiry, the sweeper):
//!   the operations;
//! - `rules`: stream names, content types and expiry; `producer`: the
//!   idempotent-producer state machine.

mod append;
mod create;
mod error;
mod lifecycle;
mod producer;
mod read;
mod registry;
#[cfg(feature = "subscriptions")]
pub(crate) use registry::now_ms;
mod rules;
mod sync;

pub use error::StreamError;
pub(crate) use rules::Key;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::protocol::ProducerHeaders;
use crate::storage::{Expiry, Storage, StreamConfig, StreamRecord};
use lifecycle::Sweeper;
use registry::Registry;

/// What readers can see of a stream; published on its watch channel.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
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

/// A request to create a stream or a fork.
#[derive(Debug, Clone, Default)]
pub(crate) struct CreateRequest {
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
#[derive(Debug, Clone)]
pub(crate) struct ForkRequest {
    /// The source stream.
    pub source: Key,
    /// `Stream-Fork-Offset` position; the source's tail when absent.
    pub offset: Option<u64>,
    /// `Stream-Fork-Sub-Offset`.
    pub sub_offset: u64,
}

/// The result of a create.
#[derive(Debug, Clone)]
pub(crate) struct Created {
    /// `true` for 201, `false` for an idempotent 200.
    pub created: bool,
    /// The stream's configuration.
    pub config: Arc<StreamConfig>,
    /// Its tail.
    pub tail: u64,
    /// Whether it is closed.
    pub closed: bool,
}

/// Which content type an append's body is declared as.
#[derive(Debug, Clone, Default)]
pub(crate) enum BodyType {
    /// As the request said (`Content-Type`); a body without one is refused.
    #[default]
    Missing,
    /// This one, which must match the stream's.
    Given(String),
    /// The stream's own (in-process appends that name none).
    Stream,
}

/// A request to append to (and possibly close) a stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct AppendRequest {
    /// The body's content type.
    pub content_type: BodyType,
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
pub(crate) enum AppendKind {
    /// New data (or a new close) was written.
    Written,
    /// A producer retry of something already written.
    Duplicate,
    /// A close-only request on a stream that was already closed.
    AlreadyClosed,
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
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
pub(crate) struct ReadResult {
    /// The stream's configuration.
    pub config: Arc<StreamConfig>,
    /// Position of the first returned byte.
    pub start: u64,
    /// Position after the last returned byte.
    pub end: u64,
    /// Position the whole answer reaches: `end`, or further for a catch-up
    /// whose rest is read with [`Engine::read_more`] as the body drains.
    pub stop: u64,
    /// The tail when the read was made.
    pub tail: u64,
    /// Whether the stream was closed when the read was made.
    pub closed: bool,
    /// The bytes.
    pub data: Vec<Bytes>,
    /// What a live reader made of this result (an SSE response's data event,
    /// and the position it ends at), kept for the other readers woken by the
    /// same append: they share the result, so each range is framed once.
    pub framed: Arc<std::sync::OnceLock<(u64, Bytes)>>,
}

impl ReadResult {
    /// Whether this read (with its rest) reaches the tail.
    pub fn up_to_date(&self) -> bool {
        self.stop >= self.tail
    }
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deleted {
    /// Removed.
    Removed,
    /// Kept as soft-deleted for the forks that read through it.
    SoftDeleted,
}

/// The engine's settings.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// The most bytes one storage read returns (one step of an answer).
    pub max_read_bytes: usize,
    /// The most stream bytes one catch-up answer carries.
    pub max_response_bytes: u64,
    /// The longest a stream may grow.
    pub max_stream_bytes: u64,
    /// How often expired streams nobody touches are removed.
    pub sweep_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_read_bytes: 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
            max_stream_bytes: u64::MAX,
            sweep_interval: Duration::from_secs(1),
        }
    }
}

/// The protocol engine over one storage backend.
pub(crate) struct Engine {
    storage: Arc<dyn Storage>,
    /// Several instances share the storage: it, not this cache, is the truth.
    shared: bool,
    registry: Registry,
    loaded: OnceCell<()>,
    limits: Limits,
    sweeper: Sweeper,
    /// Told of every append and of creates with data.
    #[cfg(feature = "subscriptions")]
    observer: std::sync::OnceLock<Arc<dyn AppendObserver>>,
}

/// Told of data written to a stream (the subscriptions' hook): `before` and
/// `after` are the stream's tail around the write. Called on the writer's
/// task after the write is durable; it must not block.
#[cfg(feature = "subscriptions")]
pub(crate) trait AppendObserver: Send + Sync {
    fn appended(&self, key: &Key, stream: u64, before: u64, after: u64);
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("storage", &self.storage)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Whether several instances share the storage.
    #[cfg(feature = "subscriptions")]
    pub(crate) fn is_shared(&self) -> bool {
        self.shared
    }

    /// The keys of live streams that start with `prefix`, in byte order, at
    /// most `limit` (and whether there were more): from the registry, which
    /// holds every stream of a backend one process owns, or page by page
    /// from shared storage.
    #[cfg(feature = "subscriptions")]
    pub(crate) async fn list(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<(Vec<Key>, bool), StreamError> {
        self.ready().await?;
        if !self.shared {
            let mut keys = self
                .registry
                .scan(|_, _| true)
                .into_iter()
                .filter(|k| k.as_str().starts_with(prefix))
                .collect::<Vec<_>>();
            keys.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
            let more = keys.len() > limit;
            keys.truncate(limit);
            return Ok((keys, more));
        }
        const PAGE: usize = 1_000;
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let want = PAGE.min(limit.saturating_add(1) - keys.len());
            let page = self.storage.list(prefix, after.as_deref(), want).await?;
            let full = page.len() == want;
            after = page.last().cloned();
            keys.extend(page.into_iter().map(Key::trusted));
            if keys.len() > limit {
                keys.truncate(limit);
                return Ok((keys, true));
            }
            if !full {
                return Ok((keys, false));
            }
        }
    }

    /// The tails and incarnations of those of `keys` that are live streams:
    /// from the registry for a backend one process owns, in one storage
    /// read per 1,000 keys for shared storage (where a stream's head would
    /// be a storage read each).
    #[cfg(feature = "subscriptions")]
    pub(crate) async fn tails(&self, keys: &[Key]) -> Result<Vec<Option<(u64, u64)>>, StreamError> {
        self.ready().await?;
        if !self.shared {
            let mut tails = Vec::with_capacity(keys.len());
            for key in keys {
                tails.push(match self.head(key).await {
                    Ok(view) => view.config.map(|config| (view.tail, config.id)),
                    Err(StreamError::NotFound | StreamError::Gone) => None,
                    Err(e) => return Err(e),
                });
            }
            return Ok(tails);
        }
        let mut tails = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(1_000) {
            let names: Vec<String> = chunk.iter().map(|k| k.as_str().to_owned()).collect();
            let records = self.storage.get_many(&names).await?;
            tails.extend(records.into_iter().map(|record| {
                record
                    .filter(|r| !r.soft_deleted)
                    .map(|r| (r.tail, r.config.id))
            }));
        }
        Ok(tails)
    }

    /// Sets the observer of appends; `false` if one is set already.
    #[cfg(feature = "subscriptions")]
    pub(crate) fn observe(&self, observer: Arc<dyn AppendObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// Tells the observer, if any, of a write.
    #[inline]
    fn observed(&self, key: &Key, stream: u64, before: u64, after: u64) {
        #[cfg(feature = "subscriptions")]
        if let Some(observer) = self.observer.get() {
            if after > before {
                observer.appended(key, stream, before, after);
            }
        }
        #[cfg(not(feature = "subscriptions"))]
        let _ = (key, stream, before, after);
    }

    /// An engine over `storage`. Its expiry sweeper stops when `shutdown` is
    /// cancelled or the engine is dropped.
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        limits: Limits,
        shutdown: &CancellationToken,
    ) -> Arc<Self> {
        Arc::new_cyclic(|weak| {
            let shared = match storage.shared() {
                Some(shared) => {
                    shared.watch(Arc::new(sync::Sink(weak.clone())));
                    true
                }
                None => false,
            };
            Engine {
                shared,
                storage,
                registry: Registry::default(),
                loaded: OnceCell::new(),
                sweeper: Sweeper::new(weak.clone(), limits.sweep_interval, shutdown.child_token()),
                #[cfg(feature = "subscriptions")]
                observer: std::sync::OnceLock::new(),
                limits: Limits {
                    max_read_bytes: limits.max_read_bytes.max(1),
                    max_response_bytes: limits.max_response_bytes.max(1),
                    ..limits
                },
            }
        })
    }

    /// Whether the storage can serve writes now.
    pub(crate) async fn health(&self) -> Result<(), StreamError> {
        self.storage.health().await.map_err(StreamError::storage)
    }

    /// Whether a stream may grow to `tail`. The service's own streams under
    /// `__ds` (the subscription log, which compacts itself) are exempt.
    fn check_size(&self, key: &Key, tail: u64) -> Result<(), StreamError> {
        if tail > self.limits.max_stream_bytes && !key.as_str().starts_with("/__ds/") {
            Err(StreamError::StreamTooLarge {
                limit: self.limits.max_stream_bytes,
            })
        } else {
            Ok(())
        }
    }

    /// Loads every stream from storage (once; later calls return at once) and
    /// makes sure the expiry sweeper runs on the current runtime.
    pub(crate) async fn ready(&self) -> Result<(), StreamError> {
        self.sweeper.ensure_running();
        if self.loaded.initialized() {
            return Ok(());
        }
        self.loaded
            .get_or_try_init(|| self.load())
            .await
            .map(|_| ())
    }
}
