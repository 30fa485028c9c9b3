//! The writer thread: group commit of every queued operation.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use bytes::BytesMut;
use tokio::sync::oneshot;

use super::format::{
    header, segment_path, sync_dir, Header, HEADER_LEN, KIND_APPEND, KIND_CREATE, KIND_DELETE,
    KIND_SOFT_DELETE,
};
use super::index::{apply, Entry, Index, Piece};
use super::{Durability, Shared};
use crate::storage::codec::{self, Writer};
use crate::storage::queue::{reject, Op};
use crate::storage::{out_of_space, CreateOutcome, StorageError, StreamRecord};

/// Most bytes one flush gathers before writing.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

pub(super) struct LogWriter {
    pub(super) shared: std::sync::Weak<Shared>,
    pub(super) durability: Durability,
    pub(super) segment_bytes: u64,
    pub(super) current: u32,
    pub(super) file: File,
    pub(super) size: u64,
    pub(super) buffer: Vec<u8>,
    /// Each stream this batch changed, as it was before (`None`: created here).
    pub(super) undo: HashMap<String, Option<Before>>,
    /// The current segment's length before the batch being written.
    pub(super) batch_start: u64,
}

/// A stream's index entry before a batch changed it.
pub(super) struct Before {
    record: StreamRecord,
    pieces: usize,
    corrupt: bool,
    /// Its pieces, when the batch deleted it.
    removed: Option<Vec<Piece>>,
}

/// How much an operation adds to a batch.
fn weight(op: &Op) -> usize {
    match op {
        Op::Create { initial, .. } => initial.len() + 64,
        Op::Append { append, .. } => append.data.len() + 64,
        Op::SoftDelete { .. } | Op::Delete { .. } => 64,
    }
}

type Done = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

enum KindOf {
    SoftDelete,
    Other,
}

impl LogWriter {
    pub(super) fn run(mut self, rx: mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            let mut bytes = weight(&first);
            let mut ops = vec![first];
            while bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(op) => {
                        bytes += weight(&op);
                        ops.push(op);
                    }
                    Err(_) => break,
                }
            }
            // Out of space: deletes go first, in a batch of their own (with the
            // reserve released for them), so that they can free room even while
            // appends keep failing.
            let going = if shared.full.load(Ordering::Acquire) {
                let (deletes, rest): (Vec<Op>, Vec<Op>) = ops
                    .into_iter()
                    .partition(|op| matches!(op, Op::Delete { .. } | Op::SoftDelete { .. }));
                if !deletes.is_empty() {
                    shared.reserve.release();
                }
                (deletes.is_empty() || self.batch(shared.clone(), deletes))
                    && (rest.is_empty() || self.batch(shared, rest))
            } else {
                self.batch(shared, ops)
            };
            if !going {
                tracing::error!("log writer stopped after an I/O error");
                return;
            }
        }
    }

    /// Writes one batch and answers its operations; `false` once the writer
    /// cannot go on.
    fn batch(&mut self, shared: Arc<Shared>, ops: Vec<Op>) -> bool {
        let (done, answer, going) = self.write_batch(&shared, ops);
        // Let go of the store before answering: once a caller has its answer
        // and drops the store, nothing here may keep it (and its lock) alive.
        drop(shared);
        for finish in done {
            finish(match &answer {
                Ok(()) => Ok(()),
                Err(StorageError::Full) => Err(StorageError::Full),
                Err(StorageError::Io(e)) => {
                    Err(StorageError::Io(io::Error::new(e.kind(), e.to_string())))
                }
                Err(_) => unreachable!("a batch ends in success, Full or Io"),
            });
        }
        going
    }

    /// Queues, writes and (on failure) takes back one batch, with the batch
    /// lock held: the compactor only looks between batches.
    fn write_batch(
        &mut self,
        shared: &Shared,
        ops: Vec<Op>,
    ) -> (Vec<Done>, Result<(), StorageError>, bool) {
        let _batch = shared.batch.lock().unwrap_or_else(|e| e.into_inner());
        let mut done: Vec<Done> = Vec::new();
        for op in ops {
            self.process(shared, op, &mut done);
        }
        let result = if shared.poisoned.load(Ordering::Acquire) {
            Err(io::Error::other("the log writer stopped during this batch"))
        } else {
            self.flush(shared)
        };
        if !done.is_empty() {
            let bucket = (usize::BITS - (done.len() - 1).leading_zeros()) as usize;
            shared.stats.batch_sizes[bucket.min(12)].fetch_add(1, Ordering::Relaxed);
        }
        let mut going = true;
        let answer = match result {
            // Only a batch that wrote something shows there is room again.
            Ok(()) if self.size == self.batch_start => {
                self.undo.clear();
                Ok(())
            }
            Ok(()) => {
                self.undo.clear();
                if shared.full.swap(false, Ordering::AcqRel) {
                    tracing::info!("the log has room again: writes resume");
                }
                shared.reserve.keep();
                Ok(())
            }
            Err(e) if out_of_space(&e) && !shared.poisoned.load(Ordering::Acquire) => {
                // Nothing of this batch was acknowledged: cut it off the segment
                // and take it out of the index, then refuse it as a whole.
                match self.take_back(shared) {
                    Ok(()) => {
                        if !shared.full.swap(true, Ordering::AcqRel) {
                            tracing::error!(
                                "the log is out of space: writes get 507 until room is freed"
                            );
                        }
                        Err(StorageError::Full)
                    }
                    Err(undo) => {
                        tracing::error!(error = %undo, "could not take back a batch that did not fit");
                        going = false;
                        Err(StorageError::Io(io::Error::new(e.kind(), e.to_string())))
                    }
                }
            }
            Err(e) => {
                going = false;
                Err(StorageError::Io(io::Error::new(e.kind(), e.to_string())))
            }
        };
        if !going {
            shared.poisoned.store(true, Ordering::Release);
        }
        (done, answer, going)
    }

    /// Cuts the current segment back to its length before this batch and
    /// restores the index entries the batch changed.
    fn take_back(&mut self, shared: &Shared) -> io::Result<()> {
        // The batch may be partly written, or wholly written with its fsync
        // failing: cut the segment back to where the batch began either way,
        // and make the cut durable.
        let batch = self.size - self.batch_start + self.buffer.len() as u64;
        shared.needed.store(batch, Ordering::Release);
        self.buffer.clear();
        self.size = self.batch_start;
        self.file.set_len(self.size)?;
        self.file.sync_data()?;
        let mut index = shared.index.write().unwrap_or_else(|e| e.into_inner());
        for (key, before) in self.undo.drain() {
            let now = index.streams.remove(&key);
            if let Some(now) = &now {
                index.keys.remove(&now.record.config.id);
            }
            let Some(before) = before else {
                continue; // created in this batch
            };
            let mut pieces = match (now, before.removed) {
                (Some(now), _) if now.record.config.id == before.record.config.id => now.pieces,
                (_, Some(removed)) => removed,
                _ => Vec::new(),
            };
            pieces.truncate(before.pieces);
            index.keys.insert(before.record.config.id, key.clone());
            index.streams.insert(
                key,
                Entry {
                    record: before.record,
                    pieces,
                    corrupt: before.corrupt,
                },
            );
        }
        Ok(())
    }

    /// Notes a stream's index entry before this batch first changes it.
    fn save(&mut self, index: &Index, key: &str, deleting: bool) {
        if !self.undo.contains_key(key) {
            let before = index.streams.get(key).map(|e| Before {
                record: e.record.clone(),
                pieces: e.pieces.len(),
                corrupt: e.corrupt,
                removed: None,
            });
            self.undo.insert(key.to_owned(), before);
        }
        if deleting {
            if let (Some(Some(before)), Some(entry)) =
                (self.undo.get_mut(key), index.streams.get(key))
            {
                if before.removed.is_none() && entry.record.config.id == before.record.config.id {
                    before.removed = Some(entry.pieces.clone());
                }
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
                        self.save(&index, &key, false);
                        let _ = apply(&mut index, segment, offset, &header, &payload);
                        done.push(Box::new(move |r| {
                            let _ = reply.send(r.map(|()| CreateOutcome::Created));
                        }));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(self.refused(shared, e)));
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
                self.queue_applied(
                    shared,
                    &key,
                    KIND_APPEND,
                    append.stream_id,
                    payload,
                    reply,
                    done,
                );
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
                    Some(id) => {
                        self.queue_applied(shared, &key, kind, id, BytesMut::new(), reply, done)
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn queue_applied(
        &mut self,
        shared: &Shared,
        key: &str,
        kind: u8,
        id: u64,
        payload: BytesMut,
        reply: oneshot::Sender<Result<(), StorageError>>,
        done: &mut Vec<Done>,
    ) {
        match self.queue(kind, id, &payload) {
            Ok((segment, offset, header)) => {
                let mut index = shared.index.write().unwrap_or_else(|e| e.into_inner());
                self.save(&index, key, kind == KIND_DELETE);
                let _ = apply(&mut index, segment, offset, &header, &payload);
                done.push(Box::new(move |r| {
                    let _ = reply.send(r);
                }));
            }
            Err(e) => {
                let _ = reply.send(Err(self.refused(shared, e)));
            }
        }
    }

    /// The answer to an operation that could not be queued. Records are only
    /// refused before anything of theirs is in the batch (too large, or no new
    /// segment at the start of a batch), so the batch stays good; any other
    /// failure stops the writer.
    fn refused(&self, shared: &Shared, e: io::Error) -> StorageError {
        if out_of_space(&e) {
            shared.full.store(true, Ordering::Release);
            StorageError::Full
        } else if e.kind() == io::ErrorKind::InvalidInput {
            StorageError::Io(e)
        } else {
            shared.poisoned.store(true, Ordering::Release);
            StorageError::Io(e)
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
        // A batch stays in one segment (which may so grow past `segment_bytes`
        // by at most one batch): a batch that cannot be written is then cut
        // off one file.
        if self.buffer.is_empty() && self.size > 0 && self.size + len > self.segment_bytes {
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
        self.batch_start = self.size;
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
