//! What a backend shared by several service instances offers the engine.
//!
//! With one process, the engine's cached state is the truth. With several
//! instances over one database, the database is the truth and each engine's
//! state is a cache of it: appends are conditional (a stale cache gets
//! [`StorageError::Conflict`](super::StorageError::Conflict) and refreshes),
//! reads ask for the current tail, and what other instances change reaches the
//! engine through a [`ChangeSink`]. Work that must happen once (the expiry
//! sweep) is done by the instance that holds a lease.

use std::sync::Arc;

use super::StorageFuture;

/// A change another instance made to one stream, or news that changes may
/// have been missed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// New bytes (or closure) are durable: the stream's tail and closed flag
    /// now. Live readers are woken with this alone.
    Appended {
        /// The stream.
        key: String,
        /// Its incarnation.
        stream_id: u64,
        /// The durable tail.
        tail: u64,
        /// Whether it is closed.
        closed: bool,
    },
    /// Created, deleted, soft-deleted or expired: read its record again.
    Changed {
        /// The stream.
        key: String,
    },
    /// Changes may have been lost (the listener reconnected): read again every
    /// stream that has live readers.
    Resync,
}

impl Change {
    /// Another instance appended to (or closed) `key`.
    pub fn appended(key: impl Into<String>, stream_id: u64, tail: u64, closed: bool) -> Self {
        Change::Appended {
            key: key.into(),
            stream_id,
            tail,
            closed,
        }
    }

    /// Another instance created, deleted or otherwise changed `key`.
    pub fn changed(key: impl Into<String>) -> Self {
        Change::Changed { key: key.into() }
    }
}

/// Where a shared backend reports [`Change`]s; the engine implements it.
pub trait ChangeSink: Send + Sync {
    /// Takes one change. Called from the backend's listener task: it must not
    /// block.
    fn change(&self, change: Change);
}

/// The multi-instance side of a backend that several service instances share
/// (returned by [`Storage::shared`](super::Storage::shared)).
pub trait SharedStorage: Send + Sync {
    /// Registers where changes made by other instances are reported.
    fn watch(&self, sink: Arc<dyn ChangeSink>);

    /// Whether this instance holds the lease for `task` (taking it if it is
    /// free): only the holder runs the task, and another instance takes over
    /// when the holder is gone.
    fn lead(&self, task: &'static str) -> StorageFuture<'_, bool>;

    /// Records that these streams were used just now, for sliding TTLs that
    /// every instance honours. The engine calls it about once per sweep
    /// interval with what it used since.
    fn touch<'a>(&'a self, keys: &'a [String]) -> StorageFuture<'a, ()>;

    /// Up to `limit` streams whose expiry has passed by the shared clock.
    fn expired(&self, limit: usize) -> StorageFuture<'_, Vec<String>>;

    /// Removes `key`, or soft-deletes it while forks read through it, if its
    /// expiry has passed by the shared clock; whether it did.
    fn expire<'a>(&'a self, key: &'a str) -> StorageFuture<'a, bool>;
}
