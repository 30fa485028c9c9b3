//! The in-memory index: each stream's record and where its bytes sit in the log.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::format::{Header, HEADER_LEN, KIND_APPEND, KIND_CREATE, KIND_DELETE, KIND_SOFT_DELETE};
use crate::storage::codec::{self, Reader};
use crate::storage::{StorageError, StreamRecord};

/// Where one append's bytes sit in the log.
#[derive(Debug, Clone, Copy)]
pub(super) struct Piece {
    pub(super) position: u64,
    pub(super) segment: u32,
    pub(super) offset: u64,
    pub(super) len: u32,
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) record: StreamRecord,
    pub(super) pieces: Vec<Piece>,
    pub(super) corrupt: bool,
}

#[derive(Debug, Default)]
pub(super) struct SegmentInfo {
    /// Stream ids with records here, alive or not.
    pub(super) ids: HashSet<u64>,
    /// Stream ids whose delete record is here.
    pub(super) deletes: Vec<u64>,
    /// How many of `ids` were alive when the compactor last rewrote this
    /// segment or found it not worth rewriting: until another of them dies,
    /// it is not looked at again.
    pub(super) checked: Option<usize>,
}

#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) streams: HashMap<String, Entry>,
    pub(super) keys: HashMap<u64, String>,
    pub(super) segments: BTreeMap<u32, SegmentInfo>,
}

impl Index {
    pub(super) fn note(&mut self, segment: u32, id: u64) {
        self.segments.entry(segment).or_default().ids.insert(id);
    }

    pub(super) fn alive(&self, id: u64) -> bool {
        self.keys.contains_key(&id)
    }

    /// Segments below `current` that hold nothing anyone needs.
    pub(super) fn dead_segments(&self, current: u32) -> Vec<u32> {
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

/// Applies one checked record to the index.
pub(super) fn apply(
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
                    entry.record.apply(&append);
                    entry.record.tail += len;
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
