//! File storage: one shared, checksummed, append-only log with group commit.
//!
//! Every mutation (create, append, close, soft delete, delete) is one record in a
//! log of segment files under `<dir>/log/`. A single writer thread takes every
//! operation queued since its last flush, writes them with one `write`, and (with
//! [`Durability::Fsync`]) makes them durable with one `fdatasync` before any of
//! them is acknowledged: concurrent appends to one stream or to thousands share
//! one flush. An in-memory index maps each stream's byte positions to places in
//! the log; reads `pread` bounded ranges from the segments on the blocking pool
//! through a bounded cache of file descriptors.
//!
//! Each record has a 24-byte header (payload length, kind, stream id, payload
//! CRC-32, header CRC-32). On open the log is replayed and every record checked:
//! a torn or corrupt tail of the last segment is cut off; a corrupt record in the
//! middle makes its stream's reads fail loudly; a damaged header anywhere else
//! stops the open with an error, since what follows cannot be trusted.
//!
//! A segment is deleted once every stream with records in it is deleted (and no
//! older segment still needs its delete records), which is how deleting streams
//! frees disk space.

mod compact;
mod format;
mod index;
mod reads;
mod replay;
mod writer;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::queue::{answer, poisoned, Op};
use super::reserve::Reserve;
use super::{
    Append, AppendFuture, CreateOutcome, Cut, ReadChunk, Storage, StorageError, StorageFuture,
    StreamRecord,
};
use format::{segment_path, sync_dir, HEADER_LEN};
use index::Index;

pub use compact::{Compaction, CompactionReport};
use writer::LogWriter;

/// Most segment files kept open for reads.
const MAX_OPEN_SEGMENTS: usize = 64;

/// When an append counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Acknowledged once the bytes reach the operating system: survives a killed
    /// process, not a power loss (`file-fast`).
    Buffered,
    /// Acknowledged only after `fdatasync`: survives a power loss (`file-durable`).
    Fsync,
}

/// Counters of the writer, to see group commit at work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileStats {
    /// Operations written (creates, appends, deletes).
    pub operations: u64,
    /// Flushes (one `write` each, and one `fdatasync` each with [`Durability::Fsync`]).
    pub flushes: u64,
    /// `fdatasync` calls.
    pub fsyncs: u64,
    /// Bytes written to the log.
    pub bytes: u64,
    /// Flushes by operations per flush: entry `i` counts flushes of up to `2^i`
    /// operations (more than `2^(i-1)`); the last entry counts all larger ones.
    pub batch_sizes: [u64; 13],
    /// Segments the compactor rewrote.
    pub compactions: u64,
    /// Bytes the compactor gave back.
    pub compacted_bytes: u64,
}

/// Streams in files under one directory, with group commit and crash recovery.
///
/// ```no_run
/// use tower_durable_streams::storage::{Durability, FileStorage};
/// use tower_durable_streams::DurableStreamsService;
///
/// let storage = FileStorage::open("./data/streams", Durability::Fsync)?;
/// let service = DurableStreamsService::builder().storage(storage).build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct FileStorage {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    index: RwLock<Index>,
    queue: Mutex<Option<mpsc::Sender<Op>>>,
    open_segments: Mutex<HashMap<u32, Arc<File>>>,
    poisoned: AtomicBool,
    /// The last batch did not fit on the disk.
    full: AtomicBool,
    /// The size of that batch.
    needed: AtomicU64,
    /// Room kept for deletes on a full disk.
    reserve: Reserve,
    /// Held by the writer for each batch: between two batches the index says
    /// exactly what is on disk, which is when the compactor looks and switches.
    batch: Mutex<()>,
    /// The compactor's settings.
    compaction: Mutex<Compaction>,
    /// Held for a whole compaction pass.
    compacting: Arc<Mutex<()>>,
    compactor: Mutex<Option<compact::Compactor>>,
    stats: Stats,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    _lock: File,
}

#[derive(Debug, Default)]
struct Stats {
    operations: AtomicU64,
    flushes: AtomicU64,
    fsyncs: AtomicU64,
    bytes: AtomicU64,
    batch_sizes: [AtomicU64; 13],
    compactions: AtomicU64,
    compacted_bytes: AtomicU64,
}

impl FileStorage {
    /// Opens (or creates) the store in `dir`, replaying and checking its log.
    ///
    /// Fails if another process has the directory open, or if the log is damaged
    /// anywhere but at its very end.
    pub fn open(dir: impl AsRef<Path>, durability: Durability) -> Result<Self, StorageError> {
        Self::open_with(dir, durability, 64 * 1024 * 1024)
    }

    /// Like [`open`](Self::open), with segment files of about `segment_bytes` each.
    pub fn open_with(
        dir: impl AsRef<Path>,
        durability: Durability,
        segment_bytes: u64,
    ) -> Result<Self, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(dir.join("log"))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        lock.try_lock().map_err(|_| {
            StorageError::Io(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another process", dir.display()),
            ))
        })?;
        compact::remove_stray_copies(&dir)?;
        let (index, last) = replay::replay(&dir)?;
        let (current, size) = match last {
            Some((number, size)) => (number, size),
            None => (1, 0),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&dir, current))?;
        if durability == Durability::Fsync {
            sync_dir(&dir.join("log"))?;
            sync_dir(&dir)?;
        }
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            index: RwLock::new(index),
            queue: Mutex::new(Some(tx)),
            open_segments: Mutex::default(),
            poisoned: AtomicBool::new(false),
            full: AtomicBool::new(false),
            needed: AtomicU64::new(0),
            reserve: Reserve::new(&dir),
            batch: Mutex::new(()),
            compaction: Mutex::new(Compaction::default()),
            compacting: Arc::default(),
            compactor: Mutex::new(None),
            stats: Stats::default(),
            thread: Mutex::new(None),
            _lock: lock,
        });
        let writer = LogWriter {
            shared: Arc::downgrade(&shared),
            durability,
            segment_bytes: segment_bytes.max(HEADER_LEN as u64 * 2),
            current,
            file,
            size,
            buffer: Vec::with_capacity(1 << 20),
            undo: HashMap::new(),
            batch_start: size,
        };
        let thread = std::thread::Builder::new()
            .name("ds-file-writer".into())
            .spawn(move || writer.run(rx))?;
        *shared.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        *shared.compactor.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(compact::start(&shared)?);
        Ok(FileStorage { shared })
    }

    /// Sets how the background compactor works (see [`Compaction`]), from now.
    ///
    /// ```no_run
    /// use tower_durable_streams::storage::{Compaction, Durability, FileStorage};
    ///
    /// let storage = FileStorage::open("./data/streams", Durability::Fsync)?
    ///     .with_compaction(Compaction::default().rate(8 * 1024 * 1024));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_compaction(self, compaction: Compaction) -> Self {
        *self
            .shared
            .compaction
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = compaction;
        if let Some((nudge, _)) = &*self
            .shared
            .compactor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            let _ = nudge.send(());
        }
        self
    }

    /// Rewrites, now and without a rate limit, every sealed segment whose dead
    /// share is at least the configured `min_dead_ratio`, giving back the
    /// space of deleted streams. Blocks (call it from a blocking thread); safe
    /// while the store is in use.
    pub fn compact_now(&self) -> Result<CompactionReport, StorageError> {
        let ratio = self
            .shared
            .compaction
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .min_dead_ratio_value();
        Ok(compact::pass(&Arc::downgrade(&self.shared), 0, ratio)?)
    }

    /// The writer's counters since open.
    pub fn stats(&self) -> FileStats {
        let s = &self.shared.stats;
        FileStats {
            operations: s.operations.load(Ordering::Relaxed),
            flushes: s.flushes.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            batch_sizes: std::array::from_fn(|i| s.batch_sizes[i].load(Ordering::Relaxed)),
            compactions: s.compactions.load(Ordering::Relaxed),
            compacted_bytes: s.compacted_bytes.load(Ordering::Relaxed),
        }
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    fn submit(&self, op: Op) -> Result<(), StorageError> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(poisoned());
        }
        let queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue
            .as_ref()
            .ok_or_else(poisoned)?
            .send(op)
            .map_err(|_| poisoned())
    }

    fn segment(&self, number: u32) -> io::Result<Arc<File>> {
        let mut open = self
            .shared
            .open_segments
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(file) = open.get(&number) {
            return Ok(file.clone());
        }
        if open.len() >= MAX_OPEN_SEGMENTS {
            open.clear();
        }
        let file = Arc::new(File::open(segment_path(&self.shared.dir, number))?);
        open.insert(number, file.clone());
        Ok(file)
    }
}

impl Drop for Shared {
    /// Closes the queue and waits for the writer to finish its last flush, so the
    /// directory can be opened again as soon as the storage is dropped.
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.compactor.get_mut().ok().and_then(Option::take) {
            drop(stop);
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
        self.queue.get_mut().map(Option::take).ok();
        if let Some(thread) = self.thread.get_mut().ok().and_then(Option::take) {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Storage for FileStorage {
    fn load(&self) -> StorageFuture<'_, Vec<(String, StreamRecord)>> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Box::pin(async { Err(poisoned()) });
        }
        let index = self.shared.index.read().unwrap_or_else(|e| e.into_inner());
        let all = index
            .streams
            .iter()
            .map(|(k, e)| (k.clone(), e.record.clone()))
            .collect();
        Box::pin(async move { Ok(all) })
    }

    fn get<'a>(&'a self, key: &'a str) -> StorageFuture<'a, Option<StreamRecord>> {
        // After a failed flush the index may hold what never reached the disk.
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Box::pin(async { Err(poisoned()) });
        }
        let index = self.shared.index.read().unwrap_or_else(|e| e.into_inner());
        let record = index.streams.get(key).map(|e| e.record.clone());
        Box::pin(async move { Ok(record) })
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        record: StreamRecord,
        initial: Bytes,
    ) -> StorageFuture<'a, CreateOutcome> {
        let (reply, rx) = oneshot::channel();
        let submitted = self.submit(Op::Create {
            key: key.to_owned(),
            record,
            initial,
            reply,
        });
        answer(submitted, rx)
    }

    fn append(&self, key: &str, append: Append) -> AppendFuture {
        let (reply, rx) = oneshot::channel();
        self.shared.stats.operations.fetch_add(1, Ordering::Relaxed);
        let end = append.end();
        let submitted = self.submit(Op::Append {
            key: key.to_owned(),
            append,
            reply,
        });
        let durable = answer(submitted, rx);
        Box::pin(async move { durable.await.map(|()| end) })
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        from: u64,
        to: u64,
        max_bytes: usize,
        cut: Cut,
    ) -> StorageFuture<'a, ReadChunk> {
        let plan = self.plan(key, from, to, max_bytes, cut);
        let this = self.clone();
        Box::pin(async move {
            let (pieces, end) = plan?;
            if pieces.is_empty() {
                return Ok(ReadChunk {
                    data: Vec::new(),
                    end,
                });
            }
            // Bytes in the page cache are copied at once; only a read that
            // would wait for the disk goes to the blocking pool (a thread
            // hand-off per read cost more than the copy).
            if let Some(chunk) = this.fetch_cached(&pieces, end)? {
                return Ok(chunk);
            }
            tokio::task::spawn_blocking(move || this.fetch(&pieces, end))
                .await
                .map_err(|e| StorageError::Io(io::Error::other(e)))?
        })
    }

    fn soft_delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()> {
        let (reply, rx) = oneshot::channel();
        let submitted = self.submit(Op::SoftDelete {
            key: key.to_owned(),
            reply,
        });
        answer(submitted, rx)
    }

    fn delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()> {
        let (reply, rx) = oneshot::channel();
        let submitted = self.submit(Op::Delete {
            key: key.to_owned(),
            reply,
        });
        answer(submitted, rx)
    }

    /// Fails once the writer stopped for good, and while the disk is full:
    /// then a probe write of the refused batch's size tells whether room has
    /// come back (writes resume by themselves with the next batch).
    fn health(&self) -> StorageFuture<'_, ()> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Box::pin(async { Err(poisoned()) });
        }
        if !self.shared.full.load(Ordering::Acquire) {
            return Box::pin(async { Ok(()) });
        }
        // Room for the batch that did not fit (at least 64 KiB, at most 1 MiB).
        let needed = self.shared.needed.load(Ordering::Acquire);
        let probe = needed.clamp(64 * 1024, 1024 * 1024) as usize;
        if let Some(room) = self.shared.reserve.recent_probe() {
            return Box::pin(async move {
                if room {
                    Ok(())
                } else {
                    Err(StorageError::Full)
                }
            });
        }
        let this = self.shared.clone();
        Box::pin(async move {
            let probed = tokio::task::spawn_blocking(move || this.reserve.probe(probe))
                .await
                .map_err(|e| StorageError::Io(io::Error::other(e)))?;
            if probed {
                Ok(())
            } else {
                Err(StorageError::Full)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closure that opens the same new directory each time.
    fn reopen(durability: Durability) -> impl FnMut() -> std::future::Ready<FileStorage> {
        let dir = tempfile::tempdir().unwrap().keep();
        move || std::future::ready(FileStorage::open(&dir, durability).unwrap())
    }

    crate::storage_testkit!(
        FileStorage::open(tempfile::tempdir().unwrap().keep(), Durability::Fsync).unwrap(),
        reopen: reopen(Durability::Fsync),
    );

    /// A new store holding empty streams `(id, key)`.
    async fn store_with(streams: &[(u64, &str)]) -> (tempfile::TempDir, FileStorage) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStorage::open(dir.path(), Durability::Buffered).unwrap();
        for &(id, key) in streams {
            let config =
                crate::storage::StreamConfig::new(id, "text/plain", crate::storage::Expiry::Never);
            let record = StreamRecord::new(config, 0);
            store.create(key, record, Bytes::new()).await.unwrap();
        }
        (dir, store)
    }

    #[tokio::test]
    async fn small_records_are_read_back_in_few_buffers() {
        let (_dir, store) = store_with(&[(1, "/a"), (2, "/b")]).await;
        // Two streams' records interleaved in the log, so that each read
        // squeezes out record headers and the other stream's records.
        let mut expected = Vec::new();
        for i in 0..2000u32 {
            let data = Bytes::from(format!("{i:0100}"));
            let at = expected.len() as u64;
            expected.extend_from_slice(&data);
            let other = Append::new(2, at, data.clone());
            let (a, b) = tokio::join!(
                store.append("/a", Append::new(1, at, data)),
                store.append("/b", other)
            );
            a.unwrap();
            b.unwrap();
        }
        let all = store
            .read("/a", 0, u64::MAX, usize::MAX, Cut::AnyByte)
            .await
            .unwrap();
        assert_eq!(all.data.concat(), expected);
        assert!(
            all.data.len() < 8,
            "{} buffers for 2,000 records",
            all.data.len()
        );
        // The same through the read that may wait for the disk (the one
        // above came from the page cache, where the system can tell).
        let (slices, end) = store
            .plan("/a", 0, u64::MAX, usize::MAX, Cut::AnyByte)
            .unwrap();
        let waited = store.fetch(&slices, end).unwrap();
        assert_eq!(waited.data.concat(), expected);
        let part = store
            .read("/b", 150, u64::MAX, 1000, Cut::AnyByte)
            .await
            .unwrap();
        assert_eq!(
            (part.end, part.data.concat()),
            (1150, expected[150..1150].to_vec())
        );
    }

    #[tokio::test]
    async fn a_read_does_not_pull_in_much_more_than_it_wants() {
        let (_dir, store) = store_with(&[(1, "/tiny"), (2, "/big")]).await;
        // 10-byte records, each followed in the log by a 15 KiB one of
        // another stream: gaps small enough to read through one by one.
        let big = Bytes::from(vec![b'b'; 15 * 1024]);
        let mut expected = Vec::new();
        for i in 0..50u64 {
            let tiny = Bytes::from(format!("{i:010}"));
            store
                .append("/tiny", Append::new(1, i * 10, tiny.clone()))
                .await
                .unwrap();
            store
                .append("/big", Append::new(2, i * big.len() as u64, big.clone()))
                .await
                .unwrap();
            expected.extend_from_slice(&tiny);
        }
        let read = store
            .read("/tiny", 0, u64::MAX, usize::MAX, Cut::AnyByte)
            .await
            .unwrap();
        assert_eq!(read.data.concat(), expected);
        // One span would have read 750 KiB for 500 bytes.
        assert!(read.data.len() > 5, "{} spans", read.data.len());
    }

    mod buffered {
        use super::*;
        crate::storage_testkit!(
            FileStorage::open(tempfile::tempdir().unwrap().keep(), Durability::Buffered).unwrap(),
            reopen: reopen(Durability::Buffered),
        );
    }
}
