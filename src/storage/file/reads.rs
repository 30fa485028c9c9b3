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
/// ... as long as a read stays under twice the bytes wanted plus this.
const COALESCE_SLACK: u64 = 64 * 1024;

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
        self.fetch_with(slices, end, |file, offset, len| {
            read_span(file, offset, len).map(Some)
        })?
        .ok_or_else(|| StorageError::Io(io::Error::other("a blocking read did not complete")))
    }

    /// Like [`fetch`](Self::fetch), but only from the page cache: `None` if
    /// any byte would have to come from the disk (or the system cannot tell),
    /// so that the caller reads on the runtime thread only when that costs no
    /// wait, and otherwise hands the read to the blocking pool.
    pub(super) fn fetch_cached(
        &self,
        slices: &[Slice],
        end: u64,
    ) -> Result<Option<ReadChunk>, StorageError> {
        self.fetch_with(slices, end, read_span_cached)
    }

    fn fetch_with(
        &self,
        slices: &[Slice],
        end: u64,
        mut read: impl FnMut(&File, u64, usize) -> io::Result<Option<Vec<u8>>>,
    ) -> Result<Option<ReadChunk>, StorageError> {
        let mut data = Vec::new();
        let mut i = 0;
        while i < slices.len() {
            let first = &slices[i];
            let mut j = i + 1;
            let mut span_end = first.offset + first.len as u64;
            let mut payload = first.len as u64;
            while let Some(next) = slices.get(j) {
                let next_end = next.offset + next.len as u64;
                // Read through small gaps (record headers, a neighbour's
                // records), but never read much more than is wanted: a
                // stream of tiny records among another's large ones must not
                // turn a 1 MiB read into hundreds.
                let wanted = payload + next.len as u64;
                let joins = next.segment == first.segment
                    && next.offset >= span_end
                    && next.offset - span_end <= COALESCE_GAP
                    && next_end - first.offset <= 2 * wanted + COALESCE_SLACK;
                if !joins {
                    break;
                }
                (span_end, payload) = (next_end, wanted);
                j += 1;
            }
            let Some(mut buf) = read(
                &first.file,
                first.offset,
                (span_end - first.offset) as usize,
            )?
            else {
                return Ok(None);
            };
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
        Ok(Some(ReadChunk::new(data, end)))
    }
}

/// Reads `len` bytes at `offset` into a new buffer, without zeroing it first
/// (the kernel writes every byte).
fn read_span(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        let spare = rustix::buffer::spare_capacity(&mut buf);
        match rustix::io::pread(file, spare, at) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    // The allocator may have given more room than asked, and pread fills it.
    buf.truncate(len);
    Ok(buf)
}

/// Reads `len` bytes at `offset` if all of them are in the page cache
/// (`preadv2` with `RWF_NOWAIT`, which never waits for the disk); `None`
/// otherwise, or where the system cannot say.
#[cfg(target_os = "linux")]
fn read_span_cached(file: &File, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
    use rustix::io::{Errno, ReadWriteFlags};
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Set once the kernel or file system says it cannot do `RWF_NOWAIT`.
    static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
    if UNSUPPORTED.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let mut bufs = [io::IoSliceMut::new(&mut buf[done..])];
        match rustix::io::preadv2(
            file,
            &mut bufs,
            offset + done as u64,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(None),
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                UNSUPPORTED.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(buf))
}

#[cfg(not(target_os = "linux"))]
fn read_span_cached(_: &File, _: u64, _: usize) -> io::Result<Option<Vec<u8>>> {
    Ok(None)
}
