//! The streams the engine knows: a sharded map of handles, each with its writer
//! lock, its watch channel and its TTL clock; and loading them from storage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use tokio::sync::{watch, Mutex, OwnedMutexGuard};

use super::{Engine, Key, StreamError, View};
use crate::storage::{Expiry, StreamConfig, StreamRecord};

const SHARDS: usize = 64;

type Shard = RwLock<HashMap<Key, Arc<Handle>>>;

/// The map of stream handles, in shards held only for a lookup.
pub(super) struct Registry {
    shards: Box<[Shard]>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }
}

/// What the writer lock guards.
pub(super) struct Writer {
    pub record: Option<StreamRecord>,
    /// Forks (live or soft-deleted) whose source is this stream.
    pub ref_count: u64,
}

/// One stream (or one name that had or will have a stream).
pub(super) struct Handle {
    pub writer: Arc<Mutex<Writer>>,
    pub view: watch::Sender<View>,
    last_access_ms: AtomicU64,
    /// Removed from the map; holders must look the key up again.
    detached: AtomicBool,
    /// Appends that failed in storage; duplicates waiting on them give up.
    pub failures: AtomicU64,
    /// The cached record may differ from storage (a write failed and could not
    /// be reloaded): reload before deciding anything on it.
    pub stale: AtomicBool,
    /// Used since its use was last reported to a shared store.
    unreported_use: AtomicBool,
    /// The last range live readers read at the tail: the readers woken by one
    /// append all want the same bytes, and only the first reads them.
    pub recent: tokio::sync::Mutex<Option<super::read::Recent>>,
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
            stale: AtomicBool::new(false),
            // Looking a stream up is no use of it: nothing to report yet.
            unreported_use: AtomicBool::new(false),
            recent: tokio::sync::Mutex::new(None),
        })
    }

    /// A write failed and the record could not be reloaded: the cache is no
    /// longer trusted, and every duplicate waiting on earlier writes is woken
    /// to give up, whatever happens next.
    pub fn failed(&self) {
        self.stale.store(true, Ordering::Release);
        self.failures.fetch_add(1, Ordering::AcqRel);
        self.view.send_modify(|_| {});
    }

    /// Whether the stream was used since its use was last reported, or has
    /// live readers (which keep it alive); marks it reported.
    pub fn take_use(&self) -> bool {
        let used = self.unreported_use.swap(false, Ordering::Relaxed);
        used || self.view.receiver_count() > 0
    }

    pub fn publish(&self, record: Option<&StreamRecord>) {
        self.view.send_replace(View::of(record));
    }

    pub fn touch(&self) {
        self.last_access_ms.store(now_ms(), Ordering::Relaxed);
        self.unreported_use.store(true, Ordering::Relaxed);
    }

    /// Renews a sliding TTL; streams without one skip the clock read.
    pub fn touch_for(&self, config: &StreamConfig) {
        if matches!(config.expiry, Expiry::Ttl(_)) {
            self.touch();
        }
    }

    pub fn expired(&self, config: &StreamConfig) -> bool {
        if self.view.receiver_count() > 0 {
            // Live readers keep a stream alive (section 5.1).
            self.touch();
        }
        match config.expiry {
            Expiry::Ttl(secs) => {
                let idle = now_ms().saturating_sub(self.last_access_ms.load(Ordering::Relaxed));
                idle >= secs.saturating_mul(1000)
            }
            Expiry::At(at) => OffsetDateTime::now_utc() >= at,
            _ => false,
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// A writer guard that keeps its handle's lock alive on its own.
pub(super) struct OwnedWriter(OwnedMutexGuard<Writer>);

impl OwnedWriter {
    pub fn get(&self) -> &Writer {
        &self.0
    }

    pub fn get_mut(&mut self) -> &mut Writer {
        &mut self.0
    }
}

impl Registry {
    fn shard(&self, key: &str) -> &Shard {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        &self.shards[(hash as usize) % SHARDS]
    }

    pub fn existing(&self, key: &str) -> Option<Arc<Handle>> {
        self.shard(key)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn handle(&self, key: &Key) -> Arc<Handle> {
        if let Some(handle) = self.existing(key) {
            return handle;
        }
        self.shard(key)
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_insert_with(|| Handle::new(None, 0))
            .clone()
    }

    /// The handle of `key`, made from `record` (read from storage) unless
    /// another task cached one first.
    pub fn adopt(&self, key: &Key, record: StreamRecord) -> Arc<Handle> {
        self.shard(key)
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_insert_with(|| Handle::new(Some(record), 0))
            .clone()
    }

    fn insert(&self, key: Key, handle: Arc<Handle>) {
        self.shard(&key)
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, handle);
    }

    /// Locks the writer of `key`'s handle, creating the handle if `create`.
    pub async fn lock(&self, key: &Key, create: bool) -> Option<(Arc<Handle>, OwnedWriter)> {
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

    /// Locks the writer of a handle already looked up, or of `key`'s current
    /// handle if that one has been detached in the meantime.
    pub async fn lock_handle(
        &self,
        key: &Key,
        handle: Arc<Handle>,
    ) -> Option<(Arc<Handle>, OwnedWriter)> {
        let guard = OwnedWriter(handle.writer.clone().lock_owned().await);
        if handle.detached.load(Ordering::Acquire) {
            drop(guard);
            return self.lock(key, false).await;
        }
        Some((handle, guard))
    }

    /// Removes the handle of a stream that no longer exists from the map. Called
    /// with the handle's writer lock held, so nobody can create the stream in the
    /// meantime; holders of the old handle see `detached` and look the key up again.
    pub fn forget_locked(&self, key: &str, handle: &Arc<Handle>, writer: &OwnedWriter) {
        if writer.get().record.is_some() || writer.get().ref_count > 0 {
            return;
        }
        let mut shard = self.shard(key).write().unwrap_or_else(|e| e.into_inner());
        if shard.get(key).is_some_and(|h| Arc::ptr_eq(h, handle)) {
            handle.detached.store(true, Ordering::Release);
            shard.remove(key);
        }
    }

    /// Drops the cached handles of streams unused for `idle_ms` that nothing
    /// holds (no reader, no request in flight, no writer): with shared storage
    /// the database has them all, and the cache must not grow with every
    /// stream an instance ever served. Returns how many went.
    pub fn evict_idle(&self, idle_ms: u64) -> usize {
        let now = now_ms();
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(|e| e.into_inner());
            shard.retain(|_, handle| {
                let idle =
                    now.saturating_sub(handle.last_access_ms.load(Ordering::Relaxed)) >= idle_ms;
                // The map's is the only reference: nobody can take another
                // while this shard is locked.
                let unused = Arc::strong_count(handle) == 1 && handle.view.receiver_count() == 0;
                if idle && unused && handle.writer.try_lock().is_ok() {
                    handle.detached.store(true, Ordering::Release);
                    evicted += 1;
                    return false;
                }
                true
            });
        }
        evicted
    }

    /// Every key with a live (not soft-deleted) stream that `due` says is done.
    pub fn scan(&self, mut due: impl FnMut(&Handle, &StreamConfig) -> bool) -> Vec<Key> {
        let mut keys = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            for (key, handle) in shard.iter() {
                let view = handle.view.borrow();
                if let Some(config) = view.config.as_ref().filter(|_| !view.soft_deleted) {
                    if due(handle, config) {
                        keys.push(key.clone());
                    }
                }
            }
        }
        keys
    }
}

impl Engine {
    /// Fills the registry from storage and finishes clean-ups a crash left.
    pub(super) async fn load(&self) -> Result<(), StreamError> {
        if self.shared {
            // The database is the truth and may hold millions of streams:
            // they are looked up as they are used.
            return Ok(());
        }
        let all = self.storage.load().await?;
        let mut refs: HashMap<&str, u64> = HashMap::new();
        for (_, record) in &all {
            if let Some(fork) = &record.config.fork {
                *refs.entry(fork.source.as_str()).or_default() += 1;
            }
        }
        for (key, record) in &all {
            let count = refs.get(key.as_str()).copied().unwrap_or(0);
            let handle = Handle::new(Some(record.clone()), count);
            self.registry.insert(Key::trusted(key.clone()), handle);
        }
        // A crash between deleting a last fork and its soft-deleted source
        // leaves the source unreferenced: finish that clean-up now.
        let orphans = all
            .iter()
            .filter(|(key, record)| record.soft_deleted && !refs.contains_key(key.as_str()));
        for (key, _) in orphans {
            let key = Key::trusted(key.clone());
            if let Some(handle) = self.registry.existing(&key) {
                handle.writer.lock().await.ref_count += 1;
            }
            if let Err(e) = self.release(&key).await {
                tracing::warn!(stream = %key, error = %e, "could not remove an unreferenced deleted stream");
            }
        }
        Ok(())
    }

    /// The current view of `key`, after expiring it if its time has come; with
    /// `sync`, first brought up to date with storage (shared storage).
    pub(super) async fn live_view(
        &self,
        key: &Key,
        sync: bool,
    ) -> Result<(Arc<Handle>, View), StreamError> {
        let handle = self.find(key).await?.ok_or(StreamError::NotFound)?;
        if sync {
            self.sync_view(key, &handle).await?;
        }
        let handle = self.registry.existing(key).ok_or(StreamError::NotFound)?;
        let view = handle.view.borrow().clone();
        let config = view.config.as_ref().ok_or(StreamError::NotFound)?;
        if view.soft_deleted || !handle.expired(config) {
            return Ok((handle, view));
        }
        drop(handle);
        self.expire(key).await?;
        let handle = self.registry.existing(key).ok_or(StreamError::NotFound)?;
        let view = handle.view.borrow().clone();
        Ok((handle, view))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Expiry;

    fn record() -> StreamRecord {
        StreamRecord::new(StreamConfig::new(1, "text/plain", Expiry::Never), 0)
    }

    #[tokio::test]
    async fn only_idle_handles_nothing_holds_are_evicted() {
        let registry = Registry::default();
        let key = Key::parse("/a").expect("key");
        let held = registry.adopt(&key, record());
        assert_eq!(registry.evict_idle(0), 0, "a request holds it");
        let reader = held.view.subscribe();
        drop(held);
        assert_eq!(registry.evict_idle(0), 0, "a live reader holds it");
        drop(reader);
        assert_eq!(registry.evict_idle(60_000), 0, "used within the minute");
        let (handle, writer) = registry.lock(&key, false).await.expect("locked");
        drop(handle);
        assert_eq!(registry.evict_idle(0), 0, "a writer holds it");
        drop(writer);
        assert_eq!(registry.evict_idle(0), 1);
        assert!(registry.existing(&key).is_none());
    }
}
