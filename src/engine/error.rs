//! Why an operation on a stream was refused.

use crate::protocol::{JsonError, Offset};
use crate::storage::StorageError;

/// Why an operation on a stream was refused: one variant per protocol answer,
/// the same whether the request came over HTTP or through
/// [`Streams`](crate::Streams). [`status`](StreamError::status) and
/// [`code`](StreamError::code) give the HTTP status and the stable problem code
/// the service answers with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// No such stream (404).
    #[error("stream not found")]
    NotFound,
    /// The stream was deleted but forks still read through it (410).
    #[error("stream has been deleted")]
    Gone,
    /// The path is under `__ds`, which the protocol reserves for its control
    /// APIs (404).
    #[error("paths under __ds are reserved for Durable Streams control APIs")]
    Reserved,
    /// The request is malformed (400): a bad path, content type, offset, body
    /// or expiry.
    #[error("{0}")]
    Invalid(String),
    /// A create conflicts with the existing stream's configuration, or a fork
    /// with its source (409).
    #[error("{0}")]
    Conflict(String),
    /// An append to a closed stream (409 with `Stream-Closed`).
    #[error("stream is closed")]
    #[non_exhaustive]
    Closed {
        /// The final tail.
        next_offset: Offset,
    },
    /// The append's content type differs from the stream's (409).
    #[error("content type {given} does not match the stream's {expected}")]
    #[non_exhaustive]
    ContentTypeMismatch {
        /// The stream's content type.
        expected: String,
        /// The request's content type.
        given: String,
    },
    /// `Stream-Seq` did not increase (409).
    #[error("Stream-Seq {given:?} is not greater than the last accepted {last:?}")]
    #[non_exhaustive]
    SeqRegression {
        /// The last accepted value.
        last: String,
        /// The request's value.
        given: String,
    },
    /// The producer's epoch is stale (403).
    #[error("producer epoch is stale; current epoch is {current}")]
    #[non_exhaustive]
    StaleEpoch {
        /// The server's epoch for this producer.
        current: u64,
    },
    /// A new epoch did not start at sequence 0 (400).
    #[error("a new producer epoch must start at Producer-Seq 0")]
    NewEpochNotAtZero,
    /// Producer sequence numbers were skipped (409).
    #[error("producer sequence gap: expected {expected}, received {received}")]
    #[non_exhaustive]
    SequenceGap {
        /// Expected sequence.
        expected: u64,
        /// Received sequence.
        received: u64,
    },
    /// The append would make the stream longer than the configured maximum (413).
    #[error("the append would make the stream longer than {limit} bytes")]
    #[non_exhaustive]
    StreamTooLarge {
        /// The per-stream limit.
        limit: u64,
    },
    /// The storage backend is out of room; nothing was written (507).
    #[error("the storage backend is full; nothing was written")]
    Full,
    /// The storage backend cannot be reached right now; nothing was written
    /// and the request may be retried (503 with `Retry-After`).
    #[error("storage is unavailable; retry shortly")]
    Unavailable(#[source] StorageError),
    /// Other instances kept changing the stream while this one tried to
    /// append; nothing was written (503 with `Retry-After`).
    #[error("the stream is changing too fast to append to; retry shortly")]
    Contended,
    /// The storage layer failed (500).
    #[error("storage failure")]
    Storage(#[source] StorageError),
}

impl StreamError {
    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        StreamError::Invalid(detail.into())
    }

    /// The error of a failed storage call: a vanished stream is `NotFound`, a
    /// full backend `Full`.
    pub(crate) fn storage(error: StorageError) -> Self {
        match error {
            StorageError::NotFound => StreamError::NotFound,
            other => other.into(),
        }
    }
}

impl From<StorageError> for StreamError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Full => StreamError::Full,
            e @ StorageError::Unavailable(_) => StreamError::Unavailable(e),
            other => StreamError::Storage(other),
        }
    }
}

impl From<JsonError> for StreamError {
    fn from(e: JsonError) -> Self {
        StreamError::Invalid(e.to_string())
    }
}
