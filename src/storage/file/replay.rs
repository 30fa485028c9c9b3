//! Opening the log: replay every segment, check every record, cut a torn tail.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::Path;

use super::format::{parse_header, segment_path, HEADER_LEN};
use super::index::{apply, Index};
use crate::storage::StorageError;

/// Replays every segment, returning the index and the last segment's number and
/// valid length.
pub(super) fn replay(dir: &Path) -> Result<(Index, Option<(u32, u64)>), StorageError> {
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
