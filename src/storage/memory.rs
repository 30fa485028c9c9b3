//! In-memory storage: fast, shared by clones, gone when the process exits.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};

use super::{
    Append, AppendFuture, CreateOutcome, Cut, RangePlan, ReadChunk, Storage, StorageError,
    StorageFuture, StreamRecord, Take,
};

/// Keeps every stream in memory in large shared blocks; reads hand out slices
/// of them, never a copy made per read.
///
/// Cloning a `MemoryStorage` gives another handle to the same streams.
///
/// ```
/// use tower_durable_streams::{DurableStreamsService, MemoryStorage};
///
/// let service = DurableStreamsService::builder()
///     .storage(MemoryStorage::new())
///     .build()
///     .unwrap();
/// # let _ = service;
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStorage {
    streams: Arc<RwLock<HashMap<String, Arc<RwLock<MemStream>>>>>,
    held: Arc<std::sync::atomic::AtomicU64>,
    max_bytes: u64,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        MemoryStorage {
            streams: Arc::default(),
            held: Arc::default(),
            max_bytes: u64::MAX,
        }
    }
}

#[derive(Debug)]
struct MemStream {
    record: StreamRecord,
    /// Start position of each append (record), ascending.
    starts: Vec<u64>,
    /// The stream's bytes in position order, as `(start, bytes)`: one piece
    /// per full block, and one per append in the block being filled.
    pieces: Vec<(u64, Bytes)>,
    /// The first piece of the block being filled.
    open: usize,
    /// Where the copies of appends go.
    blocks: Blocks,
    /// Total bytes held.
    bytes: usize,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuses creates and appends that would hold more than `max_bytes` of
    /// stream data in total ([`StorageError::Full`], answered 507). Unlimited by
    /// default.
    ///
    /// ```
    /// use tower_durable_streams::MemoryStorage;
    ///
    /// let storage = MemoryStorage::new().with_max_bytes(512 * 1024 * 1024);
    /// # let _ = storage;
    /// ```
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Total bytes of stream data held.
    pub fn data_bytes(&self) -> u64 {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reserves room for `len` more bytes, or reports the store full.
    fn reserve(&self, len: usize) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        let len = len as u64;
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(len)
                    .filter(|&total| total <= self.max_bytes)
            })
            .map(drop)
            .map_err(|_| StorageError::Full)
    }

    fn release(&self, len: usize) {
        self.held
            .fetch_sub(len as u64, std::sync::atomic::Ordering::AcqRel);
    }

    fn stream(&self, key: &str) -> Result<Arc<RwLock<MemStream>>, StorageError> {
        let streams = self.streams.read().unwrap_or_else(|e| e.into_inner());
        streams.get(key).cloned().ok_or(StorageError::NotFound)
    }

    fn apply(&self, key: &str, append: Append) -> Result<(), StorageError> {
        let stream = self.stream(key)?;
        let mut stream = stream.write().unwrap_or_else(|e| e.into_inner());
        if stream.record.config.id != append.stream_id {
            return Err(StorageError::NotFound);
        }
        if stream.record.tail != append.expected_tail || stream.record.closed {
            return Err(StorageError::Conflict {
                actual_tail: stream.record.tail,
            });
        }
        self.reserve(append.data.len())?;
        let stream = &mut *stream;
        let len = append.data.len();
        if len > 0 {
            let at = stream.record.tail;
            stream.keep(at, &append.data);
        }
        stream.record.apply(&append);
        Ok(())
    }
}

/// Slices shorter than this are copied together by a read.
const GATHER_BELOW: usize = 4096;

/// The smallest and the largest block a stream's appends are copied into.
const MIN_BLOCK: usize = 1024;
const MAX_BLOCK: usize = 256 * 1024;

/// Room for a stream's next appends: copying many small appends into one block
/// costs one allocation per block instead of one per append.
#[derive(Debug, Default)]
struct Blocks {
    /// The unused end of the current block.
    block: BytesMut,
    /// The size of the current block.
    size: usize,
}

impl Blocks {
    /// A copy of `data` in the current block, and whether that block is a
    /// new one. The first block is the first append's size; then blocks
    /// double from `MIN_BLOCK` up to `MAX_BLOCK`, so a small
    /// stream holds little spare room and a busy one allocates rarely; an
    /// append larger than a block gets one of its own.
    fn copy(&mut self, data: &[u8]) -> (Bytes, bool) {
        let new_block = self.block.capacity() < data.len();
        if new_block && self.size == 0 {
            // A stream's first append gets a block of its own size: most
            // streams of a store with many are written once, and spare room
            // in 100,000 first blocks would be most of the store's memory.
            self.size = MIN_BLOCK / 2;
            self.block = BytesMut::with_capacity(data.len());
        } else if new_block {
            self.size = (self.size * 2).clamp(MIN_BLOCK, MAX_BLOCK);
            self.block = BytesMut::with_capacity(self.size.max(data.len()));
        }
        self.block.extend_from_slice(data);
        (self.block.split().freeze(), new_block)
    }
}

impl MemStream {
    /// Keeps a copy of `data` (appended at position `at`): a request body may
    /// be a slice of a much larger connection buffer, and memory held should
    /// match data stored.
    fn keep(&mut self, at: u64, data: &[u8]) {
        self.starts.push(at);
        self.bytes += data.len();
        let (copy, new_block) = self.blocks.copy(data);
        if new_block {
            self.seal();
        }
        self.pieces.push((at, copy));
    }

    /// Joins the pieces of the block just filled into one, so that reads
    /// hand out a few large slices instead of one per small append (each
    /// slice costs the HTTP stack a buffer of its own). One copy per block,
    /// made once; the old block is freed when no reader holds a slice of it.
    fn seal(&mut self) {
        let open = &self.pieces[self.open..];
        if open.len() > 1 {
            let mut joined = BytesMut::with_capacity(open.iter().map(|(_, b)| b.len()).sum());
            for (_, bytes) in open {
                joined.extend_from_slice(bytes);
            }
            let start = open[0].0;
            self.pieces.truncate(self.open);
            self.pieces.push((start, joined.freeze()));
        }
        self.open = self.pieces.len();
    }

    fn read(&self, from: u64, to: u64, max_bytes: usize, cut: Cut) -> ReadChunk {
        // Where the read ends is decided by the records (appends); the bytes
        // are then taken from the pieces, which may hold many records each.
        let (to, max_bytes) = match cut {
            Cut::AnyByte => (to, max_bytes),
            _ => {
                let mut plan = RangePlan::new(from, to, max_bytes, cut);
                let first = self.starts.partition_point(|&start| start <= from);
                let starts = &self.starts[first.saturating_sub(1)..];
                for (i, &start) in starts.iter().enumerate() {
                    let end = starts.get(i + 1).copied().unwrap_or(self.record.tail);
                    match plan.take(start, end - start) {
                        Take::Bytes(_) | Take::Skip => {}
                        _ => break,
                    }
                    if plan.done() {
                        break;
                    }
                }
                (plan.end(), usize::MAX)
            }
        };
        let mut plan = RangePlan::new(from, to, max_bytes, Cut::AnyByte);
        let mut data = Vec::new();
        let mut small = BytesMut::new();
        let first = self.pieces.partition_point(|(start, _)| *start <= from);
        for (start, bytes) in &self.pieces[first.saturating_sub(1)..] {
            match plan.take(*start, bytes.len() as u64) {
                // The appends of the block being filled are gathered into one
                // copy: cheaper than a buffer each for the HTTP stack.
                Take::Bytes(range) if range.len() < GATHER_BELOW => {
                    small.extend_from_slice(&bytes[range]);
                }
                Take::Bytes(range) => {
                    if !small.is_empty() {
                        data.push(small.split().freeze());
                    }
                    data.push(bytes.slice(range));
                }
                Take::Skip => continue,
                _ => break,
            }
            if plan.done() {
                break;
            }
        }
        if !small.is_empty() {
            data.push(small.freeze());
        }
        ReadChunk::new(data, plan.end())
    }
}

impl Storage for MemoryStorage {
    fn load(&self) -> StorageFuture<'_, Vec<(String, StreamRecord)>> {
        let streams = self.streams.read().unwrap_or_else(|e| e.into_inner());
        let all = streams
            .iter()
            .map(|(key, s)| {
                let s = s.read().unwrap_or_else(|e| e.into_inner());
                (key.clone(), s.record.clone())
            })
            .collect();
        Box::pin(async move { Ok(all) })
    }

    fn get<'a>(&'a self, key: &'a str) -> StorageFuture<'a, Option<StreamRecord>> {
        let record = self
            .stream(key)
            .ok()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).record.clone());
        Box::pin(async move { Ok(record) })
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        mut record: StreamRecord,
        initial: Bytes,
    ) -> StorageFuture<'a, CreateOutcome> {
        let mut streams = self.streams.write().unwrap_or_else(|e| e.into_inner());
        let outcome = if let Some(existing) = streams.get(key) {
            let existing = existing.read().unwrap_or_else(|e| e.into_inner());
            CreateOutcome::Exists(Box::new(existing.record.clone()))
        } else if let Err(full) = self.reserve(initial.len()) {
            return Box::pin(async move { Err(full) });
        } else {
            let mut stream = MemStream {
                starts: Vec::new(),
                pieces: Vec::new(),
                open: 0,
                blocks: Blocks::default(),
                bytes: 0,
                record: StreamRecord {
                    tail: record.tail,
                    ..record.clone()
                },
            };
            if !initial.is_empty() {
                stream.keep(record.tail, &initial);
                record.tail += initial.len() as u64;
                stream.record.tail = record.tail;
            }
            streams.insert(key.to_owned(), Arc::new(RwLock::new(stream)));
            CreateOutcome::Created
        };
        Box::pin(async move { Ok(outcome) })
    }

    fn append(&self, key: &str, append: Append) -> AppendFuture {
        let end = append.end();
        let result = self.apply(key, append).map(|()| end);
        Box::pin(async move { result })
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        from: u64,
        to: u64,
        max_bytes: usize,
        cut: Cut,
    ) -> StorageFuture<'a, ReadChunk> {
        let result = self.stream(key).map(|s| {
            let s = s.read().unwrap_or_else(|e| e.into_inner());
            s.read(from, to.min(s.record.tail), max_bytes, cut)
        });
        Box::pin(async move { result })
    }

    fn soft_delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()> {
        let result = self.stream(key).map(|s| {
            s.write()
                .unwrap_or_else(|e| e.into_inner())
                .record
                .soft_deleted = true;
        });
        Box::pin(async move { result })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()> {
        let removed = self
            .streams
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        if let Some(stream) = &removed {
            self.release(stream.read().unwrap_or_else(|e| e.into_inner()).bytes);
        }
        let result = removed.map(drop).ok_or(StorageError::NotFound);
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::storage_testkit!(
        MemoryStorage::new(),
        full: MemoryStorage::new().with_max_bytes(100),
    );

    #[tokio::test]
    async fn small_appends_are_read_back_in_few_slices() {
        let store = MemoryStorage::new();
        let record = StreamRecord::new(
            crate::storage::StreamConfig::new(1, "application/json", crate::storage::Expiry::Never),
            0,
        );
        store.create("/s", record, Bytes::new()).await.unwrap();
        let mut expected = Vec::new();
        for i in 0..4096u32 {
            let data = Bytes::from(format!("{i:099},"));
            let at = expected.len() as u64;
            expected.extend_from_slice(&data);
            store.append("/s", Append::new(1, at, data)).await.unwrap();
        }
        let all = store
            .read("/s", 0, u64::MAX, usize::MAX, Cut::AnyByte)
            .await
            .unwrap();
        assert_eq!(all.data.concat(), expected);
        assert!(
            all.data.len() < 16,
            "{} slices for 4,096 appends",
            all.data.len()
        );
        // Record cuts still fall between appends, wherever the blocks end.
        for (from, end) in [(0, 200), (1, 200), (150, 400), (250_000, 250_200)] {
            let part = store
                .read("/s", from, u64::MAX, 250, Cut::RecordBoundary)
                .await
                .unwrap();
            assert_eq!(part.end, end, "from {from}");
            assert_eq!(
                part.data.concat(),
                &expected[from as usize..part.end as usize]
            );
        }
    }

    #[test]
    fn appends_share_growing_blocks_and_keep_their_bytes() {
        let mut blocks = Blocks::default();
        let pieces: Vec<Bytes> = (0..30_000u32)
            .map(|i| blocks.copy(format!("append {i};").as_bytes()).0)
            .collect();
        for (i, piece) in pieces.iter().enumerate() {
            assert_eq!(&piece[..], format!("append {i};").as_bytes());
        }
        assert_eq!(blocks.size, MAX_BLOCK, "blocks doubled up to the cap");
        let big = vec![7u8; 3 * MAX_BLOCK];
        assert_eq!(
            &blocks.copy(&big).0[..],
            &big[..],
            "a large append fits whole"
        );
        assert_eq!(&pieces[0][..], b"append 0;", "earlier pieces are untouched");
    }
}
