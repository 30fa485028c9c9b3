//! The on-disk format of the log: segment files of checksummed records.
//!
//! Each record is a 24-byte header (payload length, kind, stream id, payload
//! CRC-32, header CRC-32) followed by its payload.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub(super) const HEADER_LEN: usize = 24;
pub(super) const KIND_CREATE: u8 = 1;
pub(super) const KIND_APPEND: u8 = 2;
pub(super) const KIND_SOFT_DELETE: u8 = 3;
pub(super) const KIND_DELETE: u8 = 4;

pub(super) fn segment_path(dir: &Path, number: u32) -> PathBuf {
    dir.join("log").join(format!("{number:010}.log"))
}

pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

pub(super) fn header(kind: u8, stream_id: u64, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[4] = kind;
    h[8..16].copy_from_slice(&stream_id.to_le_bytes());
    h[16..20].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let header_crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&header_crc.to_le_bytes());
    h
}

pub(super) struct Header {
    pub(super) len: usize,
    pub(super) kind: u8,
    pub(super) stream_id: u64,
    pub(super) payload_crc: u32,
}

pub(super) fn parse_header(h: &[u8]) -> Option<Header> {
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
