//! Appending to and closing streams (`POST`), with idempotent producers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::producer::{decide, ProducerDecision};
use super::registry::Handle;
use super::rules::{check_content_type, check_producer};
use super::{AppendKind, AppendRequest, Appended, BodyType, Engine, Key, StreamError};
use crate::protocol::{is_json, json_to_wire, same_media_type, EmptyArray, Offset};
use crate::storage::{Append, ProducerTuple, StorageError, StreamRecord};

/// How often an append is decided again after another instance wrote first.
const MAX_ATTEMPTS: usize = 8;

/// Why one try at an append did not succeed.
enum Attempt {
    /// The protocol's answer, or a failure.
    Refused(StreamError),
    /// Storage held something else; decide again.
    Conflict,
}

/// Whether a refusal may come from a cache that another instance's writes
/// made stale: the protocol's answers about the stream's state, never a
/// storage failure (whose write may have happened: it is not tried again).
fn could_be_stale(error: &StreamError) -> bool {
    matches!(
        error,
        StreamError::NotFound
            | StreamError::Gone
            | StreamError::Conflict(_)
            | StreamError::Closed { .. }
            | StreamError::ContentTypeMismatch { .. }
            | StreamError::SeqRegression { .. }
            | StreamError::StaleEpoch { .. }
            | StreamError::NewEpochNotAtZero
            | StreamError::SequenceGap { .. }
            | StreamError::StreamTooLarge { .. }
    )
}

impl From<StreamError> for Attempt {
    fn from(error: StreamError) -> Self {
        Attempt::Refused(error)
    }
}

impl Engine {
    /// Appends to (and possibly closes) a stream (`POST`).
    pub(crate) async fn append(
        &self,
        key: &Key,
        request: AppendRequest,
    ) -> Result<Appended, StreamError> {
        let has_body = !request.body.is_empty();
        if !has_body && !request.close {
            return Err(StreamError::invalid(
                "an append needs a non-empty body (or Stream-Closed: true to close)",
            ));
        }
        if has_body {
            match &request.content_type {
                BodyType::Missing => {
                    return Err(StreamError::invalid(
                        "an append with a body needs a Content-Type",
                    ))
                }
                BodyType::Given(ct) => check_content_type(ct)?,
                BodyType::Stream => {}
            }
        }
        if let Some(producer) = &request.producer {
            check_producer(producer)?;
        }
        self.ready().await?;
        // With shared storage a refusal, or a duplicate's answer, decided on
        // the cache is decided again on the stored record before it is given.
        let mut fresh = !self.shared;
        for _ in 0..MAX_ATTEMPTS {
            match self.append_once(key, &request, has_body, fresh).await {
                Ok(appended) => return Ok(appended),
                Err(Attempt::Refused(e)) if !fresh && could_be_stale(&e) => {
                    self.refresh(key, false).await;
                }
                Err(Attempt::Refused(e)) => return Err(e),
                Err(Attempt::Conflict) => {}
            }
            fresh = true;
        }
        Err(StreamError::Contended)
    }

    /// One try at an append: decided on the cached record, made conditional on
    /// it. `Conflict` means storage held something else (another instance
    /// wrote): the record has been reloaded, and the append can be decided
    /// again.
    async fn append_once(
        &self,
        key: &Key,
        request: &AppendRequest,
        has_body: bool,
        fresh: bool,
    ) -> Result<Appended, Attempt> {
        let (handle, view) = self.live_view(key, false).await?;
        let config = view.config.ok_or(StreamError::NotFound)?;
        if view.soft_deleted {
            return Err(StreamError::Gone.into());
        }
        let given = match &request.content_type {
            BodyType::Given(ct) => ct.as_str(),
            _ => config.content_type.as_str(),
        };
        let type_matches = same_media_type(given, &config.content_type);
        // JSON validation and flattening is CPU work: do it before taking the lock.
        let json = (has_body && type_matches && is_json(&config.content_type))
            .then(|| json_to_wire(&request.body, EmptyArray::Reject).map(|(wire, _)| wire));
        let (handle, mut writer) = self
            .registry
            .lock_handle(key, handle)
            .await
            .ok_or(StreamError::NotFound)?;
        if handle.stale.load(Ordering::Acquire) {
            self.reload_locked(key, &handle, &mut writer).await?;
        }
        // Decide with the record borrowed under the lock: no copy on the hot path.
        let (append, tail) = {
            let record = match writer.get().record.as_ref() {
                Some(r) if r.config.id == config.id && r.soft_deleted => {
                    return Err(StreamError::Gone.into())
                }
                Some(r) if r.config.id == config.id => r,
                _ => return Err(StreamError::NotFound.into()),
            };
            if record.closed && !fresh {
                // Its final tail and closer may have moved on elsewhere.
                drop(writer);
                self.refresh(key, false).await;
                return Err(Attempt::Conflict);
            }
            if record.closed {
                let record = record.clone();
                let seen = handle.failures.load(Ordering::Acquire);
                drop(writer);
                return Ok(self
                    .answer_closed(&handle, &record, request, has_body, seen)
                    .await?);
            }
            let data = if has_body {
                if !type_matches {
                    return Err(StreamError::ContentTypeMismatch {
                        expected: config.content_type.clone(),
                        given: given.to_owned(),
                    }
                    .into());
                }
                match json {
                    Some(wire) => wire.map_err(StreamError::from)?,
                    None => request.body.clone(),
                }
            } else {
                Bytes::new()
            };
            let mut append = Append::new(record.config.id, record.tail, data);
            if let Some(p) = &request.producer {
                let state = record.producers.get(&p.id).copied();
                match decide(state, p.epoch, p.seq) {
                    ProducerDecision::Accept(state) => {
                        append = append.with_producer(p.id.clone(), state);
                    }
                    ProducerDecision::Duplicate { .. } if !fresh => {
                        // The highest accepted sequence may have moved on elsewhere.
                        drop(writer);
                        self.refresh(key, false).await;
                        return Err(Attempt::Conflict);
                    }
                    ProducerDecision::Duplicate { last_seq } => {
                        let (id, tail) = (record.config.id, record.tail);
                        let seen = handle.failures.load(Ordering::Acquire);
                        drop(writer);
                        self.settled(&handle, id, tail, false, seen).await?;
                        return Ok(Appended {
                            kind: AppendKind::Duplicate,
                            tail,
                            closed: false,
                            producer: Some((p.epoch, last_seq)),
                        });
                    }
                    ProducerDecision::StaleEpoch { current } => {
                        return Err(StreamError::StaleEpoch { current }.into())
                    }
                    ProducerDecision::NewEpochNotAtZero => {
                        return Err(StreamError::NewEpochNotAtZero.into())
                    }
                    ProducerDecision::Gap { expected, received } => {
                        return Err(StreamError::SequenceGap { expected, received }.into())
                    }
                }
            }
            if let Some(given) = &request.stream_seq {
                if let Some(last) = &record.stream_seq {
                    if given.as_bytes() <= last.as_bytes() {
                        return Err(StreamError::SeqRegression {
                            last: last.clone(),
                            given: given.clone(),
                        }
                        .into());
                    }
                }
                append = append.with_stream_seq(given.clone());
            }
            if request.close {
                let by = request
                    .producer
                    .as_ref()
                    .map(|p| ProducerTuple::new(p.id.clone(), p.epoch, p.seq));
                append = append.closing(by);
            }
            if self.shared && self.limits.max_stream_bytes == u64::MAX {
                // Nothing here depends on the exact tail (no size limit to
                // check): other instances' appends need not make this one
                // conflict, as long as what it was decided on is unchanged.
                let prior = request
                    .producer
                    .as_ref()
                    .and_then(|p| record.producers.get(&p.id).copied());
                append = append.at_tail(prior, record.stream_seq.clone());
            }
            (append, record.tail)
        };
        self.check_size(key, tail + append.data.len() as u64)?;
        let closed = append.close.is_some();
        let stream_id = append.stream_id;
        if let Some(r) = writer.get_mut().record.as_mut() {
            r.apply(&append);
        }
        // Ordered now, durable later: the lock is released before the wait so a
        // backend with group commit can batch this stream's next appends.
        let pending = self.storage.append(key, append);
        drop(writer);
        let new_tail = match pending.await {
            Ok(tail) => tail,
            Err(e) => return Err(self.append_failed(key, e).await),
        };
        self.used(&handle, &config);
        self.observed(key, stream_id, tail, new_tail);
        // Wake live readers only if there are any: a reader that subscribes
        // later reads the updated view itself (the count is read under the
        // view's write lock, which its first `borrow` waits for).
        handle.view.send_if_modified(|v| {
            if v.config.as_ref().is_some_and(|c| c.id == stream_id) {
                v.tail = v.tail.max(new_tail);
                v.closed |= closed;
                handle.view.receiver_count() > 0
            } else {
                false
            }
        });
        Ok(Appended {
            kind: AppendKind::Written,
            tail: new_tail,
            closed,
            producer: request.producer.as_ref().map(|p| (p.epoch, p.seq)),
        })
    }

    /// What a failed storage append means: with shared storage, a conflict
    /// (another instance wrote first) is learnt and decided again; anything
    /// else reloads the stream's state and is the answer.
    async fn append_failed(&self, key: &Key, error: StorageError) -> Attempt {
        let conflict = matches!(
            error,
            StorageError::Conflict { .. } | StorageError::NotFound
        );
        if conflict && self.shared {
            // Whatever waited on this write (a duplicate, a close) must not
            // wait on: the retry may land elsewhere, or be refused.
            self.refresh(key, true).await;
            return Attempt::Conflict;
        }
        tracing::error!(stream = %key, error = %error, "append failed; reloading stream state");
        self.refresh(key, true).await;
        Attempt::Refused(StreamError::storage(error))
    }

    /// Answers an append to a closed stream (section 5.2.1): the retry of the
    /// closing producer request is a duplicate, a stale epoch is fenced, a
    /// close-only request is idempotent, anything else is refused.
    async fn answer_closed(
        &self,
        handle: &Arc<Handle>,
        record: &StreamRecord,
        request: &AppendRequest,
        has_body: bool,
        seen: u64,
    ) -> Result<Appended, StreamError> {
        if let Some(p) = &request.producer {
            let state = record.producers.get(&p.id).copied();
            if let ProducerDecision::StaleEpoch { current } = decide(state, p.epoch, p.seq) {
                return Err(StreamError::StaleEpoch { current });
            }
            let closer = record
                .closed_by
                .as_ref()
                .is_some_and(|t| t.id == p.id && t.epoch == p.epoch && t.seq == p.seq);
            if closer {
                self.settled(handle, record.config.id, record.tail, record.closed, seen)
                    .await?;
                return Ok(Appended {
                    kind: AppendKind::Duplicate,
                    tail: record.tail,
                    closed: true,
                    producer: Some((p.epoch, state.map_or(p.seq, |s| s.last_seq))),
                });
            }
        }
        if has_body {
            return Err(StreamError::Closed {
                next_offset: Offset::new(record.tail),
            });
        }
        self.settled(handle, record.config.id, record.tail, record.closed, seen)
            .await?;
        Ok(Appended {
            kind: AppendKind::AlreadyClosed,
            tail: record.tail,
            closed: true,
            producer: None,
        })
    }

    /// Waits until everything in `record` (tail and closure) is durable, so that a
    /// duplicate is never acknowledged before the original append it stands for.
    /// `seen` is the handle's failure count read under the writer lock with the
    /// record: a write that fails after it, and any write it covers did, ends
    /// the wait with an error.
    pub(super) async fn settled(
        &self,
        handle: &Arc<Handle>,
        id: u64,
        tail: u64,
        closed: bool,
        seen: u64,
    ) -> Result<(), StreamError> {
        let failures = seen;
        let mut rx = handle.view.subscribe();
        loop {
            {
                let view = rx.borrow_and_update();
                if view.config.as_ref().map(|c| c.id) != Some(id) {
                    return Err(StreamError::NotFound);
                }
                if view.tail >= tail && (view.closed || !closed) {
                    return Ok(());
                }
            }
            if handle.failures.load(Ordering::Acquire) != failures {
                return Err(StorageError::Io(std::io::Error::other(
                    "the write this request repeats did not complete",
                ))
                .into());
            }
            if rx.changed().await.is_err() {
                return Err(StreamError::NotFound);
            }
        }
    }

    /// Reloads one stream's cached state from storage after a conflicting or
    /// (`failed`) a failed write: then every duplicate waiting on the failed
    /// write gives up. If the reload fails too, the cache is marked stale and
    /// the waiters are told all the same, so none waits forever.
    async fn refresh(&self, key: &Key, failed: bool) {
        if let Some((handle, mut writer)) = self.registry.lock(key, false).await {
            if failed {
                handle.failures.fetch_add(1, Ordering::AcqRel);
            }
            if let Err(e) = self.reload_locked(key, &handle, &mut writer).await {
                tracing::error!(stream = %key, error = %e, "could not reload stream state");
            }
        }
    }
}
