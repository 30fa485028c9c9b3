//! Subscription state kept in a stream of the service's own storage.
//!
//! The operations of [`state`](super::state) are appended as JSON entries to
//! an internal stream under `__ds` (which no client can reach: the reserved
//! prefix answers 404 to every stream request). Every backend already keeps
//! streams durably, and shared storage already shows one instance's appends
//! to the others, so the state survives restarts and is the same on every
//! instance without a storage interface of its own.
//!
//! Each entry carries a version and is appended with `Stream-Seq` set to it:
//! two instances that decide a change on the same state write the same
//! version, the stream takes the first and refuses the second, and the
//! second catches up and decides again. Decisions are therefore made on the
//! latest state, one at a time across all instances.
//!
//! **Compaction.** Once a log has grown past a few times the size of the
//! state it holds, the instance that notices writes the whole state as one
//! entry at the start of a new log stream, then closes the old log with an
//! entry naming the new one, under the next version: that append decides
//! between a compaction and any change decided at the same time. Every
//! instance that reads the closing entry moves to the new log. A small head
//! stream names the current log for instances that start later, and the
//! old log is deleted; an instance still reading it finds it gone and
//! starts again from the head.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::state::{Op, Refusal, Subscriptions};
use crate::engine::{AppendRequest, BodyType, CreateRequest, Engine, Key, StreamError};
use crate::protocol::{json_read_frame, Offset, ReadFrom};
use crate::storage::StorageError;

/// The first log's path.
const ROOT_PATH: &str = "/__ds/subscriptions";
/// The stream naming the current log once the first one was compacted.
const HEAD_PATH: &str = "/__ds/subscription-head";
/// Where compacted logs live, each named by its first version.
const COMPACTED_PREFIX: &str = "/__ds/subscription-log/";

/// How often a change is decided again after other instances wrote first.
const MAX_ATTEMPTS: usize = 16;

/// A log is compacted once it is this long and four times its state's
/// snapshot (the default of `SubscriptionOptions::compact_log_after_bytes`).
pub(crate) const COMPACT_AFTER_BYTES: u64 = 8 * 1024 * 1024;

/// One appended entry: a change's operations under their version, or (with
/// `next`) the last entry of a compacted log.
#[derive(Debug, Serialize)]
struct Entry {
    v: u64,
    ops: Vec<Op>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// An entry as read back, its operations not yet decoded.
#[derive(Debug, Deserialize)]
struct RawEntry {
    v: u64,
    ops: Vec<serde_json::Value>,
    #[serde(default)]
    next: Option<String>,
}

/// A head entry: where the log is.
#[derive(Debug, Serialize, Deserialize)]
struct HeadEntry {
    log: String,
}

/// How far the log is folded.
#[derive(Debug)]
struct Folded {
    /// The log stream being followed.
    key: Key,
    offset: u64,
    version: u64,
    /// The log length at which compaction is considered next.
    compact_at: u64,
    /// A rebuild failed half way (see [`Log::fold`]).
    broken: bool,
}

/// Why a change was not made.
#[derive(Debug)]
pub(crate) enum ChangeError {
    /// The rules refused it.
    Refused(Refusal),
    /// The log could not be read or written.
    Stream(StreamError),
}

impl From<Refusal> for ChangeError {
    fn from(refusal: Refusal) -> Self {
        ChangeError::Refused(refusal)
    }
}

impl From<StreamError> for ChangeError {
    fn from(error: StreamError) -> Self {
        ChangeError::Stream(error)
    }
}

fn encoding_failed(e: serde_json::Error) -> StreamError {
    StreamError::Storage(StorageError::Io(std::io::Error::other(format!(
        "a subscription change cannot be encoded: {e}"
    ))))
}

fn unreadable(e: serde_json::Error) -> StreamError {
    StreamError::Storage(StorageError::Corrupt(format!(
        "the subscription log cannot be read: {e}"
    )))
}

fn version_seq(version: u64) -> String {
    format!("{version:020}")
}

/// The creation of one of the log's JSON streams, with `body` in it.
fn json_stream(body: Bytes) -> CreateRequest {
    CreateRequest {
        content_type: Some("application/json".to_owned()),
        body,
        ..CreateRequest::default()
    }
}

/// An append of one JSON entry under `version` (as its `Stream-Seq`).
fn versioned(entry: Bytes, version: u64) -> AppendRequest {
    AppendRequest {
        content_type: BodyType::Stream,
        body: entry,
        stream_seq: Some(version_seq(version)),
        ..AppendRequest::default()
    }
}

/// The subscription log of one instance.
#[derive(Debug)]
pub(crate) struct Log {
    engine: Arc<Engine>,
    /// Held while the log is read or a change is decided and written: one
    /// at a time per instance (across instances, the versions take turns).
    folded: tokio::sync::Mutex<Folded>,
    /// The state folded so far, readable without waiting (the append hook's
    /// first look); written only while `folded` is held.
    subs: std::sync::RwLock<Subscriptions>,
    /// The version folded so far, readable without waiting.
    version: std::sync::atomic::AtomicU64,
    /// The log stream followed now, readable without waiting.
    current: std::sync::RwLock<Key>,
    /// The least length at which a log is compacted.
    compact_after: u64,
}

impl Log {
    /// Opens the log, creating its stream on first use, and folds it.
    #[cfg(test)]
    pub(crate) async fn open(engine: Arc<Engine>) -> Result<Log, StreamError> {
        Log::open_compacting_after(engine, COMPACT_AFTER_BYTES).await
    }

    /// [`open`](Self::open), compacting once the log is `compact_after`
    /// bytes long (and four times its snapshot).
    pub(crate) async fn open_compacting_after(
        engine: Arc<Engine>,
        compact_after: u64,
    ) -> Result<Log, StreamError> {
        let root = Key::trusted(ROOT_PATH.to_owned());
        let log = Log {
            engine,
            folded: tokio::sync::Mutex::new(Folded {
                key: root.clone(),
                offset: 0,
                version: 0,
                compact_at: compact_after,
                broken: false,
            }),
            subs: std::sync::RwLock::new(Subscriptions::default()),
            version: std::sync::atomic::AtomicU64::new(0),
            current: std::sync::RwLock::new(root),
            compact_after,
        };
        log.restart(&mut *log.folded.lock().await).await?;
        Ok(log)
    }

    /// The log stream followed now (the follower watches it).
    pub(crate) fn current_key(&self) -> Key {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Where the log is: the head's last entry, or the first log (created
    /// if this is the first start).
    async fn head(&self) -> Result<Key, StreamError> {
        if let Some(log) = self.head_entry().await? {
            return Ok(log);
        }
        let root = Key::trusted(ROOT_PATH.to_owned());
        let request = json_stream(Bytes::new());
        // A second instance, or a restart, finds it there: fine. So is a
        // conflict: the first log exists and was closed by a compaction
        // meanwhile (the head says where the log went).
        match self.engine.create(&root, request).await {
            Ok(_) | Err(StreamError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        // The first compaction may have named its log in the head and
        // deleted the first one while this looked: then the create above
        // made a new, empty first log, and the head says where the log
        // really is. The stray is deleted, so that an instance still
        // following the first log finds it gone and starts from the head.
        match self.head_entry().await? {
            Some(log) => {
                if let Err(e) = self.engine.delete(&root).await {
                    if !matches!(e, StreamError::NotFound) {
                        tracing::warn!(error = %e, "a stray first subscription log could not be deleted");
                    }
                }
                Ok(log)
            }
            None => Ok(root),
        }
    }

    /// The head's last entry, if it has one.
    async fn head_entry(&self) -> Result<Option<Key>, StreamError> {
        let head = Key::trusted(HEAD_PATH.to_owned());
        let mut last: Option<String> = None;
        let mut offset = 0;
        loop {
            let read = match self
                .engine
                .read(&head, ReadFrom::At(Offset::new(offset)))
                .await
            {
                Ok(read) => read,
                Err(StreamError::NotFound) => break,
                Err(e) => return Err(e),
            };
            if read.end > read.start {
                let array: Vec<u8> = json_read_frame(read.data).concat();
                let entries: Vec<HeadEntry> = serde_json::from_slice(&array).map_err(unreadable)?;
                if let Some(entry) = entries.into_iter().next_back() {
                    last = Some(entry.log);
                }
            }
            offset = read.end;
            if read.end >= read.tail {
                break;
            }
        }
        Ok(last.map(Key::trusted))
    }

    /// Folds the whole log again from where the head says it is (at open,
    /// and when the log followed so far was compacted and deleted).
    async fn restart(&self, folded: &mut Folded) -> Result<(), StreamError> {
        let mut attempts = 0;
        loop {
            folded.key = self.head().await?;
            folded.offset = 0;
            folded.version = 0;
            match self.fold(folded, true).await {
                // Compacted again between reading the head and the log.
                Err(StreamError::NotFound) if attempts < MAX_ATTEMPTS => attempts += 1,
                other => return other,
            }
        }
    }

    /// Folds what was appended since the last look.
    async fn catch_up(&self, folded: &mut Folded) -> Result<(), StreamError> {
        if folded.broken {
            // A rebuild failed half way: the state does not match `folded`.
            return self.restart(folded).await;
        }
        match self.fold(folded, false).await {
            // Compacted by another instance, which deleted this log (and an
            // empty one may have taken its name: the offset is then past
            // its tail).
            Err(StreamError::NotFound | StreamError::Invalid(_)) => self.restart(folded).await,
            other => other,
        }
    }

    /// Reads and applies the log from `folded`, following a compaction to
    /// the next log. A new state (`rebuild`, or after a compaction) is made
    /// apart and put in place at once, so that nobody looking meanwhile sees
    /// a partial one.
    async fn fold(&self, folded: &mut Folded, rebuild: bool) -> Result<(), StreamError> {
        let mut fresh = rebuild.then(Subscriptions::default);
        let folding = self.fold_into(folded, &mut fresh).await;
        // A failure while a new state was being made leaves `folded` past
        // the state in use: the next look starts again from the head.
        folded.broken = folding.is_err() && fresh.is_some();
        folding?;
        if let Some(fresh) = fresh {
            *self.subs.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        }
        self.version
            .store(folded.version, std::sync::atomic::Ordering::Release);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = folded.key.clone();
        Ok(())
    }

    async fn fold_into(
        &self,
        folded: &mut Folded,
        fresh: &mut Option<Subscriptions>,
    ) -> Result<(), StreamError> {
        loop {
            let from = ReadFrom::At(Offset::new(folded.offset));
            let read = self.engine.read(&folded.key, from).await?;
            let mut next = None;
            if read.end > read.start {
                let array: Vec<u8> = json_read_frame(read.data).concat();
                let entries: Vec<RawEntry> = serde_json::from_slice(&array).map_err(unreadable)?;
                let mut shared = None;
                let subs = match fresh {
                    Some(fresh) => fresh,
                    None => {
                        &mut **shared.insert(self.subs.write().unwrap_or_else(|e| e.into_inner()))
                    }
                };
                for entry in entries {
                    for op in entry.ops {
                        // An operation this version does not know (written by a
                        // newer one sharing the store) is skipped, not fatal.
                        match serde_json::from_value::<Op>(op) {
                            Ok(op) => subs.apply(&op),
                            Err(e) => tracing::warn!(
                                version = entry.v,
                                error = %e,
                                "skipped a subscription change this version does not understand"
                            ),
                        }
                    }
                    folded.version = entry.v;
                    if entry.next.is_some() {
                        next = entry.next;
                        break;
                    }
                }
            }
            folded.offset = read.end;
            if let Some(next) = next {
                // The state starts again from the new log's snapshot.
                folded.key = Key::trusted(next);
                folded.offset = 0;
                *fresh = Some(Subscriptions::default());
                continue;
            }
            if read.end >= read.tail {
                return Ok(());
            }
        }
    }

    /// Runs `look` on the latest state.
    pub(crate) async fn read<R>(
        &self,
        look: impl FnOnce(&Subscriptions) -> R,
    ) -> Result<R, StreamError> {
        let mut folded = self.folded.lock().await;
        self.catch_up(&mut folded).await?;
        Ok(look(&self.subs.read().unwrap_or_else(|e| e.into_inner())))
    }

    /// The version folded so far (it only grows).
    pub(crate) fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Runs `look` on the state as folded so far, without waiting for a
    /// change in progress or reading the log (it may be a little behind).
    pub(crate) fn peek<R>(&self, look: impl FnOnce(&Subscriptions) -> R) -> R {
        look(&self.subs.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Decides a change on the latest state and records it: `decide`
    /// returns the operations and the answer for the caller, who gets the
    /// answer and the operations recorded. If another instance recorded a
    /// change first, the log is caught up and `decide` runs again, so it
    /// must be a pure function of the state it is given.
    pub(crate) async fn change<R>(
        &self,
        mut decide: impl FnMut(&Subscriptions) -> Result<(Vec<Op>, R), Refusal>,
    ) -> Result<(R, Vec<Op>), ChangeError> {
        let mut folded = self.folded.lock().await;
        for _ in 0..MAX_ATTEMPTS {
            self.catch_up(&mut folded).await?;
            let decided = decide(&self.subs.read().unwrap_or_else(|e| e.into_inner()));
            let (ops, answer) = decided?;
            if ops.is_empty() {
                return Ok((answer, ops));
            }
            let entry = Entry {
                v: folded.version + 1,
                ops,
                next: None,
            };
            let body = serde_json::to_vec(&entry).map_err(encoding_failed)?;
            let request = versioned(Bytes::from(body), entry.v);
            match self.engine.append(&folded.key, request).await {
                Ok(_) => {
                    // Version `v` was free, so nothing came between: fold it.
                    // The change is recorded even if this read fails (the
                    // next look folds it), so the caller gets its answer.
                    if let Err(e) = self.catch_up(&mut folded).await {
                        tracing::warn!(error = %e, "a recorded subscription change is not folded yet");
                    } else if folded.offset >= folded.compact_at {
                        if let Err(e) = self.compact(&mut folded, false).await {
                            tracing::warn!(error = %e, "the subscription log could not be compacted");
                            // Tried again after a quarter more, not at once.
                            folded.compact_at =
                                folded.offset.saturating_add(self.compact_after / 4);
                        }
                    }
                    return Ok((answer, entry.ops));
                }
                // Another instance wrote version `v` first, or compacted
                // this log (closing it, or by now deleting it): catch up
                // (from the head if need be) and decide again.
                Err(
                    StreamError::SeqRegression { .. }
                    | StreamError::Closed { .. }
                    | StreamError::NotFound,
                ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StreamError::Contended.into())
    }

    /// Moves the state to a new log that starts with its snapshot (see the
    /// module documentation), if the log is long enough for that to pay (or
    /// with `force`).
    async fn compact(&self, folded: &mut Folded, force: bool) -> Result<(), StreamError> {
        let version = folded.version + 1;
        let snapshot = Entry {
            v: version,
            ops: self
                .subs
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .snapshot(),
            next: None,
        };
        let body = serde_json::to_vec(&snapshot).map_err(encoding_failed)?;
        folded.compact_at = self
            .compact_after
            .max((body.len() as u64).saturating_mul(4));
        if folded.offset < folded.compact_at && !force {
            return Ok(());
        }
        // The same state at the same version makes the same snapshot, so two
        // instances compacting at once create one stream with one content.
        let new = Key::trusted(format!("{COMPACTED_PREFIX}{}", version_seq(version)));
        self.engine
            .create(&new, json_stream(Bytes::from(body)))
            .await?;
        let closing = Entry {
            v: version,
            ops: Vec::new(),
            next: Some(new.as_str().to_owned()),
        };
        let closing = serde_json::to_vec(&closing).map_err(encoding_failed)?;
        let request = AppendRequest {
            close: true,
            ..versioned(Bytes::from(closing), version)
        };
        let old = folded.key.clone();
        match self.engine.append(&old, request).await {
            Ok(_) => {}
            // A change (or another compaction) took this version first.
            Err(StreamError::SeqRegression { .. } | StreamError::Closed { .. }) => {
                self.catch_up(folded).await?;
                if folded.key != new {
                    // Nothing names the new stream: drop it.
                    let _ = self.engine.delete(&new).await;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        self.catch_up(folded).await?;
        // Later openers start at the new log; the head's own versions keep
        // a late writer from naming an older log after a newer one.
        let head = Key::trusted(HEAD_PATH.to_owned());
        self.engine.create(&head, json_stream(Bytes::new())).await?;
        let entry = HeadEntry {
            log: new.as_str().to_owned(),
        };
        let entry = serde_json::to_vec(&entry).map_err(encoding_failed)?;
        let request = versioned(Bytes::from(entry), version);
        match self.engine.append(&head, request).await {
            Ok(_) | Err(StreamError::SeqRegression { .. }) => {}
            Err(e) => return Err(e),
        }
        if let Err(e) = self.engine.delete(&old).await {
            tracing::warn!(log = %old, error = %e, "a compacted subscription log could not be deleted");
        }
        tracing::info!(log = %new, version, "compacted the subscription log");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Limits;
    use crate::storage::MemoryStorage;
    use crate::subscriptions::state::{Config, Delivery};
    use tokio_util::sync::CancellationToken;

    fn engine() -> Arc<Engine> {
        let storage = Arc::new(MemoryStorage::new());
        Engine::new(storage, Limits::default(), &CancellationToken::new())
    }

    fn config(pattern: &str) -> Config {
        let delivery = Delivery::Webhook {
            url: "https://hooks.example.com/".into(),
        };
        Config::new(delivery, Some(pattern.into()), vec![], None, None).unwrap()
    }

    fn create(
        id: &str,
        pattern: &str,
    ) -> impl FnMut(&Subscriptions) -> Result<(Vec<Op>, bool), Refusal> {
        let (id, pattern) = (id.to_owned(), pattern.to_owned());
        move |subs| subs.create(&id, config(&pattern), 0, &[], None)
    }

    #[tokio::test]
    async fn changes_survive_reopening() {
        let engine = engine();
        let log = Log::open(engine.clone()).await.unwrap();
        assert!(log.change(create("a", "x/*")).await.unwrap().0);
        assert!(log.change(create("b", "y/*")).await.unwrap().0);
        // Refused changes record nothing.
        assert!(matches!(
            log.change(create("a", "other/*")).await,
            Err(ChangeError::Refused(Refusal::Conflict))
        ));
        let again = Log::open(engine).await.unwrap();
        let ids = again
            .read(|subs| (subs.get("a").is_some(), subs.get("b").is_some()))
            .await
            .unwrap();
        assert_eq!(ids, (true, true));
        assert_eq!(again.folded.lock().await.version, 2);
    }

    #[tokio::test]
    async fn a_change_decided_on_stale_state_is_decided_again() {
        // Two logs over one engine stand for two instances over one store.
        let engine = engine();
        let first = Log::open(engine.clone()).await.unwrap();
        let second = Log::open(engine).await.unwrap();
        assert!(first.change(create("a", "x/*")).await.unwrap().0);
        // `second` had not seen it, but catches up before deciding: its
        // create of "a" with another pattern conflicts at once.
        let mut decisions = 0;
        let result = second
            .change(|subs| {
                decisions += 1;
                subs.create("a", config("y/*"), 0, &[], None)
            })
            .await;
        assert!(matches!(
            result,
            Err(ChangeError::Refused(Refusal::Conflict))
        ));
        assert_eq!(decisions, 1, "caught up before deciding");
        // Both now agree, and a change by either is seen by the other.
        assert!(second.change(create("b", "y/*")).await.unwrap().0);
        let seen = first.read(|subs| subs.get("b").is_some()).await.unwrap();
        assert!(seen);
    }

    #[tokio::test]
    async fn a_write_that_loses_the_race_is_made_again() {
        let engine = engine();
        let first = Log::open(engine.clone()).await.unwrap();
        let second = Log::open(engine).await.unwrap();
        // `first` writes while `second` is deciding (between its catch-up
        // and its append): the append under the same version is refused.
        let mut decisions = 0;
        let first_ref = &first;
        let result = second
            .change(|subs| {
                decisions += 1;
                if decisions == 1 {
                    let created =
                        futures_util::FutureExt::now_or_never(first_ref.change(create("a", "x/*")));
                    assert!(matches!(created, Some(Ok((true, _)))));
                }
                subs.create("b", config("y/*"), 0, &[], None)
            })
            .await;
        assert!(result.unwrap().0);
        assert_eq!(decisions, 2, "decided again after the refused append");
        let both = second
            .read(|subs| subs.get("a").is_some() && subs.get("b").is_some())
            .await
            .unwrap();
        assert!(both);
    }

    /// Churn that grows the log but not the state: a subscription made and
    /// deleted again (leaving only its tombstone).
    async fn churn(log: &Log, rounds: usize) {
        for _ in 0..rounds {
            assert!(log.change(create("churn", "c/*")).await.unwrap().0);
            log.change(|subs| Ok((subs.delete("churn"), ())))
                .await
                .unwrap();
        }
    }

    async fn snapshot(log: &Log) -> Vec<Op> {
        log.read(Subscriptions::snapshot).await.unwrap()
    }

    #[tokio::test]
    async fn a_long_log_is_compacted_and_reopens_to_the_same_state() {
        let engine = engine();
        let log = Log::open_compacting_after(engine.clone(), 4_000)
            .await
            .unwrap();
        assert!(log.change(create("keep", "k/*")).await.unwrap().0);
        churn(&log, 40).await;
        let current = log.current_key();
        assert!(current.as_str().starts_with(COMPACTED_PREFIX), "{current}");
        // The first log is gone, and the current one is short.
        let root = Key::trusted(ROOT_PATH.to_owned());
        assert!(matches!(
            engine.head(&root).await,
            Err(StreamError::NotFound)
        ));
        assert!(engine.head(&current).await.unwrap().tail < 4_000);
        let state = snapshot(&log).await;
        let version = log.version();
        assert!(version > 80, "versions go on across compactions: {version}");
        let reopened = Log::open(engine).await.unwrap();
        assert_eq!(snapshot(&reopened).await, state);
        assert_eq!(reopened.version(), version);
        assert!(reopened.peek(|subs| subs.get("keep").is_some()));
    }

    #[tokio::test]
    async fn an_instance_behind_a_compaction_moves_to_the_new_log() {
        let engine = engine();
        let first = Log::open_compacting_after(engine.clone(), 4_000)
            .await
            .unwrap();
        let second = Log::open_compacting_after(engine.clone(), u64::MAX)
            .await
            .unwrap();
        churn(&first, 40).await;
        assert_ne!(first.current_key(), second.current_key());
        // `second` still follows the deleted first log: its next change
        // finds the log gone, starts again from the head, and is recorded
        // in the current log.
        assert!(second.change(create("late", "l/*")).await.unwrap().0);
        assert_eq!(second.current_key(), first.current_key());
        assert!(first.read(|subs| subs.get("late").is_some()).await.unwrap());
        assert_eq!(snapshot(&first).await, snapshot(&second).await);
    }

    #[tokio::test]
    async fn a_compaction_that_loses_the_version_race_leaves_nothing_behind() {
        let engine = engine();
        let log = Log::open_compacting_after(engine.clone(), u64::MAX)
            .await
            .unwrap();
        let other = Log::open_compacting_after(engine.clone(), u64::MAX)
            .await
            .unwrap();
        assert!(log.change(create("a", "x/*")).await.unwrap().0);
        // A change by `other` takes the next version while `log` prepares a
        // compaction at that same version.
        let mut folded = log.folded.lock().await;
        log.catch_up(&mut folded).await.unwrap();
        assert!(other.change(create("b", "y/*")).await.unwrap().0);
        let before = folded.key.clone();
        log.compact(&mut folded, true).await.unwrap();
        // The change won: no new log, and both see "b".
        assert_eq!(folded.key, before);
        // Unraced, the same compaction moves the log.
        log.compact(&mut folded, true).await.unwrap();
        assert_ne!(folded.key, before);
        drop(folded);
        let lost = Key::trusted(format!(
            "{COMPACTED_PREFIX}{}",
            version_seq(other.version())
        ));
        assert!(matches!(
            engine.head(&lost).await,
            Err(StreamError::NotFound)
        ));
        assert!(log.read(|subs| subs.get("b").is_some()).await.unwrap());
    }

    #[tokio::test]
    async fn a_change_decided_while_another_instance_compacts_lands_in_the_new_log() {
        let engine = engine();
        let first = Log::open_compacting_after(engine.clone(), u64::MAX)
            .await
            .unwrap();
        let second = Log::open_compacting_after(engine.clone(), u64::MAX)
            .await
            .unwrap();
        assert!(first.change(create("a", "x/*")).await.unwrap().0);
        // `first` compacts (and deletes the log `second` has just read)
        // between `second`'s catch-up and its append.
        let mut decisions = 0;
        let result = second
            .change(|subs| {
                decisions += 1;
                if decisions == 1 {
                    let mut folded = first.folded.try_lock().expect("idle");
                    let compacting = first.compact(&mut folded, true);
                    let compacted = futures_util::FutureExt::now_or_never(compacting);
                    assert!(matches!(compacted, Some(Ok(()))), "{compacted:?}");
                }
                subs.create("b", config("y/*"), 0, &[], None)
            })
            .await;
        assert!(result.unwrap().0);
        assert_eq!(decisions, 2, "decided again on the new log");
        assert_eq!(second.current_key(), first.current_key());
        let both = first
            .read(|subs| subs.get("a").is_some() && subs.get("b").is_some())
            .await
            .unwrap();
        assert!(both);
        // A first log made again by a late starter is not followed: the
        // head names the current one.
        let root = Key::trusted(ROOT_PATH.to_owned());
        engine
            .create(&root, json_stream(Bytes::new()))
            .await
            .unwrap();
        let late = Log::open(engine).await.unwrap();
        assert_eq!(late.current_key(), first.current_key());
        assert!(late.peek(|subs| subs.get("b").is_some()));
    }

    #[tokio::test]
    async fn an_instance_on_a_first_log_made_again_empty_starts_from_the_head() {
        let engine = engine();
        let first = Log::open_compacting_after(engine.clone(), 4_000)
            .await
            .unwrap();
        let second = Log::open_compacting_after(engine.clone(), u64::MAX)
            .await
            .unwrap();
        assert!(second.change(create("s", "s/*")).await.unwrap().0);
        churn(&first, 40).await;
        // A late starter made the first log again, empty, after the first
        // compaction deleted it: `second`, which still follows it, reads
        // past its tail, and starts again from the head.
        let root = Key::trusted(ROOT_PATH.to_owned());
        engine
            .create(&root, json_stream(Bytes::new()))
            .await
            .unwrap();
        let seen = second.read(|subs| subs.get("s").is_some()).await.unwrap();
        assert!(seen);
        assert_eq!(second.current_key(), first.current_key());
        assert_eq!(snapshot(&first).await, snapshot(&second).await);
    }
}
