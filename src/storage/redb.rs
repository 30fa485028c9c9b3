//! ACID storage on [redb](https://docs.rs/redb), sharded, with group commit.
//!
//! Streams are spread over `shard_count` redb files by a hash of their path. Each
//! shard has one writer thread that takes every operation queued since its last
//! commit and applies them all in one write transaction committed with
//! `Durability::Immediate`: an append is acknowledged only after the commit that
//! covers it, and concurrent appends share it. A stream's record (configuration,
//! tail, closure, `Stream-Seq`, producer state) is written in the same
//! transaction as its bytes.
//!
//! Tables: `streams` maps a path to its encoded record; `data` maps
//! `(stream id, position)` to the bytes of one append. Deleting a stream removes
//! both; redb reuses the freed pages.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::codec::{self, Reader, Writer};
use super::queue::{answer, poisoned, Op};
use super::reserve::Reserve;
use super::{
    Append, AppendFuture, CreateOutcome, Cut, RangePlan, ReadChunk, Storage, StorageError,
    StorageFuture, StreamRecord, Take,
};

const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
const DATA: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("data");
const MAX_BATCH: usize = 4096;

/// Streams in sharded redb databases under one directory (`acid` mode).
///
/// ```no_run
/// use tower_durable_streams::storage::RedbStorage;
/// use tower_durable_streams::DurableStreamsService;
///
/// let storage = RedbStorage::open("./data/streams", 16)?;
/// let service = DurableStreamsService::builder().storage(storage).build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct RedbStorage {
    shards: Arc<[Shard]>,
    reserve: Arc<Reserve>,
}

/// A shard's database; empty while the writer reopens it after an I/O error
/// (redb refuses every operation after one until the file is reopened).
type Slot = Arc<RwLock<Option<Arc<Database>>>>;

#[derive(Debug)]
struct Shard {
    db: Slot,
    /// The last commit failed for lack of space.
    full: Arc<AtomicBool>,
    queue: Mutex<Option<mpsc::Sender<Op>>>,
    records: Arc<Mutex<HashMap<String, StreamRecord>>>,
    commits: Arc<std::sync::atomic::AtomicU64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn backend(error: impl Into<redb::Error>) -> StorageError {
    match error.into() {
        redb::Error::Io(e) if super::out_of_space(&e) => StorageError::Full,
        redb::Error::Io(e) => StorageError::Io(e),
        redb::Error::PreviousIo => StorageError::Io(std::io::Error::other(
            "an earlier I/O error left the database closed",
        )),
        error => StorageError::Backend(Box::new(error)),
    }
}

/// The open database of `slot`, or 503 while it is being reopened.
fn open_db(slot: &Slot) -> Result<Arc<Database>, StorageError> {
    slot.read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| StorageError::Unavailable("the database is being reopened".into()))
}

impl RedbStorage {
    /// Opens (or creates) `shard_count` databases in `dir`. The shard count is a
    /// power of two from 1 to 256 and cannot change once the directory has data.
    pub fn open(dir: impl AsRef<Path>, shard_count: usize) -> Result<Self, StorageError> {
        if !(1..=256).contains(&shard_count) || !shard_count.is_power_of_two() {
            return Err(StorageError::Backend(
                format!("shard count {shard_count} is not a power of two from 1 to 256").into(),
            ));
        }
        let dir = dir.as_ref().join("redb");
        fs::create_dir_all(&dir)?;
        check_layout(&dir, shard_count)?;
        let reserve = Arc::new(Reserve::new(&dir));
        let mut shards = Vec::with_capacity(shard_count);
        for i in 0..shard_count {
            let path = dir.join(format!("shard-{i:03}.redb"));
            let db = Database::create(&path).map_err(backend)?;
            let records = Arc::new(Mutex::new(load_records(&db)?));
            let db: Slot = Arc::new(RwLock::new(Some(Arc::new(db))));
            let (tx, rx) = mpsc::channel();
            let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let full = Arc::new(AtomicBool::new(false));
            let writer = ShardWriter {
                db: db.clone(),
                path,
                full: full.clone(),
                reserve: reserve.clone(),
                refused_at: None,
                records: records.clone(),
                commits: commits.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("ds-redb-{i:03}"))
                .spawn(move || writer.run(rx))?;
            shards.push(Shard {
                db,
                full,
                queue: Mutex::new(Some(tx)),
                records,
                commits,
                thread: Mutex::new(Some(thread)),
            });
        }
        Ok(RedbStorage {
            shards: shards.into(),
            reserve,
        })
    }

    /// Compacts every shard's database file in `dir` (opened with
    /// `shard_count` shards), giving back the space of deleted streams to the
    /// file system. The store must not be open (redb refuses a file another
    /// handle has open); the example server's `compact` command calls this.
    pub fn compact(
        dir: impl AsRef<Path>,
        shard_count: usize,
    ) -> Result<super::CompactionReport, StorageError> {
        let dir = dir.as_ref().join("redb");
        check_layout(&dir, shard_count)?;
        let mut report = super::CompactionReport::default();
        for i in 0..shard_count {
            let path = dir.join(format!("shard-{i:03}.redb"));
            if !path.exists() {
                continue;
            }
            let before = fs::metadata(&path)?.len();
            let mut db = Database::create(&path).map_err(backend)?;
            db.compact().map_err(backend)?;
            drop(db);
            let after = fs::metadata(&path)?.len();
            report.segments += 1;
            report.bytes_freed += before.saturating_sub(after);
        }
        Ok(report)
    }

    /// Write transactions committed since open, over all shards.
    pub fn commits(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.commits.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    fn shard(&self, key: &str) -> &Shard {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        &self.shards[(hash as usize) & (self.shards.len() - 1)]
    }

    fn submit(&self, key: &str, op: Op) -> Result<(), StorageError> {
        let queue = self
            .shard(key)
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        queue
            .as_ref()
            .ok_or_else(poisoned)?
            .send(op)
            .map_err(|_| poisoned())
    }
}

/// Records the shard count on first use and refuses a different one later.
fn check_layout(dir: &Path, shard_count: usize) -> Result<(), StorageError> {
    let layout = dir.join("LAYOUT");
    let wanted = format!("shards={shard_count}\n");
    match fs::read_to_string(&layout) {
        Ok(existing) if existing == wanted => Ok(()),
        Ok(existing) => Err(StorageError::Backend(
            format!(
                "{} was created with {}; it cannot be opened with {} shards",
                dir.display(),
                existing.trim(),
                shard_count
            )
            .into(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::write(&layout, wanted)?;
            fs::File::open(&layout)?.sync_all()?;
            fs::File::open(dir)?.sync_all()?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn load_records(db: &Database) -> Result<HashMap<String, StreamRecord>, StorageError> {
    let txn = db.begin_read().map_err(backend)?;
    let table = match txn.open_table(STREAMS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
        Err(e) => return Err(backend(e)),
    };
    let mut records = HashMap::new();
    for entry in table.iter().map_err(backend)? {
        let (key, value) = entry.map_err(backend)?;
        let record = codec::get_record(&mut Reader::new(value.value()))?;
        records.insert(key.value().to_owned(), record);
    }
    Ok(records)
}

struct ShardWriter {
    db: Slot,
    path: PathBuf,
    full: Arc<AtomicBool>,
    reserve: Arc<Reserve>,
    /// When a batch was last refused for lack of space.
    refused_at: Option<Instant>,
    records: Arc<Mutex<HashMap<String, StreamRecord>>>,
    commits: Arc<std::sync::atomic::AtomicU64>,
}

type Done = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// A change to one stream made by a batch, applied to the cache after commit.
type Staged = HashMap<String, Option<StreamRecord>>;

impl ShardWriter {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // A reopen that failed is tried again even without writes,
                    // so that reads come back.
                    if open_db(&self.db).is_err() {
                        self.reopen();
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            // Out of space: a batch with a delete is tried at once (with the
            // reserve given up for it); others at most once a second, so
            // that a full disk costs little and writes resume soon after
            // room comes back.
            let deletes = batch
                .iter()
                .any(|op| matches!(op, Op::Delete { .. } | Op::SoftDelete { .. }));
            if self.full.load(Ordering::Acquire) {
                if deletes {
                    self.reserve.release();
                } else if self
                    .refused_at
                    .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
                {
                    for op in batch {
                        refuse_with(op, StorageError::Full);
                    }
                    continue;
                }
            }
            let mut staged = Staged::new();
            let mut done: Vec<Done> = Vec::new();
            let result = self.commit(batch, &mut staged, &mut done);
            if matches!(result, Err(StorageError::Full | StorageError::Io(_))) {
                // redb fails everything after an I/O error until reopened.
                self.reopen();
            }
            match result {
                Ok(()) => {
                    // Only a batch that wrote something shows there is room.
                    if !staged.is_empty() && self.full.swap(false, Ordering::AcqRel) {
                        tracing::info!("redb has room again: writes resume");
                    }
                    self.reserve.keep();
                    self.commits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
                    for (key, record) in staged {
                        match record {
                            Some(record) => records.insert(key, record),
                            None => records.remove(&key),
                        };
                    }
                    drop(records);
                    for finish in done {
                        finish(Ok(()));
                    }
                }
                Err(StorageError::Full) => {
                    if !self.full.swap(true, Ordering::AcqRel) {
                        tracing::error!("redb is out of space: writes get 507 until room is freed");
                    }
                    self.refused_at = Some(Instant::now());
                    for finish in done {
                        finish(Err(StorageError::Full));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "redb commit failed; the batch is refused");
                    let message = e.to_string();
                    for finish in done {
                        finish(Err(StorageError::Backend(message.clone().into())));
                    }
                }
            }
        }
    }

    /// Closes the database and opens it again, waiting (up to 5 s) for reads
    /// in progress to let go of it; reads meanwhile get 503.
    fn reopen(&self) {
        let taken = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut db) = taken {
            let started = Instant::now();
            loop {
                match Arc::try_unwrap(db) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(shared) if started.elapsed() < Duration::from_secs(5) => {
                        db = shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(shared) => {
                        tracing::error!("reads held the database for 5 s; not reopened this time");
                        *self.db.write().unwrap_or_else(|e| e.into_inner()) = Some(shared);
                        return;
                    }
                }
            }
        }
        let reopened = Database::create(&self.path)
            .map_err(backend)
            .and_then(|db| load_records(&db).map(|records| (db, records)));
        match reopened {
            Ok((db, records)) => {
                // What the file holds now is the truth: a failed commit may
                // have reached it after all.
                *self.records.lock().unwrap_or_else(|e| e.into_inner()) = records;
                *self.db.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(db));
                tracing::info!(path = %self.path.display(), "reopened the database after an I/O error");
            }
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "could not reopen the database; trying again with the next write");
            }
        }
    }

    /// The current record of `key`, as this batch left it.
    fn current(&self, staged: &Staged, key: &str) -> Option<StreamRecord> {
        match staged.get(key) {
            Some(record) => record.clone(),
            None => self
                .records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(key)
                .cloned(),
        }
    }

    fn commit(
        &self,
        batch: Vec<Op>,
        staged: &mut Staged,
        done: &mut Vec<Done>,
    ) -> Result<(), StorageError> {
        let db = match open_db(&self.db) {
            Ok(db) => db,
            Err(_) => {
                // A reopen that failed earlier: try again now.
                self.reopen();
                open_db(&self.db)?
            }
        };
        let mut txn = db.begin_write().map_err(backend)?;
        txn.set_durability(Durability::Immediate).map_err(backend)?;
        let mut failed = None;
        {
            let mut streams = txn.open_table(STREAMS).map_err(backend)?;
            let mut data = txn.open_table(DATA).map_err(backend)?;
            for op in batch {
                if let Some(e) = &failed {
                    refuse(op, format!("{e}"));
                    continue;
                }
                if let Err(e) = self.apply(op, staged, done, &mut streams, &mut data) {
                    failed = Some(e);
                }
            }
        }
        if let Some(e) = failed {
            txn.abort().map_err(backend)?;
            return Err(e);
        }
        txn.commit().map_err(backend)
    }

    fn apply(
        &self,
        op: Op,
        staged: &mut Staged,
        done: &mut Vec<Done>,
        streams: &mut redb::Table<&str, &[u8]>,
        data: &mut redb::Table<(u64, u64), &[u8]>,
    ) -> Result<(), StorageError> {
        match op {
            Op::Create {
                key,
                mut record,
                initial,
                reply,
            } => {
                if let Some(existing) = self.current(staged, &key) {
                    // Answered after the commit: the record may be this batch's.
                    done.push(Box::new(move |r| {
                        let _ = reply.send(r.map(|()| CreateOutcome::Exists(Box::new(existing))));
                    }));
                    return Ok(());
                }
                if !initial.is_empty() {
                    data.insert((record.config.id, record.tail), initial.as_ref())
                        .map_err(backend)?;
                    record.tail += initial.len() as u64;
                }
                put(streams, &key, &record)?;
                staged.insert(key, Some(record));
                done.push(Box::new(move |r| {
                    let _ = reply.send(r.map(|()| CreateOutcome::Created));
                }));
            }
            Op::Append { key, append, reply } => {
                let mut record = match self.current(staged, &key) {
                    Some(r) if r.config.id == append.stream_id => r,
                    _ => {
                        refuse_after_commit(done, reply, StorageError::NotFound);
                        return Ok(());
                    }
                };
                if record.tail != append.expected_tail || record.closed {
                    let actual_tail = record.tail;
                    refuse_after_commit(done, reply, StorageError::Conflict { actual_tail });
                    return Ok(());
                }
                if !append.data.is_empty() {
                    data.insert((append.stream_id, record.tail), append.data.as_ref())
                        .map_err(backend)?;
                }
                record.apply(&append);
                put(streams, &key, &record)?;
                staged.insert(key, Some(record));
                done.push(Box::new(move |r| {
                    let _ = reply.send(r);
                }));
            }
            Op::SoftDelete { key, reply } => {
                let Some(mut record) = self.current(staged, &key) else {
                    let _ = reply.send(Err(StorageError::NotFound));
                    return Ok(());
                };
                record.soft_deleted = true;
                put(streams, &key, &record)?;
                staged.insert(key, Some(record));
                done.push(Box::new(move |r| {
                    let _ = reply.send(r);
                }));
            }
            Op::Delete { key, reply } => {
                let Some(record) = self.current(staged, &key) else {
                    let _ = reply.send(Err(StorageError::NotFound));
                    return Ok(());
                };
                let id = record.config.id;
                streams.remove(key.as_str()).map_err(backend)?;
                data.retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                    .map_err(backend)?;
                staged.insert(key, None);
                done.push(Box::new(move |r| {
                    let _ = reply.send(r);
                }));
            }
        }
        Ok(())
    }
}

fn put(
    streams: &mut redb::Table<&str, &[u8]>,
    key: &str,
    record: &StreamRecord,
) -> Result<(), StorageError> {
    let mut buf = BytesMut::new();
    codec::put_record(&mut Writer(&mut buf), record);
    streams.insert(key, buf.as_ref()).map_err(backend)?;
    Ok(())
}

/// Answers a refusal once the batch's commit is settled: the refusal read the
/// batch's own state.
fn refuse_after_commit(
    done: &mut Vec<Done>,
    reply: oneshot::Sender<Result<(), StorageError>>,
    error: StorageError,
) {
    done.push(Box::new(move |r| {
        let _ = reply.send(r.and(Err(error)));
    }));
}

fn refuse(op: Op, reason: String) {
    refuse_with(op, StorageError::Backend(reason.into()));
}

fn refuse_with(op: Op, error: StorageError) {
    match op {
        Op::Create { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Op::Append { reply, .. } | Op::SoftDelete { reply, .. } | Op::Delete { reply, .. } => {
            let _ = reply.send(Err(error));
        }
    }
}

/// Reads `from..to` of stream `id` from one database.
fn read_range(
    db: &Database,
    id: u64,
    from: u64,
    to: u64,
    max_bytes: usize,
    cut: Cut,
) -> Result<ReadChunk, StorageError> {
    let mut plan = RangePlan::new(from, to, max_bytes, cut);
    // Values are copied out of the database anyway: into one buffer, so the
    // read is one large `Bytes` rather than one per append.
    let expected = to.saturating_sub(from).min(max_bytes as u64).min(8 << 20);
    let mut data = BytesMut::with_capacity(expected as usize);
    let txn = db.begin_read().map_err(backend)?;
    let table = match txn.open_table(DATA) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(ReadChunk::empty(from)),
        Err(e) => return Err(backend(e)),
    };
    // The append that holds `from` starts at or before it.
    let first = match table
        .range((id, 0)..=(id, from))
        .map_err(backend)?
        .next_back()
    {
        Some(entry) => entry.map_err(backend)?.0.value().1,
        None => return Ok(ReadChunk::empty(from)),
    };
    for entry in table.range((id, first)..(id, to)).map_err(backend)? {
        let (key, value) = entry.map_err(backend)?;
        let bytes = value.value();
        match plan.take(key.value().1, bytes.len() as u64) {
            Take::Bytes(range) => data.extend_from_slice(&bytes[range]),
            Take::Skip => continue,
            _ => break,
        }
        if plan.done() {
            break;
        }
    }
    let data = if data.is_empty() {
        Vec::new()
    } else {
        vec![data.freeze()]
    };
    Ok(ReadChunk::new(data, plan.end()))
}

impl Storage for RedbStorage {
    fn health(&self) -> StorageFuture<'_, ()> {
        self.check()
    }

    fn load(&self) -> StorageFuture<'_, Vec<(String, StreamRecord)>> {
        let all = self
            .shards
            .iter()
            .flat_map(|s| {
                let records = s.records.lock().unwrap_or_else(|e| e.into_inner());
                records
                    .iter()
                    .map(|(k, r)| (k.clone(), r.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        Box::pin(async move { Ok(all) })
    }

    fn get<'a>(&'a self, key: &'a str) -> StorageFuture<'a, Option<StreamRecord>> {
        let record = self
            .shard(key)
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned();
        Box::pin(async move { Ok(record) })
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        record: StreamRecord,
        initial: Bytes,
    ) -> StorageFuture<'a, CreateOutcome> {
        let (tx, rx) = oneshot::channel();
        let submitted = self.submit(
            key,
            Op::Create {
                key: key.to_owned(),
                record,
                initial,
                reply: tx,
            },
        );
        answer(submitted, rx)
    }

    fn append(&self, key: &str, append: Append) -> AppendFuture {
        let (tx, rx) = oneshot::channel();
        let end = append.end();
        let submitted = self.submit(
            key,
            Op::Append {
                key: key.to_owned(),
                append,
                reply: tx,
            },
        );
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
        let shard = self.shard(key);
        let record = shard
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .map(|r| (r.config.id, r.tail));
        let db = open_db(&shard.db);
        Box::pin(async move {
            let (id, tail) = record.ok_or(StorageError::NotFound)?;
            let db = db?;
            let to = to.min(tail);
            if from >= to {
                return Ok(ReadChunk::empty(from));
            }
            tokio::task::spawn_blocking(move || read_range(&db, id, from, to, max_bytes, cut))
                .await
                .map_err(|e| StorageError::Io(std::io::Error::other(e)))?
        })
    }

    fn soft_delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()> {
        let (tx, rx) = oneshot::channel();
        let submitted = self.submit(
            key,
            Op::SoftDelete {
                key: key.to_owned(),
                reply: tx,
            },
        );
        answer(submitted, rx)
    }

    fn delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()> {
        let (tx, rx) = oneshot::channel();
        let submitted = self.submit(
            key,
            Op::Delete {
                key: key.to_owned(),
                reply: tx,
            },
        );
        answer(submitted, rx)
    }
}

impl RedbStorage {
    /// Fails while a shard is out of space (until a probe finds room again)
    /// or its database is closed after an I/O error.
    fn check(&self) -> StorageFuture<'_, ()> {
        if self.shards.iter().any(|s| open_db(&s.db).is_err()) {
            return Box::pin(async {
                Err(StorageError::Unavailable(
                    "a database is being reopened after an I/O error".into(),
                ))
            });
        }
        if !self.shards.iter().any(|s| s.full.load(Ordering::Acquire)) {
            return Box::pin(async { Ok(()) });
        }
        if let Some(room) = self.reserve.recent_probe() {
            return Box::pin(async move {
                if room {
                    Ok(())
                } else {
                    Err(StorageError::Full)
                }
            });
        }
        let reserve = self.reserve.clone();
        Box::pin(async move {
            let probed = tokio::task::spawn_blocking(move || reserve.probe(1024 * 1024))
                .await
                .map_err(|e| StorageError::Io(std::io::Error::other(e)))?;
            if probed {
                Ok(())
            } else {
                Err(StorageError::Full)
            }
        })
    }
}

impl Drop for Shard {
    /// Closes the queue and waits for the writer to finish its last commit, so
    /// that the database can be opened again as soon as the storage is dropped.
    fn drop(&mut self) {
        self.queue.get_mut().map(Option::take).ok();
        if let Some(thread) = self.thread.get_mut().ok().and_then(Option::take) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::storage_testkit!(
        RedbStorage::open(tempfile::tempdir().unwrap().keep(), 4).unwrap(),
        reopen: {
            let dir = tempfile::tempdir().unwrap().keep();
            move || std::future::ready(RedbStorage::open(&dir, 4).unwrap())
        },
    );
}
