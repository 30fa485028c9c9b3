//! The writer thread: group commit of every queued operation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use bytes::BytesMut;
use tokio::sync::oneshot;

use super::format::{
    header, segment_path, sync_dir, Header, HEADER_LEN, KIND_APPEND, KIND_CREATE, KIND_DELETE,
    KIND_SOFT_DELETE,
};
use super::index::apply;
use super::{Durability, Shared};
use crate::storage::codec::{self, Writer};
use crate::storage::queue::{reject, Op};
use crate::storage::{CreateOutcome, StorageError};

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
