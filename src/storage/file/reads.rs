//! Reads: plan the slices of the log a range needs, then `pread` them with
//! neighbours coalesced.

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;

use super::FileStorage;
use crate::storage::{Cut, RangePlan, ReadChunk, StorageError, Take};

/// Gaps up to this size between pieces of one read are read through.
const COALESCE_GAP: u64 = 16 * 1024;

/// One slice of a read: `len` bytes at `offset` of `segment`, whose file was
/// opened while the index was locked (so a compaction that replaces the file
/// afterwards cannot make these offsets point into the new one).
#[derive(Debug, Clone)]
pub(super) struct Slice {
    segment: u32,
    file: Arc<File>,
    offset: u64,
    len: usize,
}

impl FileStorage {
    /// Decides which byte ranges of which segments a read needs.
    pub(super) fn plan(
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
        let mut plan = RangePlan::new(from, to.min(entry.record.tail), max_bytes, cut);
        let mut slices = Vec::new();
        let first = entry.pieces.partition_point(|p| p.position <= from);
        for piece in &entry.pieces[first.saturating_sub(1)..] {
            match plan.take(piece.position, u64::from(piece.len)) {
                Take::Bytes(range) => slices.push(Slice {
                    segment: piece.segment,
                    file: self.segment(piece.segment)?,
                    offset: piece.offset + range.start as u64,
                    len: range.len(),
                }),
                Take::Skip => continue,
                _ => break,
            }
            if plan.done() {
                break;
            }
        }
        Ok((slices, plan.end()))
    }

    /// Reads the planned slices, coalescing neighbours in one segment into one
    /// `pread`, and hands out each such span as one `Bytes` with the record
    /// headers and foreign records between the slices squeezed out: a catch-up
    /// of many small records is a few large buffers, not one per record.
    pub(super) fn fetch(&self, slices: &[Slice], end: u64) -> Result<ReadChunk, StorageError> {
        let mut data = Vec::new();
        let mut i = 0;
        while i < slices.len() {
            let first = &slices[i];
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
            let mut buf = read_span(
                &first.file,
                first.offset,
                (span_end - first.offset) as usize,
            )?;
            let mut packed = 0;
            for slice in &slices[i..j] {
                let start = (slice.offset - first.offset) as usize;
                if start != packed {
                    buf.copy_within(start..start + slice.len, packed);
                }
                packed += slice.len;
            }
            buf.truncate(packed);
            data.push(Bytes::from(buf));
            i = j;
        }
        Ok(ReadChunk::new(data, end))
    }
}

/// Whether the bytes of `slices` are in the page cache, so that reading them
/// now would not wait for the disk: `RWF_NOWAIT` probes of the first and last
/// byte in each segment (the log is written in order, so a range cached at
/// both ends almost always is in between).
pub(super) fn cached(slices: &[Slice]) -> bool {
    let probe = |file: &File, at: u64| {
        let mut byte = [0u8; 1];
        let mut bufs = [io::IoSliceMut::new(&mut byte)];
        rustix::io::preadv2(file, &mut bufs, at, rustix::io::ReadWriteFlags::NOWAIT)
            .is_ok_and(|n| n == 1)
    };
    let mut i = 0;
    while i < slices.len() {
        let first = &slices[i];
        let mut j = i;
        while j + 1 < slices.len() && slices[j + 1].segment == first.segment {
            j += 1;
        }
        let last = &slices[j];
        let end = last.offset + last.len.saturating_sub(1) as u64;
        if !probe(&first.file, first.offset) || !probe(&last.file, end) {
            return false;
        }
        i = j + 1;
    }
    true
}

/// Reads `len` bytes at `offset` into a new buffer, without zeroing it first
/// (the kernel writes every byte; zeroing a megabyte cost more than packing it).
fn read_span(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        let spare = rustix::buffer::spare_capacity(&mut buf);
        let read = rustix::io::pread(file, spare, at)?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    // The allocator may have given more room than asked, and pread fills it.
    buf.truncate(len);
    Ok(buf)
}
