//! The end of streams: delete (soft while forks read through), expiry, the
//! clean-up of sources whose last fork is gone, and the expiry sweeper.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::registry::{Handle, OwnedWriter};
use super::{Deleted, Engine, Key, StreamError};
use crate::storage::{Expiry, SharedStorage};

impl Engine {
    /// Deletes a stream (`DELETE`): soft if forks still read through it.
    pub(crate) async fn delete(&self, key: &Key) -> Result<Deleted, StreamError> {
        self.ready().await?;
        self.expire(key).await?;
        let (handle, mut writer) = self
            .lock_existing(key)
            .await?
            .ok_or(StreamError::NotFound)?;
        self.sync_locked(key, &handle, &mut writer).await?;
        match writer.get().record.as_ref() {
            None => return Err(StreamError::NotFound),
            Some(r) if r.soft_deleted => return Err(StreamError::Gone),
            Some(_) => {}
        }
        self.delete_locked(key, &handle, writer).await
    }

    /// Deletes the locked stream; releases its source after dropping the lock.
    async fn delete_locked(
        &self,
        key: &Key,
        handle: &Arc<Handle>,
        mut writer: OwnedWriter,
    ) -> Result<Deleted, StreamError> {
        if self.shared {
            // Only the database knows every fork: it soft-deletes or removes
            // (and removes sources this leaves unreferenced); read back which.
            self.storage
                .delete(key)
                .await
                .map_err(StreamError::storage)?;
            self.reload_locked(key, handle, &mut writer).await?;
            let soft = writer.get().record.as_ref().is_some_and(|r| r.soft_deleted);
            self.registry.forget_locked(key, handle, &writer);
            return Ok(if soft {
                Deleted::SoftDeleted
            } else {
                Deleted::Removed
            });
        }
        let w = writer.get_mut();
        let Some(record) = w.record.clone() else {
            return Err(StreamError::NotFound);
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
        self.registry.forget_locked(key, handle, &writer);
        drop(writer);
        if let Some(fork) = &record.config.fork {
            self.release(&Key::trusted(fork.source.clone())).await?;
        }
        Ok(Deleted::Removed)
    }

    /// Drops one fork reference from `key`, cleaning up soft-deleted sources
    /// whose last fork is gone, up the chain.
    pub(super) async fn release(&self, key: &Key) -> Result<(), StreamError> {
        let mut next = Some(key.clone());
        while let Some(key) = next.take() {
            let Some((handle, mut writer)) = self.registry.lock(&key, false).await else {
                return Ok(());
            };
            let w = writer.get_mut();
            w.ref_count = w.ref_count.saturating_sub(1);
            let Some(record) = w.record.clone() else {
                self.registry.forget_locked(&key, &handle, &writer);
                return Ok(());
            };
            if w.ref_count > 0 || !record.soft_deleted {
                return Ok(());
            }
            self.storage.delete(&key).await?;
            w.record = None;
            handle.publish(None);
            self.registry.forget_locked(&key, &handle, &writer);
            drop(writer);
            next = record.config.fork.map(|f| Key::trusted(f.source));
        }
        Ok(())
    }

    /// Deletes `key` if it has expired.
    pub(super) async fn expire(&self, key: &Key) -> Result<(), StreamError> {
        if let Some(shared) = self.storage.shared() {
            // This instance's clock only says when to ask: another instance may
            // have used the stream since. The shared clock decides.
            let due = self.registry.existing(key).is_some_and(|handle| {
                let view = handle.view.borrow().clone();
                view.config
                    .as_ref()
                    .is_some_and(|c| !view.soft_deleted && handle.expired(c))
            });
            if due && shared.expire(key).await.map_err(StreamError::storage)? {
                tracing::debug!(stream = %key, "stream expired");
                self.reload(key).await;
            }
            return Ok(());
        }
        let Some((handle, writer)) = self.registry.lock(key, false).await else {
            return Ok(());
        };
        let expired = writer
            .get()
            .record
            .as_ref()
            .is_some_and(|r| !r.soft_deleted && handle.expired(&r.config));
        if expired {
            tracing::debug!(stream = %key, "stream expired");
            self.delete_locked(key, &handle, writer).await?;
        }
        Ok(())
    }

    /// Removes every stream whose time has come; returns how many were due.
    pub(crate) async fn sweep(&self) -> usize {
        if let Some(shared) = self.storage.shared() {
            return self.sweep_shared(shared).await;
        }
        let due = self.registry.scan(|handle, config| handle.expired(config));
        for key in &due {
            if let Err(e) = self.expire(key).await {
                tracing::warn!(stream = %key, error = %e, "could not expire stream");
            }
        }
        due.len()
    }
}

impl Engine {
    /// Shared storage: reports this instance's use of streams with sliding
    /// TTLs, then, if this instance holds the sweep lease, expires what the
    /// shared clock says is due.
    async fn sweep_shared(&self, shared: &dyn SharedStorage) -> usize {
        let evicted = self.registry.evict_idle(EVICT_AFTER_MS);
        if evicted > 0 {
            tracing::debug!(evicted, "dropped idle cached streams");
        }
        let used: Vec<String> = self
            .registry
            .scan(|handle, config| matches!(config.expiry, Expiry::Ttl(_)) && handle.take_use())
            .into_iter()
            .map(|key| key.as_str().to_owned())
            .collect();
        if !used.is_empty() {
            if let Err(e) = shared.touch(&used).await {
                tracing::warn!(error = %e, streams = used.len(), "could not record stream use");
            }
        }
        match shared.lead("expiry").await {
            Ok(true) => {}
            Ok(false) => return 0,
            Err(e) => {
                tracing::debug!(error = %e, "could not ask for the sweep lease");
                return 0;
            }
        }
        let due = match shared.expired(SWEEP_BATCH).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "could not list expired streams");
                return 0;
            }
        };
        let mut expired = 0;
        for key in due {
            match shared.expire(&key).await {
                Ok(true) => {
                    expired += 1;
                    self.reload(&Key::trusted(key)).await;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(stream = %key, error = %e, "could not expire stream"),
            }
        }
        expired
    }
}

/// The most streams one shared sweep expires.
const SWEEP_BATCH: usize = 1024;

/// How long a stream's cached state outlives its last use with shared storage.
const EVICT_AFTER_MS: u64 = 10 * 60 * 1000;

/// The task that removes expired streams nobody touches.
///
/// It runs on the runtime of whoever used the engine last when it was not
/// running: started by [`ensure_running`](Sweeper::ensure_running) (every
/// operation calls it; it costs one atomic load when the task runs), it notices
/// when its runtime shuts down (a guard in the task clears the flag as the
/// runtime drops it), so the next operation, on another runtime, starts it
/// again. It ends for good when the engine is dropped or `stop` is cancelled
/// (the builder's shutdown token, or [`Sweeper::stop`]).
pub(super) struct Sweeper {
    engine: Weak<Engine>,
    interval: Duration,
    running: Arc<AtomicBool>,
    stop: CancellationToken,
}

/// Clears the running flag when the sweeper's task ends or is dropped.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Sweeper {
    pub(super) fn new(engine: Weak<Engine>, interval: Duration, stop: CancellationToken) -> Self {
        Sweeper {
            engine,
            interval,
            running: Arc::default(),
            stop,
        }
    }

    /// Starts the task on the current runtime unless it runs or was stopped.
    pub(super) fn ensure_running(&self) {
        if self.running.load(Ordering::Acquire) || self.stop.is_cancelled() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let running = Running(self.running.clone());
        let (engine, stop, period) = (self.engine.clone(), self.stop.clone(), self.interval);
        runtime.spawn(async move {
            let _running = running;
            let start = tokio::time::Instant::now() + period;
            let mut ticker = tokio::time::interval_at(start, period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = stop.cancelled() => return,
                }
                // Hold the engine only while sweeping, so dropping it releases
                // its storage at once.
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                let expired = engine.sweep().await;
                if expired > 0 {
                    tracing::debug!(expired, "removed expired streams");
                }
            }
        });
    }

    /// Stops the task for good.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) fn stop(&self) {
        self.stop.cancel();
    }

    #[cfg(test)]
    fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::engine::{CreateRequest, Limits};
    use crate::storage::{Expiry, MemoryStorage, Storage};

    fn engine(storage: &Arc<MemoryStorage>) -> Arc<Engine> {
        let limits = Limits {
            sweep_interval: Duration::from_millis(20),
            ..Limits::default()
        };
        Engine::new(storage.clone(), limits, &CancellationToken::new())
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Waits (at most 10 s) until `storage` holds no stream.
    async fn until_empty(storage: &MemoryStorage) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if storage.load().await.expect("load").is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[test]
    fn the_sweeper_moves_to_the_runtime_that_uses_the_engine() {
        let storage = Arc::new(MemoryStorage::new());
        let engine = engine(&storage);
        let first = runtime();
        first.block_on(engine.ready()).expect("ready");
        assert!(engine.sweeper.running(), "started by the first use");
        drop(first);
        assert!(!engine.sweeper.running(), "its runtime is gone");

        let second = runtime();
        second.block_on(async {
            let key = Key::parse("/short").expect("key");
            let request = CreateRequest {
                expiry: Expiry::Ttl(1),
                ..CreateRequest::default()
            };
            engine.create(&key, request).await.expect("create");
            assert!(engine.sweeper.running(), "started again on this runtime");
            // Nobody touches the stream: only the sweeper can remove it.
            assert!(until_empty(&storage).await, "the expired stream was swept");
        });
    }

    #[test]
    fn a_stopped_sweeper_stays_stopped() {
        let storage = Arc::new(MemoryStorage::new());
        let engine = engine(&storage);
        let rt = runtime();
        rt.block_on(async {
            engine.ready().await.expect("ready");
            engine.sweeper.stop();
            tokio::time::sleep(Duration::from_millis(60)).await;
            assert!(!engine.sweeper.running(), "the task ended");
            engine.ready().await.expect("ready");
            assert!(!engine.sweeper.running(), "and is not started again");
        });
    }
}
