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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::codec::{self, Reader, Writer};
use super::queue::{answer, poisoned, reject, Op};
use super::{
    Append, AppendFuture, CreateOutcome, Cut, ReadChunk, Storage, StorageError, StorageFuture,
    StreamRecord,
};

const HEADER_LEN: usize = 24;
const KIND_CREATE: u8 = 1;
const KIND_APPEND: u8 = 2;
const KIND_SOFT_DELETE: u8 = 3;
const KIND_DELETE: u8 = 4;
/// Most bytes one flush gathers before writing.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Most segment files kept open for reads.
const MAX_OPEN_SEGMENTS: usize = 64;
/// Gaps up to this size between pieces of one read are read through.
const COALESCE_GAP: u64 = 16 * 1024;

/// When an append counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged once the bytes reach the operating system: survives a killed
    /// process, not a power loss (`file-fast`).
    Buffered,
    /// Acknowledged only after `fdatasync`: survives a power loss (`file-durable`).
    Fsync,
}

/// Counters of the writer, to see group commit at work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
}

/// Where one append's bytes sit in the log.
#[derive(Debug, Clone, Copy)]
struct Piece {
    position: u64,
    segment: u32,
    offset: u64,
    len: u32,
}

#[derive(Debug)]
struct Entry {
    record: StreamRecord,
    pieces: Vec<Piece>,
    corrupt: bool,
}

#[derive(Debug, Default)]
struct SegmentInfo {
    /// Stream ids with records here, alive or not.
    ids: HashSet<u64>,
    /// Stream ids whose delete record is here.
    deletes: Vec<u64>,
}

#[derive(Debug, Default)]
struct Index {
    streams: HashMap<String, Entry>,
    keys: HashMap<u64, String>,
    segments: BTreeMap<u32, SegmentInfo>,
}

impl Index {
    fn note(&mut self, segment: u32, id: u64) {
        self.segments.entry(segment).or_default().ids.insert(id);
    }

    fn alive(&self, id: u64) -> bool {
        self.keys.contains_key(&id)
    }

    /// Segments below `current` that hold nothing anyone needs.
    fn dead_segments(&self, current: u32) -> Vec<u32> {
        let mut dead = Vec::new();
        for (&number, info) in self.segments.range(..current) {
            if info.ids.iter().any(|&id| self.alive(id)) {
                continue;
            }
            let needed = info.deletes.iter().any(|id| {
                self.segments
                    .range(..number)
                    .any(|(n, older)| !dead.contains(n) && older.ids.contains(id))
            });
            if !needed {
                dead.push(number);
            }
        }
        dead
    }
}

fn segment_path(dir: &Path, number: u32) -> PathBuf {
    dir.join("log").join(format!("{number:010}.log"))
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

fn header(kind: u8, stream_id: u64, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[4] = kind;
    h[8..16].copy_from_slice(&stream_id.to_le_bytes());
    h[16..20].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let header_crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&header_crc.to_le_bytes());
    h
}

struct Header {
    len: usize,
    kind: u8,
    stream_id: u64,
    payload_crc: u32,
}

fn parse_header(h: &[u8]) -> Option<Header> {
    let field = |range: std::ops::Range<usize>| h.get(range);
    let crc = u32::from_le_bytes(field(20..24)?.try_into().ok()?);
    if crc != crc32fast::hash(field(0..20)?) || h.iter().all(|&b| b == 0) {
        return None;
    }
    Some(Header {
        len: u32::from_le_bytes(field(0..4)?.try_into().ok()?) as usize,
        kind: h[4],
        stream_id: u64::from_le_bytes(field(8..16)?.try_into().ok()?),
        payload_crc: u32::from_le_bytes(field(16..20)?.try_into().ok()?),
    })
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
        let (index, last) = replay(&dir)?;
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
        };
        let thread = std::thread::Builder::new()
            .name("ds-file-writer".into())
            .spawn(move || writer.run(rx))?;
        *shared.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        Ok(FileStorage { shared })
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
        self.queue.get_mut().map(Option::take).ok();
        if let Some(thread) = self.thread.get_mut().ok().and_then(Option::take) {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// Replays every segment, returning the index and the last segment's number and
/// valid length.
fn replay(dir: &Path) -> Result<(Index, Option<(u32, u64)>), StorageError> {
    let mut numbers: Vec<u32> = fs::read_dir(dir.join("log"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    numbers.sort_unstable();
    let mut index = Index::default();
    let mut last = None;
    for (i, &number) in numbers.iter().enumerate() {
        let is_last = i + 1 == numbers.len();
        let path = segment_path(dir, number);
        let mut bytes = Vec::new();
        File::open(&path)?.read_to_end(&mut bytes)?;
        let valid = replay_segment(&mut index, number, &bytes, is_last)?;
        if valid < bytes.len() {
            tracing::warn!(
                segment = %path.display(),
                kept = valid,
                dropped = bytes.len() - valid,
                "cutting off a torn or corrupt log tail"
            );
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(valid as u64)?;
            file.sync_all()?;
        }
        index.segments.entry(number).or_default();
        last = Some((number, valid as u64));
    }
    Ok((index, last))
}

/// Applies one segment's records; returns the length of its valid prefix.
fn replay_segment(
    index: &mut Index,
    number: u32,
    bytes: &[u8],
    is_last: bool,
) -> Result<usize, StorageError> {
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + HEADER_LEN).and_then(parse_header) else {
            return torn(number, at, bytes.len(), is_last, bytes);
        };
        let start = at + HEADER_LEN;
        let Some(payload) = bytes.get(start..start + header.len) else {
            return torn(number, at, bytes.len(), is_last, bytes);
        };
        let end = start + header.len;
        if crc32fast::hash(payload) != header.payload_crc {
            if is_last && end == bytes.len() {
                return Ok(at);
            }
            tracing::error!(
                segment = number,
                offset = at,
                stream_id = header.stream_id,
                "corrupt record; the stream's reads will fail"
            );
            if let Some(key) = index.keys.get(&header.stream_id) {
                if let Some(entry) = index.streams.get_mut(key) {
                    entry.corrupt = true;
                }
            }
            index.note(number, header.stream_id);
            at = end;
            continue;
        }
        apply(index, number, at as u64, &header, payload)?;
        at = end;
    }
    Ok(at)
}

fn torn(
    number: u32,
    at: usize,
    len: usize,
    is_last: bool,
    bytes: &[u8],
) -> Result<usize, StorageError> {
    if is_last && !valid_record_after(bytes, at) {
        Ok(at)
    } else if is_last {
        Err(StorageError::Corrupt(format!(
            "log segment {number:010} is damaged at byte {at} of {len}, with intact records after it"
        )))
    } else {
        Err(StorageError::Corrupt(format!(
            "log segment {number:010} is damaged at byte {at} of {len}, before the end of the log"
        )))
    }
}

/// Whether an intact record starts anywhere after `at`: then the damage at `at`
/// is not a torn tail (which only ever ends the log) and must not be cut off.
fn valid_record_after(bytes: &[u8], at: usize) -> bool {
    (at + 1..bytes.len().saturating_sub(HEADER_LEN)).any(|pos| {
        parse_header(&bytes[pos..pos + HEADER_LEN]).is_some_and(|h| {
            bytes
                .get(pos + HEADER_LEN..pos + HEADER_LEN + h.len)
                .is_some_and(|payload| crc32fast::hash(payload) == h.payload_crc)
        })
    })
}

/// Applies one checked record to the index.
fn apply(
    index: &mut Index,
    segment: u32,
    offset: u64,
    header: &Header,
    payload: &[u8],
) -> Result<(), StorageError> {
    let id = header.stream_id;
    let mut reader = Reader::new(payload);
    match header.kind {
        KIND_CREATE => {
            let key = reader.string()?;
            let record = codec::get_record(&mut reader)?;
            let data_at = reader.position();
            if let Some(old) = index.streams.remove(&key) {
                index.keys.remove(&old.record.config.id);
            }
            let mut entry = Entry {
                record,
                pieces: Vec::new(),
                corrupt: false,
            };
            let len = payload.len() - data_at;
            if len > 0 {
                entry.pieces.push(Piece {
                    position: entry.record.tail,
                    segment,
                    offset: offset + (HEADER_LEN + data_at) as u64,
                    len: len as u32,
                });
                entry.record.tail += len as u64;
            }
            index.keys.insert(id, key.clone());
            index.streams.insert(key, entry);
        }
        KIND_APPEND => {
            let append = codec::get_append_state(&mut reader, id)?;
            let data_at = reader.position();
            let len = (payload.len() - data_at) as u64;
            if let Some(entry) = index.keys.get(&id).and_then(|k| index.streams.get_mut(k)) {
                if entry.record.tail != append.expected_tail {
                    entry.corrupt = true;
                } else {
                    if len > 0 {
                        entry.pieces.push(Piece {
                            position: entry.record.tail,
                            segment,
                            offset: offset + (HEADER_LEN + data_at) as u64,
                            len: len as u32,
                        });
                    }
                    codec::apply_append(&mut entry.record, &append, len);
                }
            }
        }
        KIND_SOFT_DELETE => {
            if let Some(entry) = index.keys.get(&id).and_then(|k| index.streams.get_mut(k)) {
                entry.record.soft_deleted = true;
            }
        }
        KIND_DELETE => {
            if let Some(key) = index.keys.remove(&id) {
                index.streams.remove(&key);
            }
            index.segments.entry(segment).or_default().deletes.push(id);
        }
        other => {
            return Err(StorageError::Corrupt(format!(
                "unknown record kind {other} in segment {segment:010}"
            )))
        }
    }
    index.note(segment, id);
    Ok(())
}

struct LogWriter {
    shared: std::sync::Weak<Shared>,
    durability: Durability,
    segment_bytes: u64,
    current: u32,
    file: File,
    size: u64,
    buffer: Vec<u8>,
}

type Done = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

enum KindOf {
    SoftDelete,
    Other,
}

impl LogWriter {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            let mut done: Vec<Done> = Vec::new();
            let mut pending = Some(first);
            while let Some(op) = pending.take() {
                self.process(&shared, op, &mut done);
                if self.buffer.len() < MAX_BATCH_BYTES {
                    pending = rx.try_recv().ok();
                }
            }
            let result = if shared.poisoned.load(Ordering::Acquire) {
                Err(io::Error::other("the log writer stopped during this batch"))
            } else {
                self.flush(&shared)
            };
            if !done.is_empty() {
                let bucket = (usize::BITS - (done.len() - 1).leading_zeros()) as usize;
                shared.stats.batch_sizes[bucket.min(12)].fetch_add(1, Ordering::Relaxed);
            }
            if result.is_err() {
                shared.poisoned.store(true, Ordering::Release);
            }
            // Let go of the store before answering: once a caller has its answer
            // and drops the store, nothing here may keep it (and its lock) alive.
            drop(shared);
            for finish in done {
                finish(match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(StorageError::Io(io::Error::new(e.kind(), e.to_string()))),
                });
            }
            if result.is_err() {
                tracing::error!("log writer stopped after an I/O error");
                return;
            }
        }
    }

    /// Checks one operation against the index, queues its record and applies it.
    fn process(&mut self, shared: &Shared, op: Op, done: &mut Vec<Done>) {
        if shared.poisoned.load(Ordering::Acquire) {
            reject(op);
            return;
        }
        let kind_of = match &op {
            Op::SoftDelete { .. } => KindOf::SoftDelete,
            _ => KindOf::Other,
        };
        match op {
            Op::Create {
                key,
                record,
                initial,
                reply,
            } => {
                let existing = {
                    let index = shared.index.read().unwrap_or_else(|e| e.into_inner());
                    index.streams.get(&key).map(|e| e.record.clone())
                };
                if let Some(existing) = existing {
                    // Answered after the flush: the record may be this batch's.
                    done.push(Box::new(move |r| {
                        let _ = reply.send(r.map(|()| CreateOutcome::Exists(Box::new(existing))));
                    }));
                    return;
                }
                let mut payload = BytesMut::new();
                Writer(&mut payload).str(&key);
                codec::put_record(&mut Writer(&mut payload), &record);
                payload.extend_from_slice(&initial);
                let id = record.config.id;
                match self.queue(KIND_CREATE, id, &payload) {
                    Ok((segment, offset, header)) => {
                        let mut index = shared.index.write().unwrap_or_else(|e| e.into_inner());
                        let _ = apply(&mut index, segment, offset, &header, &payload);
                        done.push(Box::new(move |r| {
                            let _ = reply.send(r.map(|()| CreateOutcome::Created));
                        }));
                    }
                    Err(e) => {
                        // The batch can no longer be trusted: stop the writer.
                        shared.poisoned.store(true, Ordering::Release);
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Op::Append { key, append, reply } => {
                let check = {
                    let index = shared.index.read().unwrap_or_else(|e| e.into_inner());
                    match index.streams.get(&key) {
                        None => Err(StorageError::NotFound),
                        Some(e) if e.record.config.id != append.stream_id => {
                            Err(StorageError::NotFound)
                        }
                        Some(e) if e.corrupt => {
                            Err(StorageError::Corrupt(format!("stream {key} is damaged")))
                        }
                        Some(e) if e.record.tail != append.expected_tail || e.record.closed => {
                            Err(StorageError::Conflict {
                                actual_tail: e.record.tail,
                            })
                        }
                        Some(_) => Ok(()),
                    }
                };
                if let Err(e) = check {
                    let _ = reply.send(Err(e));
                    return;
                }
                let mut payload = BytesMut::with_capacity(append.data.len() + 64);
                codec::put_append_state(&mut Writer(&mut payload), &append);
                payload.extend_from_slice(&append.data);
                self.queue_applied(shared, KIND_APPEND, append.stream_id, payload, reply, done);
            }
            Op::SoftDelete { key, reply } | Op::Delete { key, reply } => {
                let kind = if matches!(kind_of, KindOf::SoftDelete) {
                    KIND_SOFT_DELETE
                } else {
                    KIND_DELETE
                };
                let id = shared
                    .index
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .streams
                    .get(&key)
                    .map(|e| e.record.config.id);
                match id {
                    None => {
                        let _ = reply.send(Err(StorageError::NotFound));
                    }
                    Some(id) => self.queue_applied(shared, kind, id, BytesMut::new(), reply, done),
                }
            }
        }
    }

    fn queue_applied(
        &mut self,
        shared: &Shared,
        kind: u8,
        id: u64,
        payload: BytesMut,
        reply: oneshot::Sender<Result<(), StorageError>>,
        done: &mut Vec<Done>,
    ) {
        match self.queue(kind, id, &payload) {
            Ok((segment, offset, header)) => {
                let mut index = shared.index.write().unwrap_or_else(|e| e.into_inner());
                let _ = apply(&mut index, segment, offset, &header, &payload);
                done.push(Box::new(move |r| {
                    let _ = reply.send(r);
                }));
            }
            Err(e) => {
                // The batch can no longer be trusted: stop the writer.
                shared.poisoned.store(true, Ordering::Release);
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// Adds a record to the batch, rotating segments as needed; returns where it
    /// will sit.
    fn queue(&mut self, kind: u8, id: u64, payload: &[u8]) -> io::Result<(u32, u64, Header)> {
        let len = (HEADER_LEN + payload.len()) as u64;
        if u32::try_from(payload.len()).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record larger than 4 GiB",
            ));
        }
        let position = self.size + self.buffer.len() as u64;
        if position > 0 && position + len > self.segment_bytes {
            self.rotate()?;
        }
        let offset = self.size + self.buffer.len() as u64;
        let bytes = header(kind, id, payload);
        self.buffer.extend_from_slice(&bytes);
        self.buffer.extend_from_slice(payload);
        let parsed = Header {
            len: payload.len(),
            kind,
            stream_id: id,
            payload_crc: u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
        };
        Ok((self.current, offset, parsed))
    }

    /// Writes the batch to the current segment and starts the next one.
    fn rotate(&mut self) -> io::Result<()> {
        self.write_buffer()?;
        if self.durability == Durability::Fsync {
            self.file.sync_data()?;
        }
        let Some(shared) = self.shared.upgrade() else {
            return Err(io::Error::other("storage dropped"));
        };
        let next = self.current + 1;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&shared.dir, next))?;
        if self.durability == Durability::Fsync {
            sync_dir(&shared.dir.join("log"))?;
        }
        self.current = next;
        self.file = file;
        self.size = 0;
        shared
            .index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .segments
            .entry(self.current)
            .or_default();
        Ok(())
    }

    fn write_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buffer)?;
        self.size += self.buffer.len() as u64;
        if let Some(shared) = self.shared.upgrade() {
            shared
                .stats
                .bytes
                .fetch_add(self.buffer.len() as u64, Ordering::Relaxed);
        }
        self.buffer.clear();
        Ok(())
    }

    fn flush(&mut self, shared: &Shared) -> io::Result<()> {
        let operations = self.buffer.is_empty();
        self.write_buffer()?;
        if self.durability == Durability::Fsync && !operations {
            self.file.sync_data()?;
            shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        shared.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.collect_garbage(shared);
        Ok(())
    }

    /// Deletes segments that hold nothing anyone needs any more.
    fn collect_garbage(&mut self, shared: &Shared) {
        let dead = {
            let index = shared.index.read().unwrap_or_else(|e| e.into_inner());
            index.dead_segments(self.current)
        };
        if dead.is_empty() {
            return;
        }
        let mut index = shared.index.write().unwrap_or_else(|e| e.into_inner());
        let mut open = shared
            .open_segments
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Oldest first, and stop at the first failure: a newer dead segment may
        // hold the delete records that keep an older one's streams deleted.
        for number in dead {
            match fs::remove_file(segment_path(&shared.dir, number)) {
                Ok(()) => {
                    index.segments.remove(&number);
                    open.remove(&number);
                    tracing::debug!(
                        segment = number,
                        "deleted a log segment with no live records"
                    );
                }
                Err(e) => {
                    tracing::warn!(segment = number, error = %e, "could not delete a dead log segment");
                    break;
                }
            }
        }
        if self.durability == Durability::Fsync {
            if let Err(e) = sync_dir(&shared.dir.join("log")) {
                tracing::warn!(error = %e, "could not sync the log directory after deleting segments");
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
        let submitted = self.submit(Op::Append {
            key: key.to_owned(),
            append,
            reply,
        });
        answer(submitted, rx)
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
}

/// One slice of a read: `len` bytes at `offset` of `segment`.
#[derive(Debug, Clone, Copy)]
struct Slice {
    segment: u32,
    offset: u64,
    len: usize,
}

impl FileStorage {
    /// Decides which byte ranges of which segments a read needs.
    fn plan(
        &self,
        key: &str,
        from: u64,
        to: u64,
        max_bytes: usize,
        cut: Cut,
    ) -> Result<(Vec<Slice>, u64), StorageError> {
        let index = self.shared.index.read().unwrap_or_else(|e| e.into_inner());
        let entry = index.streams.get(key).ok_or(StorageError::NotFound)?;
        if entry.corrupt {
            return Err(StorageError::Corrupt(format!(
                "stream {key} has a damaged record in the log"
            )));
        }
        let to = to.min(entry.record.tail);
        let mut slices = Vec::new();
        let mut end = from;
        let first = entry.pieces.partition_point(|p| p.position <= from);
        let Some(mut i) = first.checked_sub(1) else {
            return Ok((slices, end));
        };
        let mut budget = max_bytes.max(1);
        while i < entry.pieces.len() && end < to {
            let piece = entry.pieces[i];
            let piece_end = piece.position + u64::from(piece.len);
            let lo = end - piece.position;
            let mut hi = piece_end.min(to) - piece.position;
            if cut == Cut::AnyByte {
                hi = hi.min(lo.saturating_add(budget as u64));
            } else if !slices.is_empty() && (hi - lo) as usize > budget {
                break;
            }
            slices.push(Slice {
                segment: piece.segment,
                offset: piece.offset + lo,
                len: (hi - lo) as usize,
            });
            end = piece.position + hi;
            budget = budget.saturating_sub((hi - lo) as usize);
            if budget == 0 {
                break;
            }
            i += 1;
        }
        Ok((slices, end))
    }

    /// Reads the planned slices, coalescing neighbours in one segment into one
    /// `pread` and handing out slices of it.
    fn fetch(&self, slices: &[Slice], end: u64) -> Result<ReadChunk, StorageError> {
        let mut data = Vec::with_capacity(slices.len());
        let mut i = 0;
        while i < slices.len() {
            let first = slices[i];
            let mut j = i + 1;
            let mut span_end = first.offset + first.len as u64;
            while j < slices.len()
                && slices[j].segment == first.segment
                && slices[j].offset >= span_end
                && slices[j].offset - span_end <= COALESCE_GAP
            {
                span_end = slices[j].offset + slices[j].len as u64;
                j += 1;
            }
            let file = self.segment(first.segment)?;
            let mut buf = vec![0u8; (span_end - first.offset) as usize];
            file.read_exact_at(&mut buf, first.offset)?;
            let buf = Bytes::from(buf);
            for slice in &slices[i..j] {
                let start = (slice.offset - first.offset) as usize;
                data.push(buf.slice(start..start + slice.len));
            }
            i = j;
        }
        Ok(ReadChunk { data, end })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::storage_testkit!(FileStorage::open(
        tempfile::tempdir().unwrap().keep(),
        Durability::Fsync
    )
    .unwrap());

    mod buffered {
        use super::*;
        crate::storage_testkit!(FileStorage::open(
            tempfile::tempdir().unwrap().keep(),
            Durability::Buffered
        )
        .unwrap());
    }
}
