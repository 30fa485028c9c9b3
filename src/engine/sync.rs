//! Keeping the engine's cache true to its storage: loading streams on a miss,
//! reloading a record after a failed or conflicting write, and, over a backend
//! that several instances share, taking in what the others changed.
//!
//! With a backend one process owns, the cache is the truth and only failures
//! send the engine back to storage. With a shared one the database is the
//! truth: a miss is looked up, catch-up reads and `HEAD` first learn the
//! current tail, creates and deletes reload the record under the writer lock,
//! a conditional append that conflicts reloads and decides again, and the
//! [`ChangeSink`] moves tails forward (waking live readers) as other
//! instances' appends commit.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::registry::{Handle, OwnedWriter};
use super::{Engine, Key, StreamError};
use crate::storage::{Change, ChangeSink, StreamRecord};

impl Engine {
    /// The handle of `key`: cached, or (shared storage) loaded on a miss.
    pub(super) async fn find(&self, key: &Key) -> Result<Option<Arc<Handle>>, StreamError> {
        if let Some(handle) = self.registry.existing(key) {
            return Ok(Some(handle));
        }
        if !self.shared {
            return Ok(None);
        }
        match self.storage.get(key).await.map_err(StreamError::storage)? {
            Some(record) => Ok(Some(self.registry.adopt(key, record))),
            None => Ok(None),
        }
    }

    /// Locks the writer of an existing stream's handle, loading it first on a
    /// miss (shared storage).
    pub(super) async fn lock_existing(
        &self,
        key: &Key,
    ) -> Result<Option<(Arc<Handle>, OwnedWriter)>, StreamError> {
        if self.find(key).await?.is_none() {
            return Ok(None);
        }
        Ok(self.registry.lock(key, false).await)
    }

    /// Reloads the locked stream's record from storage (shared storage, or a
    /// cache marked stale by a failure) and publishes it. On failure the
    /// handle stays stale, and waiters on earlier writes are told.
    pub(super) async fn reload_locked(
        &self,
        key: &Key,
        handle: &Arc<Handle>,
        writer: &mut OwnedWriter,
    ) -> Result<(), StreamError> {
        match self.storage.get(key).await {
            Ok(record) => {
                install(handle, writer, record);
                Ok(())
            }
            Err(e) => {
                handle.failed();
                Err(StreamError::storage(e))
            }
        }
    }

    /// Reloads under the writer lock when the cache cannot be trusted: always
    /// with shared storage, else only after a failure marked it stale.
    pub(super) async fn sync_locked(
        &self,
        key: &Key,
        handle: &Arc<Handle>,
        writer: &mut OwnedWriter,
    ) -> Result<(), StreamError> {
        if self.shared || handle.stale.load(Ordering::Acquire) {
            self.reload_locked(key, handle, writer).await
        } else {
            Ok(())
        }
    }

    /// Shared storage: learns the stream's current state before a read or
    /// `HEAD`, so that an append acknowledged by any instance is seen.
    pub(super) async fn sync_view(
        &self,
        key: &Key,
        handle: &Arc<Handle>,
    ) -> Result<(), StreamError> {
        if !self.shared && !handle.stale.load(Ordering::Acquire) {
            return Ok(());
        }
        let record = self.storage.get(key).await.map_err(StreamError::storage)?;
        let same = {
            let view = handle.view.borrow();
            match (&record, &view.config) {
                (Some(r), Some(c)) => r.config.id == c.id && r.soft_deleted == view.soft_deleted,
                _ => false,
            }
        };
        match record {
            // The same incarnation: only its tail and closure can have moved.
            Some(r) if same => {
                advance(handle, r.config.id, r.tail, r.closed);
                Ok(())
            }
            // Created, deleted or replaced elsewhere: reload under the lock.
            _ => {
                if let Some((handle, mut writer)) = self.registry.lock(key, false).await {
                    self.reload_locked(key, &handle, &mut writer).await?;
                    self.registry.forget_locked(key, &handle, &writer);
                }
                Ok(())
            }
        }
    }

    /// Reloads `key` if this engine has it cached (a change elsewhere).
    pub(super) async fn reload(&self, key: &Key) {
        let Some((handle, mut writer)) = self.registry.lock(key, false).await else {
            return;
        };
        if let Err(e) = self.reload_locked(key, &handle, &mut writer).await {
            tracing::debug!(stream = %key, error = %e, "could not reload a stream changed elsewhere");
        }
        self.registry.forget_locked(key, &handle, &writer);
    }
}

impl Engine {
    /// Notes a read or write of the stream: renews a sliding TTL, and with
    /// shared storage keeps its cached state from being evicted.
    pub(super) fn used(&self, handle: &Handle, config: &crate::storage::StreamConfig) {
        if self.shared {
            handle.touch();
        } else {
            handle.touch_for(config);
        }
    }
}

/// Sets the locked record and publishes it to readers.
pub(super) fn install(
    handle: &Arc<Handle>,
    writer: &mut OwnedWriter,
    record: Option<StreamRecord>,
) {
    writer.get_mut().record = record;
    handle.stale.store(false, Ordering::Release);
    handle.publish(writer.get().record.as_ref());
}

/// Moves a stream's published tail forward (never back) and wakes its readers.
pub(super) fn advance(handle: &Handle, stream_id: u64, tail: u64, closed: bool) {
    handle.view.send_if_modified(|v| {
        let same = v.config.as_ref().is_some_and(|c| c.id == stream_id);
        if !same || (v.tail >= tail && (v.closed || !closed)) {
            return false;
        }
        v.tail = v.tail.max(tail);
        v.closed |= closed;
        true
    });
}

/// The engine's end of a shared backend's change feed.
pub(super) struct Sink(pub Weak<Engine>);

impl ChangeSink for Sink {
    fn change(&self, change: Change) {
        let Some(engine) = self.0.upgrade() else {
            return;
        };
        match change {
            Change::Appended {
                key,
                stream_id,
                tail,
                closed,
            } => {
                if let Some(handle) = engine.registry.existing(&key) {
                    advance(&handle, stream_id, tail, closed);
                }
            }
            Change::Changed { key } => {
                if engine.registry.existing(&key).is_none() {
                    return;
                }
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                runtime.spawn(async move { engine.reload(&Key::trusted(key)).await });
            }
            Change::Resync => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let live = engine
                    .registry
                    .scan(|handle, _| handle.view.receiver_count() > 0);
                tracing::info!(
                    streams = live.len(),
                    "re-checking streams with live readers"
                );
                runtime.spawn(async move {
                    for key in live {
                        if let Some(handle) = engine.registry.existing(&key) {
                            if let Err(e) = engine.sync_view(&key, &handle).await {
                                tracing::debug!(stream = %key, error = %e, "re-check failed");
                            }
                        }
                    }
                });
            }
        }
    }
}
