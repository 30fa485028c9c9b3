//! Export and import of whole stores, across backends, in a documented,
//! versioned format (`docs/backup.md`): JSON Lines with base64 data.
//!
//! ```
//! use tower_durable_streams::storage::backup::{export, import, OnConflict};
//! use tower_durable_streams::MemoryStorage;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let from = MemoryStorage::new();
//! let mut file = Vec::new();
//! export(&from, &mut file).await?;
//! let to = MemoryStorage::new();
//! import(&to, &file[..], OnConflict::Fail).await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use super::{
    Append, CreateOutcome, Cut, Expiry, ForkOrigin, ProducerState, ProducerTuple, Storage,
    StorageError, StreamConfig, StreamRecord,
};

/// The format name in the header line.
pub const FORMAT: &str = "tower-durable-streams/export";
/// The format version this crate writes and reads.
pub const VERSION: u32 = 1;
const CHUNK: usize = 1024 * 1024;

/// What to do when an imported stream's path is already taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnConflict {
    /// Keep the existing stream, skip the imported one.
    Skip,
    /// Stop the import with an error.
    Fail,
    /// Delete the existing stream and import.
    Replace,
}

/// Why an export or import failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The storage failed.
    #[error("storage error")]
    Storage(#[from] StorageError),
    /// Reading or writing the export failed.
    #[error("export file I/O")]
    Io(#[from] std::io::Error),
    /// The input is not a valid export.
    #[error("invalid export at line {line}: {reason}")]
    Format {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A stream exists at an imported path and the policy is `Fail`.
    #[error("a stream already exists at {0}")]
    Conflict(String),
}

/// Counts of an export or import.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Streams written.
    pub streams: usize,
    /// Streams skipped (import with `OnConflict::Skip`).
    pub skipped: usize,
    /// Stream bytes written.
    pub bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Stream(Box<StreamLine>),
    Data(String),
    End { path: String, bytes: u64 },
}

#[derive(Serialize, Deserialize)]
struct StreamLine {
    path: String,
    id: u64,
    content_type: String,
    ttl_secs: Option<u64>,
    expires_at: Option<String>,
    fork: Option<ForkLine>,
    start: u64,
    tail: u64,
    closed: bool,
    closed_by: Option<TupleLine>,
    stream_seq: Option<String>,
    producers: BTreeMap<String, (u64, u64)>,
    soft_deleted: bool,
}

#[derive(Serialize, Deserialize)]
struct ForkLine {
    source: String,
    anchor: u64,
    sub_offset: u64,
    position: u64,
}

#[derive(Serialize, Deserialize)]
struct TupleLine {
    id: String,
    epoch: u64,
    seq: u64,
}

impl StreamLine {
    fn of(path: &str, record: &StreamRecord) -> Self {
        let config = &record.config;
        StreamLine {
            path: path.to_owned(),
            id: config.id,
            content_type: config.content_type.clone(),
            ttl_secs: match config.expiry {
                Expiry::Ttl(secs) => Some(secs),
                _ => None,
            },
            expires_at: match config.expiry {
                Expiry::At(at) => at.format(&Rfc3339).ok(),
                _ => None,
            },
            fork: config.fork.as_ref().map(|f| ForkLine {
                source: f.source.clone(),
                anchor: f.anchor,
                sub_offset: f.sub_offset,
                position: f.position,
            }),
            start: record.own_start(),
            tail: record.tail,
            closed: record.closed,
            closed_by: record.closed_by.as_ref().map(|t| TupleLine {
                id: t.id.clone(),
                epoch: t.epoch,
                seq: t.seq,
            }),
            stream_seq: record.stream_seq.clone(),
            producers: record
                .producers
                .iter()
                .map(|(id, s)| (id.clone(), (s.epoch, s.last_seq)))
                .collect(),
            soft_deleted: record.soft_deleted,
        }
    }

    fn config(&self, line: usize) -> Result<StreamConfig, BackupError> {
        let expiry = match (&self.ttl_secs, &self.expires_at) {
            (Some(secs), None) => Expiry::Ttl(*secs),
            (None, Some(at)) => Expiry::At(OffsetDateTime::parse(at, &Rfc3339).map_err(|_| {
                BackupError::Format {
                    line,
                    reason: format!("bad expires_at {at:?}"),
                }
            })?),
            (None, None) => Expiry::Never,
            _ => {
                return Err(BackupError::Format {
                    line,
                    reason: "both ttl_secs and expires_at".into(),
                })
            }
        };
        Ok(StreamConfig {
            id: self.id,
            content_type: self.content_type.clone(),
            expiry,
            fork: self.fork.as_ref().map(|f| ForkOrigin {
                source: f.source.clone(),
                anchor: f.anchor,
                sub_offset: f.sub_offset,
                position: f.position,
            }),
        })
    }
}

async fn write_line<W: AsyncWrite + Unpin>(
    out: &mut W,
    value: &impl Serialize,
) -> Result<(), BackupError> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line).await?;
    Ok(())
}

/// Writes every stream of `storage` to `out`, sources before their forks.
pub async fn export<W: AsyncWrite + Unpin>(
    storage: &dyn Storage,
    mut out: W,
) -> Result<Summary, BackupError> {
    let mut streams = storage.load().await?;
    // Sources first: order by fork depth, then path.
    let depth = {
        let sources: HashMap<String, Option<String>> = streams
            .iter()
            .map(|(k, r)| (k.clone(), r.config.fork.as_ref().map(|f| f.source.clone())))
            .collect();
        move |key: &str| {
            let mut depth = 0;
            let mut current = sources.get(key).cloned().flatten();
            while let Some(source) = current {
                depth += 1;
                current = sources.get(&source).cloned().flatten();
                if depth > sources.len() {
                    break;
                }
            }
            depth
        }
    };
    streams.sort_by_cached_key(|(k, _)| (depth(k), k.clone()));
    write_line(
        &mut out,
        &Header {
            format: FORMAT.into(),
            version: VERSION,
        },
    )
    .await?;
    let mut summary = Summary::default();
    for (path, record) in &streams {
        write_line(
            &mut out,
            &Line::Stream(Box::new(StreamLine::of(path, record))),
        )
        .await?;
        let mut position = record.own_start();
        while position < record.tail {
            let chunk = storage
                .read(path, position, record.tail, CHUNK, Cut::AnyByte)
                .await?;
            if chunk.end <= position {
                return Err(
                    StorageError::Corrupt(format!("no data at {position} of {path}")).into(),
                );
            }
            let bytes: Vec<u8> = chunk.data.concat();
            write_line(
                &mut out,
                &Line::Data(base64::engine::general_purpose::STANDARD.encode(&bytes)),
            )
            .await?;
            position = chunk.end;
        }
        let bytes = record.tail - record.own_start();
        write_line(
            &mut out,
            &Line::End {
                path: path.clone(),
                bytes,
            },
        )
        .await?;
        summary.streams += 1;
        summary.bytes += bytes;
    }
    out.flush().await?;
    Ok(summary)
}

/// Reads an export into `storage`, keeping every stream's configuration, bytes,
/// closure, `Stream-Seq`, producer state and soft-deletion.
pub async fn import<R: AsyncBufRead + Unpin>(
    storage: &dyn Storage,
    input: R,
    on_conflict: OnConflict,
) -> Result<Summary, BackupError> {
    let mut lines = input.lines();
    let mut number = 0;
    let bad = |line: usize, reason: String| BackupError::Format { line, reason };
    let Some(first) = lines.next_line().await? else {
        return Err(bad(1, "empty input".into()));
    };
    number += 1;
    let header: Header = serde_json::from_str(&first).map_err(|e| bad(number, e.to_string()))?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(bad(1, format!("not a {FORMAT} version {VERSION} export")));
    }
    // Streams that existing forks read through cannot be replaced.
    let sources: std::collections::HashSet<String> = storage
        .load()
        .await?
        .into_iter()
        .filter_map(|(_, r)| r.config.fork.map(|f| f.source))
        .collect();
    let mut summary = Summary::default();
    // The stream being imported: its line, whether it is skipped, and where its
    // next bytes go. Bytes are appended chunk by chunk, never held whole.
    let mut current: Option<(Box<StreamLine>, bool, u64)> = None;
    while let Some(text) = lines.next_line().await? {
        number += 1;
        let line: Line = serde_json::from_str(&text).map_err(|e| bad(number, e.to_string()))?;
        match line {
            Line::Stream(stream) => {
                if current.is_some() {
                    return Err(bad(number, "stream without end".into()));
                }
                let skip = match storage.get(&stream.path).await? {
                    None => false,
                    Some(_) => match on_conflict {
                        OnConflict::Skip => true,
                        OnConflict::Fail => return Err(BackupError::Conflict(stream.path)),
                        OnConflict::Replace if sources.contains(&stream.path) => {
                            return Err(BackupError::Conflict(format!(
                                "{} (forks read through it; it cannot be replaced)",
                                stream.path
                            )))
                        }
                        OnConflict::Replace => {
                            storage.delete(&stream.path).await?;
                            false
                        }
                    },
                };
                if !skip {
                    let record = StreamRecord::new(stream.config(number)?, stream.start);
                    if let CreateOutcome::Exists(_) =
                        storage.create(&stream.path, record, Bytes::new()).await?
                    {
                        return Err(BackupError::Conflict(stream.path.clone()));
                    }
                }
                let start = stream.start;
                current = Some((stream, skip, start));
            }
            Line::Data(data) => {
                let (stream, skip, position) = current
                    .as_mut()
                    .ok_or_else(|| bad(number, "data outside a stream".into()))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|e| bad(number, e.to_string()))?;
                if !*skip {
                    let append = Append::new(stream.id, *position, Bytes::from(bytes.clone()));
                    storage.append(&stream.path, append).await?;
                }
                *position += bytes.len() as u64;
            }
            Line::End { path, bytes } => {
                let (stream, skip, position) = current
                    .take()
                    .ok_or_else(|| bad(number, "end outside a stream".into()))?;
                if path != stream.path
                    || position != stream.tail
                    || stream.tail != stream.start + bytes
                {
                    return Err(bad(number, format!("length or path mismatch for {path}")));
                }
                if skip {
                    summary.skipped += 1;
                    continue;
                }
                restore_state(storage, &stream).await?;
                summary.streams += 1;
                summary.bytes += bytes;
            }
        }
    }
    if current.is_some() {
        return Err(bad(number, "the export ends inside a stream".into()));
    }
    Ok(summary)
}

/// Sets an imported stream's state with empty appends: `Stream-Seq`, producers,
/// closure, then soft deletion.
async fn restore_state(storage: &dyn Storage, stream: &StreamLine) -> Result<(), BackupError> {
    let id = stream.id;
    let state = |producer: Option<(String, ProducerState)>,
                 stream_seq: Option<String>,
                 close: Option<Option<ProducerTuple>>| {
        let mut append = Append::new(id, stream.tail, Bytes::new());
        (append.stream_seq, append.producer, append.close) = (stream_seq, producer, close);
        append
    };
    storage
        .append(&stream.path, state(None, stream.stream_seq.clone(), None))
        .await?;
    for (producer, (epoch, last_seq)) in &stream.producers {
        let producer = (
            producer.clone(),
            ProducerState {
                epoch: *epoch,
                last_seq: *last_seq,
            },
        );
        storage
            .append(&stream.path, state(Some(producer), None, None))
            .await?;
    }
    if stream.closed {
        let by = stream.closed_by.as_ref().map(|t| ProducerTuple {
            id: t.id.clone(),
            epoch: t.epoch,
            seq: t.seq,
        });
        storage
            .append(&stream.path, state(None, None, Some(by)))
            .await?;
    }
    if stream.soft_deleted {
        storage.soft_delete(&stream.path).await?;
    }
    Ok(())
}
