//! Streams from host code: create, append, close and read without an HTTP
//! round trip, on the engine the HTTP service uses.
//!
//! [`DurableStreamsService::streams`](crate::DurableStreamsService::streams)
//! hands out a [`Streams`] handle. Every rule is the one HTTP clients get
//! (the same [`StreamError`] for the same mistake), appends wake the service's
//! long-poll and SSE readers at once, and paths are the ones HTTP clients use
//! below the mount point (`/chats/42` for `…/v1/stream/chats/42`). The
//! [`authorize`](crate::Builder::authorize) hook is not asked: host code is
//! trusted.
//!
//! ```
//! use tower_durable_streams::streams::{AppendOptions, CreateOptions, Producer};
//! use tower_durable_streams::{DurableStreamsService, Offset};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_durable_streams::StreamError> {
//! let service = DurableStreamsService::builder().build().unwrap();
//! let streams = service.streams();
//! streams.create("/jobs/7/log", CreateOptions::new().content_type("text/plain")).await?;
//! streams.append("/jobs/7/log", "started\n").await?;
//! // An idempotent producer: a retry of (epoch 0, seq 0) is not written twice.
//! let write = AppendOptions::new("done\n").producer(Producer::new("job-7", 0, 0));
//! streams.append_with("/jobs/7/log", write.clone()).await?;
//! assert!(streams.append_with("/jobs/7/log", write).await?.duplicate());
//! streams.close("/jobs/7/log").await?;
//!
//! let chunk = streams.read("/jobs/7/log", Offset::START).await?;
//! assert_eq!(chunk.to_bytes(), "started\ndone\n");
//! assert!(chunk.up_to_date() && chunk.closed());
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use time::OffsetDateTime;

use crate::engine::{
    AppendKind, AppendRequest, BodyType, CreateRequest, Engine, ForkRequest, Key, ReadResult,
    StreamError, View,
};
use crate::protocol::{is_json, json_read_frame, Offset, ProducerHeaders, ReadFrom};
use crate::storage::Expiry;

/// A handle to the streams of one service, for host code. Cheap to clone.
///
/// See the [module documentation](self).
#[derive(Clone)]
pub struct Streams {
    engine: Arc<Engine>,
}

impl fmt::Debug for Streams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streams").finish_non_exhaustive()
    }
}

/// How to create a stream: its content type, expiry, initial data, closure and
/// fork origin. [`CreateOptions::new`] is an open, empty
/// `application/octet-stream` stream that never expires.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct CreateOptions {
    request: CreateRequest,
    fork: Option<(String, Option<Offset>, u64)>,
}

impl CreateOptions {
    /// An open, empty stream of `application/octet-stream` (a fork: of its
    /// source's content type) that never expires.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stream's content type. `application/json` streams hold JSON
    /// messages (the protocol's JSON mode).
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.request.content_type = Some(content_type.into());
        self
    }

    /// Expires after this long without a read or write (`Stream-TTL`, whole
    /// seconds, rounded up).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        self.request.expiry = Expiry::Ttl(secs);
        self
    }

    /// Expires at this instant (`Stream-Expires-At`), which must be in the
    /// future.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.request.expiry = Expiry::At(OffsetDateTime::from(at));
        self
    }

    /// The stream's first bytes.
    pub fn data(mut self, data: impl Into<Bytes>) -> Self {
        self.request.body = data.into();
        self
    }

    /// Creates the stream closed.
    pub fn closed(mut self) -> Self {
        self.request.closed = true;
        self
    }

    /// Creates a fork of `source` (a path like the stream's own) at its
    /// current tail, or at [`fork_offset`](Self::fork_offset).
    pub fn fork_of(mut self, source: impl Into<String>) -> Self {
        let (_, offset, sub) = self.fork.take().unwrap_or_default();
        self.fork = Some((source.into(), offset, sub));
        self
    }

    /// Where the fork diverges from its source (`Stream-Fork-Offset`).
    pub fn fork_offset(mut self, offset: Offset) -> Self {
        let (source, _, sub) = self.fork.take().unwrap_or_default();
        self.fork = Some((source, Some(offset), sub));
        self
    }

    /// Bytes, or JSON messages, past the fork offset (`Stream-Fork-Sub-Offset`).
    pub fn fork_sub_offset(mut self, sub_offset: u64) -> Self {
        let (source, offset, _) = self.fork.take().unwrap_or_default();
        self.fork = Some((source, offset, sub_offset));
        self
    }
}

/// An idempotent producer's request: `Producer-Id`, `Producer-Epoch` and
/// `Producer-Seq` (section 5.2.1 of the protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Producer {
    /// The producer's identifier.
    pub id: String,
    /// Its epoch; a new epoch fences off older ones.
    pub epoch: u64,
    /// The sequence number of this request within the epoch, from 0.
    pub seq: u64,
}

impl Producer {
    /// Request `seq` of producer `id` in `epoch`.
    pub fn new(id: impl Into<String>, epoch: u64, seq: u64) -> Self {
        Producer {
            id: id.into(),
            epoch,
            seq,
        }
    }
}

/// What to append: data, and optionally a content type, a producer, a
/// `Stream-Seq` and closure.
#[derive(Debug, Clone)]
#[must_use]
pub struct AppendOptions {
    request: AppendRequest,
}

impl AppendOptions {
    /// Appends `data` (of the stream's own content type unless
    /// [`content_type`](Self::content_type) says otherwise). Empty data is
    /// only allowed with [`close`](Self::close).
    pub fn new(data: impl Into<Bytes>) -> Self {
        AppendOptions {
            request: AppendRequest {
                content_type: BodyType::Stream,
                body: data.into(),
                ..AppendRequest::default()
            },
        }
    }

    /// Declares the data's content type, which must match the stream's.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.request.content_type = BodyType::Given(content_type.into());
        self
    }

    /// Sends the append as an idempotent producer's request.
    pub fn producer(mut self, producer: Producer) -> Self {
        self.request.producer = Some(ProducerHeaders {
            id: producer.id,
            epoch: producer.epoch,
            seq: producer.seq,
        });
        self
    }

    /// The writer's `Stream-Seq`, which must be greater than the last one.
    pub fn stream_seq(mut self, seq: impl Into<String>) -> Self {
        self.request.stream_seq = Some(seq.into());
        self
    }

    /// Closes the stream with this append.
    pub fn close(mut self) -> Self {
        self.request.close = true;
        self
    }
}

/// A stream's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamInfo {
    /// Its content type.
    pub content_type: String,
    /// Where the next append will start (`Stream-Next-Offset`).
    pub next_offset: Offset,
    /// Whether it is closed.
    pub closed: bool,
    /// Whether the call created it (`false`: it existed with the same
    /// configuration). Always `false` from [`Streams::head`].
    pub created: bool,
}

/// The answer to an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Appended {
    /// Where the next append will start.
    pub next_offset: Offset,
    /// Whether the stream is now closed.
    pub closed: bool,
    duplicate: bool,
}

impl Appended {
    /// Whether this was a producer's retry of an append already written (or a
    /// close of a closed stream): nothing new was written.
    pub fn duplicate(&self) -> bool {
        self.duplicate
    }
}

/// Bytes read from a stream, as an HTTP catch-up read returns them (a JSON
/// stream's messages as one JSON array).
#[derive(Debug, Clone)]
pub struct Chunk {
    data: Vec<Bytes>,
    next_offset: Offset,
    up_to_date: bool,
    closed: bool,
}

impl Chunk {
    fn of(result: ReadResult) -> Self {
        let up_to_date = result.up_to_date();
        Chunk {
            next_offset: Offset::new(result.end),
            up_to_date,
            closed: result.closed && up_to_date,
            data: if is_json(&result.config.content_type) {
                json_read_frame(result.data)
            } else {
                result.data
            },
        }
    }

    /// The bytes, as the pieces storage holds them (no copy).
    pub fn chunks(&self) -> &[Bytes] {
        &self.data
    }

    /// The bytes in one buffer (one copy when there are several pieces).
    pub fn to_bytes(&self) -> Bytes {
        match self.data.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut out = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
                many.iter().for_each(|piece| out.extend_from_slice(piece));
                out.freeze()
            }
        }
    }

    /// Whether no bytes were returned.
    pub fn is_empty(&self) -> bool {
        self.data.iter().all(Bytes::is_empty)
    }

    /// Where to read next.
    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    /// Whether the read reached the stream's tail.
    pub fn up_to_date(&self) -> bool {
        self.up_to_date
    }

    /// Whether the stream is closed and this read reached its end: nothing
    /// will ever follow.
    pub fn closed(&self) -> bool {
        self.closed
    }
}

impl Streams {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Streams { engine }
    }

    /// Creates a stream, or confirms an existing one with the same
    /// configuration (`created` is `false` then); a different one is a
    /// [`StreamError::Conflict`].
    pub async fn create(
        &self,
        path: &str,
        options: CreateOptions,
    ) -> Result<StreamInfo, StreamError> {
        let key = Key::parse(path)?;
        let mut request = options.request;
        if let Some((source, offset, sub_offset)) = options.fork {
            if source.is_empty() {
                return Err(StreamError::invalid(
                    "fork_offset and fork_sub_offset need fork_of",
                ));
            }
            request.fork = Some(ForkRequest {
                source: Key::parse(&source)?,
                offset: offset.map(Offset::position),
                sub_offset,
            });
        }
        let created = self.engine.create(&key, request).await?;
        Ok(StreamInfo {
            content_type: created.config.content_type.clone(),
            next_offset: Offset::new(created.tail),
            closed: created.closed,
            created: created.created,
        })
    }

    /// Appends `data` in the stream's own content type.
    pub async fn append(
        &self,
        path: &str,
        data: impl Into<Bytes>,
    ) -> Result<Appended, StreamError> {
        self.append_with(path, AppendOptions::new(data)).await
    }

    /// Appends as `options` say: with a producer, a `Stream-Seq`, closure.
    pub async fn append_with(
        &self,
        path: &str,
        options: AppendOptions,
    ) -> Result<Appended, StreamError> {
        let key = Key::parse(path)?;
        let appended = self.engine.append(&key, options.request).await?;
        Ok(Appended {
            next_offset: Offset::new(appended.tail),
            closed: appended.closed,
            duplicate: appended.kind != AppendKind::Written,
        })
    }

    /// Closes the stream (idempotent).
    pub async fn close(&self, path: &str) -> Result<Appended, StreamError> {
        self.append_with(path, AppendOptions::new(Bytes::new()).close())
            .await
    }

    /// Reads from `from` ([`Offset::START`] for the beginning), as much as one
    /// HTTP catch-up read returns; renews a sliding TTL.
    pub async fn read(&self, path: &str, from: Offset) -> Result<Chunk, StreamError> {
        let key = Key::parse(path)?;
        let read = self.engine.read(&key, ReadFrom::At(from)).await?;
        Ok(Chunk::of(read))
    }

    /// Reads from `from`, waiting up to `timeout` for data if there is none
    /// yet (a long-poll): the chunk is empty and up to date if none came, and
    /// closed if the stream was closed at `from`.
    pub async fn wait(
        &self,
        path: &str,
        from: Offset,
        timeout: Duration,
    ) -> Result<Chunk, StreamError> {
        let key = Key::parse(path)?;
        let mut rx = self.engine.subscribe(&key).await?;
        let first = self.engine.read(&key, ReadFrom::At(from)).await?;
        if first.end > first.start || first.closed {
            return Ok(Chunk::of(first));
        }
        let (config, position) = (first.config.clone(), first.start);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Err(_) => return Ok(Chunk::of(first)),
                Ok(Err(_)) => return Err(StreamError::NotFound),
                Ok(Ok(())) => {}
            }
            let view: View = rx.borrow_and_update().clone();
            match &view.config {
                Some(c) if c.id == config.id && view.soft_deleted => return Err(StreamError::Gone),
                Some(c) if c.id == config.id => {}
                _ => return Err(StreamError::NotFound),
            }
            if view.tail > position || view.closed {
                let read = self
                    .engine
                    .read_live(&key, &config, position, &view)
                    .await?;
                return Ok(Chunk::of(read));
            }
        }
    }

    /// The stream's metadata; does not renew a sliding TTL.
    pub async fn head(&self, path: &str) -> Result<StreamInfo, StreamError> {
        let key = Key::parse(path)?;
        let view = self.engine.head(&key).await?;
        let config = view.config.ok_or(StreamError::NotFound)?;
        Ok(StreamInfo {
            content_type: config.content_type.clone(),
            next_offset: Offset::new(view.tail),
            closed: view.closed,
            created: false,
        })
    }

    /// Deletes the stream (kept as deleted while forks read through it).
    pub async fn delete(&self, path: &str) -> Result<(), StreamError> {
        let key = Key::parse(path)?;
        self.engine.delete(&key).await.map(drop)
    }
}
