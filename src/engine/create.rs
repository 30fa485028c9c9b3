//! Creating streams and forks (`PUT`), idempotently.

use std::sync::Arc;

use bytes::Bytes;

use super::registry::{Handle, OwnedWriter};
use super::rules::{check_content_type, check_expiry};
use super::{CreateRequest, Created, Engine, ForkRequest, Key, StreamError};
use crate::protocol::DEFAULT_CONTENT_TYPE;
use crate::protocol::{is_json, json_prefix_len, json_to_wire, same_media_type, EmptyArray};
use crate::storage::{
    CreateOutcome, Cut, Expiry, ForkOrigin, StorageError, StreamConfig, StreamRecord,
};

impl Engine {
    /// Creates a stream or a fork (`PUT`).
    pub(crate) async fn create(
        &self,
        key: &Key,
        request: CreateRequest,
    ) -> Result<Created, StreamError> {
        if let Some(ct) = &request.content_type {
            check_content_type(ct)?;
        }
        check_expiry(request.expiry)?;
        self.ready().await?;
        // Expire what is due first, outside any lock, so that creating never has
        // to clean up (and take another stream's lock) while holding this one.
        self.expire(key).await?;
        if let Some(fork) = &request.fork {
            if fork.sub_offset > 0 && fork.offset.is_none() {
                return Err(StreamError::invalid(
                    "Stream-Fork-Sub-Offset requires Stream-Fork-Offset",
                ));
            }
            self.expire(&fork.source).await?;
            return self.create_fork(key, fork.clone(), request).await;
        }
        let content_type = request
            .content_type
            .clone()
            .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned());
        let initial = initial_bytes(&content_type, request.body.clone())?;
        let (handle, mut writer) = self
            .registry
            .lock(key, true)
            .await
            .ok_or(StreamError::NotFound)?;
        if let Err(e) = self.sync_locked(key, &handle, &mut writer).await {
            self.registry.forget_locked(key, &handle, &writer);
            return Err(e);
        }
        let result = match existing_live(&writer) {
            Err(e) => Err(e),
            Ok(Some(existing)) => matches_existing(
                &existing,
                &content_type,
                request.expiry,
                request.closed,
                None,
            ),
            Ok(None) => {
                let config = StreamConfig::new(fastrand::u64(..), content_type, request.expiry);
                let mut record = StreamRecord::new(config, 0);
                record.closed = request.closed;
                self.store_new(key, &handle, &mut writer, record, initial)
                    .await
            }
        };
        self.registry.forget_locked(key, &handle, &writer);
        let seen = handle.failures.load(std::sync::atomic::Ordering::Acquire);
        drop(writer);
        self.durable(&handle, result, seen).await
    }

    /// An idempotent create answers only with what is durable: it waits, with
    /// the writer lock released (a failing write needs it to reload), until
    /// the writes its answer covers are durable, or fails with them.
    async fn durable(
        &self,
        handle: &Arc<Handle>,
        result: Result<Created, StreamError>,
        seen: u64,
    ) -> Result<Created, StreamError> {
        match result {
            Ok(created) if !created.created => {
                self.settled(
                    handle,
                    created.config.id,
                    created.tail,
                    created.closed,
                    seen,
                )
                .await?;
                Ok(created)
            }
            other => other,
        }
    }

    async fn store_new(
        &self,
        key: &Key,
        handle: &Arc<Handle>,
        writer: &mut OwnedWriter,
        record: StreamRecord,
        initial: Bytes,
    ) -> Result<Created, StreamError> {
        self.check_size(key, record.tail + initial.len() as u64)?;
        let outcome = match self
            .storage
            .create(key, record.clone(), initial.clone())
            .await
        {
            Ok(outcome) => outcome,
            // A shared store found the fork source soft-deleted meanwhile.
            Err(StorageError::Conflict { .. }) if record.config.fork.is_some() => {
                return Err(StreamError::Conflict(
                    "the fork source has been deleted".into(),
                ))
            }
            Err(e) => return Err(StreamError::storage(e)),
        };
        match outcome {
            CreateOutcome::Created => {
                let mut record = record;
                let before = record.tail;
                record.tail += initial.len() as u64;
                self.observed(key, record.config.id, before, record.tail);
                let created = Created {
                    created: true,
                    config: Arc::new(record.config.clone()),
                    tail: record.tail,
                    closed: record.closed,
                };
                handle.touch();
                writer.get_mut().record = Some(record);
                handle.publish(writer.get().record.as_ref());
                Ok(created)
            }
            CreateOutcome::Exists(existing) => {
                // Another instance created it first: adopt its record.
                let existing = *existing;
                writer.get_mut().record = Some(existing.clone());
                handle.publish(Some(&existing));
                matches_existing(
                    &existing,
                    &record.config.content_type,
                    record.config.expiry,
                    record.closed,
                    record.config.fork.as_ref(),
                )
            }
        }
    }

    async fn create_fork(
        &self,
        key: &Key,
        fork: ForkRequest,
        request: CreateRequest,
    ) -> Result<Created, StreamError> {
        if fork.source == *key {
            return Err(StreamError::Conflict(
                "a stream cannot be forked from itself".into(),
            ));
        }
        // Lock both streams in key order so concurrent forks cannot deadlock.
        self.find(&fork.source).await?;
        let (target, source) = if *key < fork.source {
            let target = self
                .registry
                .lock(key, true)
                .await
                .ok_or(StreamError::NotFound)?;
            (target, self.registry.lock(&fork.source, false).await)
        } else {
            let source = self.registry.lock(&fork.source, false).await;
            let target = self
                .registry
                .lock(key, true)
                .await
                .ok_or(StreamError::NotFound)?;
            (target, source)
        };
        let (handle, mut writer) = target;
        let mut source = source;
        let synced = match source.as_mut() {
            Some((source_handle, source_writer)) => {
                self.sync_locked(&fork.source, source_handle, source_writer)
                    .await
            }
            None => Ok(()),
        };
        let result = match synced.and(self.sync_locked(key, &handle, &mut writer).await) {
            Ok(()) => {
                self.create_fork_locked(key, &fork, &request, &handle, &mut writer, source)
                    .await
            }
            Err(e) => Err(e),
        };
        self.registry.forget_locked(key, &handle, &writer);
        let seen = handle.failures.load(std::sync::atomic::Ordering::Acquire);
        drop(writer);
        self.durable(&handle, result, seen).await
    }

    async fn create_fork_locked(
        &self,
        key: &Key,
        fork: &ForkRequest,
        request: &CreateRequest,
        handle: &Arc<Handle>,
        writer: &mut OwnedWriter,
        source: Option<(Arc<Handle>, OwnedWriter)>,
    ) -> Result<Created, StreamError> {
        // An existing fork is compared with what it was created with, whatever
        // has happened to its source since.
        if let Some(existing) = existing_live(writer)? {
            let origin = existing.config.fork.as_ref();
            let anchor = fork.offset.or(origin.map(|o| o.anchor)).unwrap_or_default();
            let requested = ForkOrigin::new(fork.source.as_str(), anchor, fork.sub_offset, 0);
            let content_type = request
                .content_type
                .clone()
                .unwrap_or_else(|| existing.config.content_type.clone());
            let expiry = match request.expiry {
                Expiry::Never => existing.config.expiry,
                own => own,
            };
            return matches_existing(
                &existing,
                &content_type,
                expiry,
                request.closed,
                Some(&requested),
            );
        }
        let (_, mut source_writer) = source.ok_or(StreamError::NotFound)?;
        let source_record = source_writer
            .get()
            .record
            .clone()
            .ok_or(StreamError::NotFound)?;
        if source_record.soft_deleted {
            return Err(StreamError::Conflict(
                "the fork source has been deleted".into(),
            ));
        }
        let source_ct = &source_record.config.content_type;
        let content_type = match &request.content_type {
            Some(ct) if !same_media_type(ct, source_ct) => {
                return Err(StreamError::Conflict(format!(
                    "content type {ct} differs from the source's {source_ct}"
                )))
            }
            Some(ct) => ct.clone(),
            None => source_ct.clone(),
        };
        let anchor = fork.offset.unwrap_or(source_record.tail);
        if anchor > source_record.tail {
            return Err(StreamError::invalid(
                "Stream-Fork-Offset is beyond the source stream's tail",
            ));
        }
        let position = if fork.sub_offset == 0 {
            anchor
        } else {
            let config = Arc::new(source_record.config.clone());
            let next = self
                .read_stitched(
                    &fork.source,
                    &config,
                    anchor,
                    source_record.tail,
                    1,
                    Cut::RecordBoundary,
                )
                .await?;
            let available = next.data.concat();
            let prefix = if is_json(source_ct) {
                json_prefix_len(&available, fork.sub_offset).map(|n| n as u64)
            } else {
                Some(fork.sub_offset).filter(|&n| n <= available.len() as u64)
            };
            anchor
                + prefix.ok_or_else(|| {
                    StreamError::invalid(
                        "Stream-Fork-Sub-Offset points past the next data boundary",
                    )
                })?
        };
        let expiry = match (request.expiry, source_record.config.expiry) {
            (Expiry::Never, inherited) => inherited,
            (own, _) => own,
        };
        let initial = initial_bytes(&content_type, request.body.clone())?;
        let config = StreamConfig::new(fastrand::u64(..), content_type, expiry).with_fork(
            ForkOrigin::new(fork.source.as_str(), anchor, fork.sub_offset, position),
        );
        let mut record = StreamRecord::new(config, position);
        record.closed = request.closed;
        let created = self.store_new(key, handle, writer, record, initial).await?;
        if created.created {
            source_writer.get_mut().ref_count += 1;
        }
        Ok(created)
    }
}

/// The live record under a writer lock, refusing a soft-deleted one (409).
fn existing_live(writer: &OwnedWriter) -> Result<Option<StreamRecord>, StreamError> {
    match writer.get().record.as_ref() {
        Some(r) if r.soft_deleted => Err(StreamError::Conflict(
            "a deleted stream at this path is still referenced by forks".into(),
        )),
        other => Ok(other.cloned()),
    }
}

/// The stored bytes of a create body.
fn initial_bytes(content_type: &str, body: Bytes) -> Result<Bytes, StreamError> {
    if is_json(content_type) && !body.is_empty() {
        Ok(json_to_wire(&body, EmptyArray::Allow)?.0)
    } else {
        Ok(body)
    }
}

/// Decides an idempotent create against an existing stream: 200 or 409.
fn matches_existing(
    existing: &StreamRecord,
    content_type: &str,
    expiry: Expiry,
    closed: bool,
    fork: Option<&ForkOrigin>,
) -> Result<Created, StreamError> {
    let config = &existing.config;
    let mismatch = if !same_media_type(&config.content_type, content_type) {
        Some("content type")
    } else if config.expiry != expiry {
        Some("TTL or expiry")
    } else if existing.closed != closed {
        Some("closure status")
    } else if config
        .fork
        .as_ref()
        .map(|f| (&f.source, f.anchor, f.sub_offset))
        != fork.map(|f| (&f.source, f.anchor, f.sub_offset))
    {
        Some("fork origin")
    } else {
        None
    };
    match mismatch {
        Some(what) => Err(StreamError::Conflict(format!(
            "a stream already exists at this path with a different {what}"
        ))),
        None => Ok(Created {
            created: false,
            config: Arc::new(config.clone()),
            tail: existing.tail,
            closed: existing.closed,
        }),
    }
}
