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

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::state::{Op, Refusal, Subscriptions};
use crate::engine::{AppendRequest, BodyType, CreateRequest, Engine, Key, StreamError};
use crate::protocol::{json_read_frame, Offset, ReadFrom};
use crate::storage::StorageError;

/// The internal stream's path.
const LOG_PATH: &str = "/__ds/subscriptions";

/// How often a change is decided again after other instances wrote first.
const MAX_ATTEMPTS: usize = 16;

/// One appended entry: a change's operations under their version.
#[derive(Debug, Serialize)]
struct Entry {
    v: u64,
    ops: Vec<Op>,
}

/// An entry as read back, its operations not yet decoded.
#[derive(Debug, Deserialize)]
struct RawEntry {
    v: u64,
    ops: Vec<serde_json::Value>,
}

/// How far the log is folded.
#[derive(Debug, Default)]
struct Folded {
    offset: u64,
    version: u64,
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

/// The subscription log of one instance.
#[derive(Debug)]
pub(crate) struct Log {
    engine: Arc<Engine>,
    key: Key,
    /// Held while the log is read or a change is decided and written: one
    /// at a time per instance (across instances, the versions take turns).
    folded: tokio::sync::Mutex<Folded>,
    /// The state folded so far, readable without waiting (the append hook's
    /// first look); written only while `folded` is held.
    subs: std::sync::RwLock<Subscriptions>,
    /// The version folded so far, readable without waiting.
    version: std::sync::atomic::AtomicU64,
}

impl Log {
    /// Opens the log, creating its stream on first use, and folds it.
    pub(crate) async fn open(engine: Arc<Engine>) -> Result<Log, StreamError> {
        let key = Key::trusted(LOG_PATH.to_owned());
        let request = CreateRequest {
            content_type: Some("application/json".to_owned()),
            ..CreateRequest::default()
        };
        // A second instance, or a restart, finds it there: fine.
        engine.create(&key, request).await?;
        let log = Log {
            engine,
            key,
            folded: tokio::sync::Mutex::new(Folded::default()),
            subs: std::sync::RwLock::new(Subscriptions::default()),
            version: std::sync::atomic::AtomicU64::new(0),
        };
        log.catch_up(&mut *log.folded.lock().await).await?;
        Ok(log)
    }

    /// Folds what was appended since the last look.
    async fn catch_up(&self, folded: &mut Folded) -> Result<(), StreamError> {
        loop {
            let from = ReadFrom::At(Offset::new(folded.offset));
            let read = self.engine.read(&self.key, from).await?;
            if read.end <= read.start {
                return Ok(());
            }
            let array: Vec<u8> = json_read_frame(read.data)
                .iter()
                .flat_map(|b| b.iter().copied())
                .collect();
            let entries: Vec<RawEntry> = serde_json::from_slice(&array).map_err(|e| {
                StreamError::Storage(StorageError::Corrupt(format!(
                    "the subscription log cannot be read: {e}"
                )))
            })?;
            let mut subs = self.subs.write().unwrap_or_else(|e| e.into_inner());
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
            }
            drop(subs);
            self.version
                .store(folded.version, std::sync::atomic::Ordering::Release);
            folded.offset = read.end;
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
            };
            let body = serde_json::to_vec(&entry).map_err(|e| {
                StreamError::Storage(StorageError::Io(std::io::Error::other(format!(
                    "a subscription change cannot be encoded: {e}"
                ))))
            })?;
            let request = AppendRequest {
                content_type: BodyType::Stream,
                body: Bytes::from(body),
                stream_seq: Some(format!("{:020}", entry.v)),
                ..AppendRequest::default()
            };
            match self.engine.append(&self.key, request).await {
                Ok(_) => {
                    // Version `v` was free, so nothing came between: fold it.
                    // The change is recorded even if this read fails (the
                    // next look folds it), so the caller gets its answer.
                    if let Err(e) = self.catch_up(&mut folded).await {
                        tracing::warn!(error = %e, "a recorded subscription change is not folded yet");
                    }
                    return Ok((answer, entry.ops));
                }
                // Another instance wrote version `v` first.
                Err(StreamError::SeqRegression { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StreamError::Contended.into())
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
}
