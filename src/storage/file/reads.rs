//! Reads: plan the slices of the log a range needs, then read them with
//! neighbours coalesced, each run of slices in one scattered read.

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
        let mut slices: Vec<Slice> = Vec::new();
        let first = entry.pieces.partition_point(|p| p.position <= from);
        for piece in &entry.pieces[first.saturating_sub(1)..] {
            match plan.take(piece.position, u64::from(piece.len)) {
                Take::Bytes(range) => {
                    // Most records follow one another in one segment: look
                    // its file up once, not once per record.
                    let file = match slices.last() {
                        Some(last) if last.segment == piece.segment => last.file.clone(),
                        _ => self.segment(piece.segment)?,
                    };
                    slices.push(Slice {
                        segment: piece.segment,
                        file,
                        offset: piece.offset + range.start as u64,
                        len: range.len(),
                    });
                }
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
    /// scattered read, and hands out each such span as one `Bytes`: the
    /// kernel puts every slice straight at its place in the buffer and the
    /// record headers and foreign records between them in a scratch buffer,
    /// so a catch-up of many small records is a few large buffers, not one
    /// per record, and costs no copy beyond the read itself.
    pub(super) fn fetch(&self, slices: &[Slice], end: u64) -> Result<ReadChunk, StorageError> {
        fetch_with(slices, end, Wait::Disk)?
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
        fetch_with(slices, end, Wait::Never)
    }
}

/// Whether a read may wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Disk,
    Never,
}

fn fetch_with(slices: &[Slice], end: u64, wait: Wait) -> Result<Option<ReadChunk>, StorageError> {
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
            // records), but never read much more than is wanted: a stream
            // of tiny records among another's large ones must not turn a
            // 1 MiB read into hundreds.
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
        let Some(buf) = read_scattered(&slices[i..j], payload as usize, wait)? else {
            return Ok(None);
        };
        data.push(Bytes::from(buf));
        i = j;
    }
    Ok(Some(ReadChunk::new(data, end)))
}

/// Reads `slices` (of one segment, in file order, `payload` bytes in all) with
/// one `preadv` per [`MAX_IOVECS`]: each slice lands right after the one
/// before it in the returned buffer, and the gaps between slices in a
/// scratch buffer that is thrown away. `None` if `wait` is
/// [`Wait::Never`] and some byte is not in the page cache (or the system
/// cannot tell).
fn read_scattered(slices: &[Slice], payload: usize, wait: Wait) -> io::Result<Option<Vec<u8>>> {
    let file = &slices[0].file;
    let mut gaps = Vec::with_capacity(slices.len());
    let mut at = slices[0].offset;
    for slice in slices {
        gaps.push((slice.offset - at) as usize);
        at = slice.offset + slice.len as u64;
    }
    let mut buf = vec![0u8; payload];
    let mut scratch = vec![0u8; gaps.iter().sum()];
    let mut iovecs = Vec::with_capacity(2 * slices.len());
    let (mut rest, mut spare) = (&mut buf[..], &mut scratch[..]);
    for (slice, gap) in slices.iter().zip(gaps) {
        if gap > 0 {
            let (head, tail) = std::mem::take(&mut spare).split_at_mut(gap);
            iovecs.push(io::IoSliceMut::new(head));
            spare = tail;
        }
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(slice.len);
        iovecs.push(io::IoSliceMut::new(head));
        rest = tail;
    }
    let mut offset = slices[0].offset;
    let mut pending = &mut iovecs[..];
    while !pending.is_empty() {
        let batch = pending.len().min(MAX_IOVECS);
        let n = match preadv(file, &mut pending[..batch], offset, wait)? {
            Some(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Some(n) => n,
            None => return Ok(None),
        };
        offset += n as u64;
        io::IoSliceMut::advance_slices(&mut pending, n);
    }
    Ok(Some(buf))
}

/// The most buffers one `preadv` takes (POSIX guarantees at least 16; Linux
/// takes 1,024).
const MAX_IOVECS: usize = if cfg!(target_os = "linux") { 1024 } else { 16 };

/// One read into `bufs` at `offset`, retried on `EINTR`: `None` if `wait` is
/// [`Wait::Never`] and the read would have to wait for the disk (or the
/// system cannot tell). On Linux this is `preadv`, or `preadv2` with
/// `RWF_NOWAIT` when the read must not wait.
#[cfg(target_os = "linux")]
fn preadv(
    file: &File,
    bufs: &mut [io::IoSliceMut<'_>],
    offset: u64,
    wait: Wait,
) -> io::Result<Option<usize>> {
    use rustix::io::{Errno, ReadWriteFlags};
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Set once the kernel or file system says it cannot do `RWF_NOWAIT`.
    static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
    loop {
        let result = match wait {
            // Plain `preadv` (Linux 2.6.30) where waiting is fine, so that a
            // kernel or sandbox without `preadv2` still reads.
            Wait::Disk => rustix::io::preadv(file, bufs, offset),
            Wait::Never if UNSUPPORTED.load(Ordering::Relaxed) => return Ok(None),
            Wait::Never => rustix::io::preadv2(file, bufs, offset, ReadWriteFlags::NOWAIT),
        };
        match result {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) if wait == Wait::Never => return Ok(None),
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) if wait == Wait::Never => {
                UNSUPPORTED.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Elsewhere, one `pread` into the first buffer (the caller moves on by what
/// was read), which every Unix has; reads that must not wait are not made.
#[cfg(not(target_os = "linux"))]
fn preadv(
    file: &File,
    bufs: &mut [io::IoSliceMut<'_>],
    offset: u64,
    wait: Wait,
) -> io::Result<Option<usize>> {
    if wait == Wait::Never {
        return Ok(None);
    }
    let Some(first) = bufs.iter_mut().find(|b| !b.is_empty()) else {
        return Ok(Some(0));
    };
    loop {
        match rustix::io::pread(file, &mut first[..], offset) {
            Ok(n) => return Ok(Some(n)),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
