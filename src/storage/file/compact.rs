//! The compactor: gives back the space of deleted streams whose records share
//! sealed segments with live ones.
//!
//! A segment is deleted whole once nothing in it is needed (see
//! `collect_garbage`), but one live record keeps a whole segment. The
//! compactor rewrites a sealed segment (never the one being written) whose
//! records are mostly dead, keeping the records of live streams in their order:
//!
//! 1. **Choose**, between two writer batches (so that the index says exactly
//!    what is on disk): the sealed segments whose dead share is at least
//!    `min_dead_ratio`, the stream ids that are deleted for good, and which
//!    delete records must stay (those of streams with records in older
//!    segments, which would otherwise come back on replay).
//! 2. **Copy**, at no more than `rate` bytes per second and without any lock,
//!    every record of a segment except the dead ones into
//!    `log/<n>.log.compacting`, noting where each kept record moved; then
//!    `fsync` it (always, whatever the durability: old data must never be put
//!    at risk).
//! 3. **Switch**, again between two batches and under the index's write lock:
//!    `rename` the copy over the segment, move the index's pieces to the new
//!    offsets, and forget the open descriptor of the old file. Readers that
//!    already planned a read hold the old file open and read it to the end.
//!
//! A crash before the rename leaves the old segment and a stray copy, which
//! the next open deletes; after it, the new segment, which holds every record
//! a replay needs. Stream records never move between segments, so replay
//! order is kept.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::format::{parse_header, segment_path, sync_dir, HEADER_LEN, KIND_DELETE};
use super::Shared;

/// How the background compactor of a [`FileStorage`](super::FileStorage)
/// works. On by default: 32 MiB/s, segments at least half dead, looked at every
/// 10 seconds.
///
/// ```
/// use std::time::Duration;
/// use tower_durable_streams::storage::Compaction;
///
/// let gentle = Compaction::default()
///     .rate(8 * 1024 * 1024)
///     .min_dead_ratio(0.7)
///     .interval(Duration::from_secs(60));
/// assert_eq!(gentle.rate_limit(), 8 * 1024 * 1024);
/// assert!(!Compaction::off().is_on());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compaction {
    rate: u64,
    min_dead_ratio: f64,
    interval: Duration,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            rate: 32 * 1024 * 1024,
            min_dead_ratio: 0.5,
            interval: Duration::from_secs(10),
        }
    }
}

impl Compaction {
    /// No background compaction ([`FileStorage::compact_now`](super::FileStorage::compact_now)
    /// still works).
    pub fn off() -> Self {
        Compaction {
            rate: 0,
            ..Compaction::default()
        }
    }

    /// The most bytes per second the compactor reads plus writes; 0 turns it off.
    pub fn rate(mut self, bytes_per_second: u64) -> Self {
        self.rate = bytes_per_second;
        self
    }

    /// The dead share of a sealed segment (0.0 to 1.0) from which it is
    /// rewritten.
    pub fn min_dead_ratio(mut self, ratio: f64) -> Self {
        self.min_dead_ratio = ratio.clamp(0.0, 1.0);
        self
    }

    /// How often the compactor looks for segments to rewrite.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The rate limit in bytes per second (0: off).
    pub fn rate_limit(&self) -> u64 {
        self.rate
    }

    /// Whether the background compactor runs.
    pub fn is_on(&self) -> bool {
        self.rate > 0
    }

    pub(super) fn min_dead_ratio_value(&self) -> f64 {
        self.min_dead_ratio
    }
}

/// What a compaction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionReport {
    /// Files rewritten (log segments; redb databases for
    /// [`RedbStorage::compact`](crate::storage::RedbStorage::compact)).
    pub segments: u64,
    /// Bytes the log shrank by.
    pub bytes_freed: u64,
}

/// One segment to rewrite, as chosen between two batches.
struct Plan {
    number: u32,
    /// How many of the segment's streams were alive.
    alive: usize,
    /// Streams deleted for good: their records go.
    dead: HashSet<u64>,
    /// Delete records to keep: their streams have records in older segments.
    keep_deletes: HashSet<u64>,
}

/// A rewritten copy, ready to replace its segment.
struct Copy {
    temp: PathBuf,
    /// (old record offset, new record offset), in order.
    moved: Vec<(u64, u64)>,
    ids: HashSet<u64>,
    deletes: Vec<u64>,
    before: u64,
    after: u64,
}

/// The path of a segment's copy in progress.
pub(super) fn temp_path(dir: &Path, number: u32) -> PathBuf {
    let mut path = segment_path(dir, number).into_os_string();
    path.push(".compacting");
    PathBuf::from(path)
}

/// Deletes copies a crash left behind (the segments they copied are intact).
pub(super) fn remove_stray_copies(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir.join("log"))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(".compacting") {
            tracing::info!(file = %entry.path().display(), "removing an unfinished compaction copy");
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Runs one pass over the store `shared` points to; `rate` 0 means no limit.
/// Stops early (reporting what it did) once the store is dropped.
pub(super) fn pass(
    shared: &Weak<Shared>,
    rate: u64,
    min_dead_ratio: f64,
) -> io::Result<CompactionReport> {
    let mut report = CompactionReport::default();
    // One pass at a time (the background one, or `compact_now`).
    let Some(one_at_a_time) = shared.upgrade().map(|s| s.compacting.clone()) else {
        return Ok(report);
    };
    let _pass = one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
    let Some(plans) = choose(shared, min_dead_ratio)? else {
        return Ok(report);
    };
    let mut limiter = Limiter::new(rate);
    for plan in plans {
        let Some(dir) = shared.upgrade().map(|s| s.dir.clone()) else {
            break;
        };
        let copy = match copy(shared, &dir, &plan, &mut limiter) {
            Ok(Some(copy)) => copy,
            Ok(None) => break,
            Err(e) => {
                let _ = fs::remove_file(temp_path(&dir, plan.number));
                tracing::warn!(segment = plan.number, error = %e, "compaction of a segment failed; it stays as it is");
                continue;
            }
        };
        let freed = copy.before.saturating_sub(copy.after);
        if freed < 4096 || freed * 10 < copy.before {
            // The estimate was off (small records, kept delete records): not
            // worth a rewrite until another stream in it dies.
            let _ = fs::remove_file(&copy.temp);
            if let Some(shared) = shared.upgrade() {
                let mut index = shared.index.write().unwrap_or_else(|e| e.into_inner());
                if let Some(info) = index.segments.get_mut(&plan.number) {
                    info.checked = Some(plan.alive);
                }
            }
            continue;
        }
        match switch(shared, &dir, &plan, copy)? {
            Some(freed) => {
                report.segments += 1;
                report.bytes_freed += freed;
            }
            None => continue,
        }
    }
    Ok(report)
}

/// Chooses the segments to rewrite; `None` once the store is gone.
fn choose(shared: &Weak<Shared>, min_dead_ratio: f64) -> io::Result<Option<Vec<Plan>>> {
    let Some(shared) = shared.upgrade() else {
        return Ok(None);
    };
    let _batch = shared.batch.lock().unwrap_or_else(|e| e.into_inner());
    if shared.poisoned.load(Ordering::Acquire) {
        return Ok(None);
    }
    let index = shared.index.read().unwrap_or_else(|e| e.into_inner());
    let Some(&current) = index.segments.keys().next_back() else {
        return Ok(Some(Vec::new()));
    };
    // Live bytes per segment: the data of live streams, with a header each.
    let mut live: HashMap<u32, u64> = HashMap::new();
    for entry in index.streams.values() {
        for piece in &entry.pieces {
            *live.entry(piece.segment).or_default() += u64::from(piece.len) + HEADER_LEN as u64;
        }
    }
    // The oldest segment holding records of each stream: a delete record
    // must stay while an older segment holds records of its stream.
    let mut oldest: HashMap<u64, u32> = HashMap::new();
    for (&number, info) in &index.segments {
        for &id in &info.ids {
            oldest.entry(id).or_insert(number);
        }
    }
    let mut plans = Vec::new();
    for (&number, info) in index.segments.range(..current) {
        let alive = info.ids.iter().filter(|&&id| index.alive(id)).count();
        if info.checked == Some(alive) {
            continue;
        }
        let size = match fs::metadata(segment_path(&shared.dir, number)) {
            Ok(meta) => meta.len(),
            Err(_) => continue,
        };
        let dead_bytes = size.saturating_sub(live.get(&number).copied().unwrap_or(0));
        if size == 0 || dead_bytes < 4096 || (dead_bytes as f64) < min_dead_ratio * size as f64 {
            continue;
        }
        let dead: HashSet<u64> = info
            .ids
            .iter()
            .copied()
            .filter(|&id| !index.alive(id))
            .collect();
        if dead.is_empty() {
            continue;
        }
        let keep_deletes = info
            .deletes
            .iter()
            .copied()
            .filter(|id| oldest.get(id).is_some_and(|&first| first < number))
            .collect();
        plans.push(Plan {
            number,
            alive,
            dead,
            keep_deletes,
        });
    }
    Ok(Some(plans))
}

/// Copies the records of `plan.number` that are still needed; `None` if the
/// store was dropped meanwhile.
fn copy(
    shared: &Weak<Shared>,
    dir: &Path,
    plan: &Plan,
    limiter: &mut Limiter,
) -> io::Result<Option<Copy>> {
    let source = File::open(segment_path(dir, plan.number))?;
    let before = source.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, source);
    let temp = temp_path(dir, plan.number);
    let mut writer = BufWriter::with_capacity(1 << 20, File::create(&temp)?);
    let (mut at, mut written) = (0u64, 0u64);
    let mut moved = Vec::new();
    let mut ids = HashSet::new();
    let mut deletes = Vec::new();
    let mut header = [0u8; HEADER_LEN];
    let mut payload = Vec::new();
    while at < before {
        if shared.strong_count() == 0 {
            drop(writer);
            let _ = fs::remove_file(&temp);
            return Ok(None);
        }
        reader.read_exact(&mut header)?;
        let parsed = parse_header(&header).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("damaged record header at byte {at}"),
            )
        })?;
        payload.resize(parsed.len, 0);
        reader.read_exact(&mut payload)?;
        let len = (HEADER_LEN + parsed.len) as u64;
        let id = parsed.stream_id;
        // A live stream's records stay, and so does any delete record but
        // those of dead streams with nothing in older segments.
        let keep = !plan.dead.contains(&id)
            || (parsed.kind == KIND_DELETE && plan.keep_deletes.contains(&id));
        if keep {
            // Copied as they are, checksums included: a damaged payload stays
            // damaged, and its stream's reads keep failing loudly.
            writer.write_all(&header)?;
            writer.write_all(&payload)?;
            moved.push((at, written));
            ids.insert(id);
            if parsed.kind == KIND_DELETE {
                deletes.push(id);
            }
            written += len;
        }
        at += len;
        if !limiter.spend(len + if keep { len } else { 0 }, shared) {
            drop(writer);
            let _ = fs::remove_file(&temp);
            return Ok(None);
        }
    }
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(Some(Copy {
        temp,
        moved,
        ids,
        deletes,
        before,
        after: written,
    }))
}

/// Puts the copy in place of its segment; `Some(bytes freed)` if it did.
fn switch(shared: &Weak<Shared>, dir: &Path, plan: &Plan, copy: Copy) -> io::Result<Option<u64>> {
    let Some(shared) = shared.upgrade() else {
        let _ = fs::remove_file(&copy.temp);
        return Ok(None);
    };
    {
        let _batch = shared.batch.lock().unwrap_or_else(|e| e.into_inner());
        let mut index = shared.index.write().unwrap_or_else(|e| e.into_inner());
        // Deleted meanwhile (nothing in it was needed any more), or a stream
        // came back with a dropped id (an import): leave it.
        let gone = !index.segments.contains_key(&plan.number);
        if gone || plan.dead.iter().any(|&id| index.alive(id)) {
            drop(index);
            let _ = fs::remove_file(&copy.temp);
            return Ok(None);
        }
        if let Err(e) = fs::rename(&copy.temp, segment_path(dir, plan.number)) {
            drop(index);
            let _ = fs::remove_file(&copy.temp);
            tracing::warn!(segment = plan.number, error = %e, "could not put a compacted segment in place; it stays as it was");
            return Ok(None);
        }
        let streams: Vec<String> = copy
            .ids
            .iter()
            .filter_map(|id| index.keys.get(id).cloned())
            .collect();
        for key in streams {
            let Some(entry) = index.streams.get_mut(&key) else {
                continue;
            };
            for piece in entry.pieces.iter_mut().filter(|p| p.segment == plan.number) {
                let at = copy.moved.partition_point(|&(old, _)| old <= piece.offset);
                let (old, new) = copy.moved[at.saturating_sub(1)];
                piece.offset = new + (piece.offset - old);
            }
        }
        if let Some(info) = index.segments.get_mut(&plan.number) {
            info.ids = copy.ids;
            info.deletes = copy.deletes;
            info.checked = Some(plan.alive);
        }
        shared
            .open_segments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&plan.number);
    }
    sync_dir(&dir.join("log"))?;
    let freed = copy.before.saturating_sub(copy.after);
    shared.stats.compactions.fetch_add(1, Ordering::Relaxed);
    shared
        .stats
        .compacted_bytes
        .fetch_add(freed, Ordering::Relaxed);
    tracing::info!(
        segment = plan.number,
        before = copy.before,
        after = copy.after,
        "compacted a log segment"
    );
    Ok(Some(freed))
}

/// Keeps I/O under a rate by sleeping.
struct Limiter {
    rate: u64,
    started: Instant,
    spent: u64,
}

impl Limiter {
    fn new(rate: u64) -> Self {
        Limiter {
            rate,
            started: Instant::now(),
            spent: 0,
        }
    }

    /// Waits until `bytes` more are within the rate, in short naps so that
    /// a dropped store is noticed at once; `false` if it was.
    fn spend(&mut self, bytes: u64, shared: &Weak<Shared>) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.spent += bytes;
        let due = Duration::from_secs_f64(self.spent as f64 / self.rate as f64);
        loop {
            let elapsed = self.started.elapsed();
            if due <= elapsed + Duration::from_millis(5) {
                return true;
            }
            if shared.strong_count() == 0 {
                return false;
            }
            std::thread::sleep((due - elapsed).min(Duration::from_millis(50)));
        }
    }
}

/// The background compactor: a pass every `interval` while it is on, until the
/// store is dropped (its `nudge` sender with it). A nudge restarts the wait with
/// the current settings.
pub(super) fn run(shared: Weak<Shared>, nudge: std::sync::mpsc::Receiver<()>) {
    loop {
        let Some(settings) = shared
            .upgrade()
            .map(|s| *s.compaction.lock().unwrap_or_else(|e| e.into_inner()))
        else {
            return;
        };
        // A message is a nudge (new settings); a closed channel, the end.
        match nudge.recv_timeout(settings.interval) {
            Ok(()) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if !settings.is_on() {
            continue;
        }
        if let Err(e) = pass(&shared, settings.rate, settings.min_dead_ratio) {
            tracing::warn!(error = %e, "log compaction pass failed");
        }
    }
}

/// The background compactor's handle, kept by the store.
pub(super) type Compactor = (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>);

/// Starts the background compactor of `shared`.
pub(super) fn start(shared: &Arc<Shared>) -> io::Result<Compactor> {
    let (tx, rx) = std::sync::mpsc::channel();
    let weak = Arc::downgrade(shared);
    let thread = std::thread::Builder::new()
        .name("ds-file-compactor".into())
        .spawn(move || run(weak, rx))?;
    Ok((tx, thread))
}
