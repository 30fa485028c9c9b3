//! Reading streams: catch-up reads, reads through fork origins, metadata and
//! subscriptions for live readers.

use std::borrow::Cow;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Engine, Key, ReadResult, StreamError, View};
use crate::protocol::{is_json, ReadFrom};
use crate::storage::{Cut, ReadChunk, StorageError, StreamConfig};

/// The largest range kept for live readers to share.
const RECENT_MAX_BYTES: usize = 256 * 1024;

/// A range live readers read at the tail, kept for the others woken with them.
pub(crate) struct Recent {
    id: u64,
    start: u64,
    tail: u64,
    result: ReadResult,
}

impl Engine {
    /// Reads from `from`, renewing the stream's TTL: at most `max_read_bytes`.
    pub(crate) async fn read(&self, key: &Key, from: ReadFrom) -> Result<ReadResult, StreamError> {
        self.read_from(key, from, false).await
    }

    /// A catch-up read (`GET` without `live`), renewing the stream's TTL: the
    /// answer covers everything up to the tail (at most `max_response_bytes`).
    /// The result holds the first `max_read_bytes`; [`Engine::read_more`]
    /// reads the rest, up to `stop`, as the response body drains.
    pub(crate) async fn catch_up(
        &self,
        key: &Key,
        from: ReadFrom,
    ) -> Result<ReadResult, StreamError> {
        self.read_from(key, from, true).await
    }

    async fn read_from(
        &self,
        key: &Key,
        from: ReadFrom,
        whole: bool,
    ) -> Result<ReadResult, StreamError> {
        self.ready().await?;
        let (handle, view) = self.live_view(key, true).await?;
        let config = view.config.clone().ok_or(StreamError::NotFound)?;
        if view.soft_deleted {
            return Err(StreamError::Gone);
        }
        self.used(&handle, &config);
        let start = match from {
            ReadFrom::Start => 0,
            ReadFrom::Now => view.tail,
            ReadFrom::At(offset) => offset.position(),
        };
        self.read_answer(key, &config, start, &view, whole).await
    }

    /// Reads the bytes at `start` given a view obtained earlier (live reads).
    pub(crate) async fn read_at(
        &self,
        key: &Key,
        config: &Arc<StreamConfig>,
        start: u64,
        view: &View,
    ) -> Result<ReadResult, StreamError> {
        self.read_answer(key, config, start, view, false).await
    }

    /// Reads at most `max_read_bytes` at `start`. With `whole`, the answer
    /// then reaches the tail, or `max_response_bytes` past `start` (a byte
    /// stream), and its rest is read by [`Engine::read_more`]; a JSON stream
    /// further away than that gets the one read (it must end between
    /// records).
    async fn read_answer(
        &self,
        key: &Key,
        config: &Arc<StreamConfig>,
        start: u64,
        view: &View,
        whole: bool,
    ) -> Result<ReadResult, StreamError> {
        if start > view.tail {
            return Err(StreamError::invalid("offset is beyond the stream's tail"));
        }
        let json = is_json(&config.content_type);
        let max = self.limits.max_response_bytes;
        // Where the whole answer ends, when that is known before reading.
        let stop = match (whole, json) {
            (false, _) => None,
            (true, _) if view.tail - start <= max => Some(view.tail),
            (true, true) => None,
            (true, false) => Some(start + max),
        };
        // The tail and `start + max` of a byte stream are both places an
        // answer may end, so the reads before them can cut anywhere.
        let (to, cut) = match stop {
            Some(stop) => (stop, Cut::AnyByte),
            None if json => (view.tail, Cut::RecordBoundary),
            None => (view.tail, Cut::AnyByte),
        };
        let chunk = self
            .read_stitched(key, config, start, to, self.limits.max_read_bytes, cut)
            .await?;
        Ok(ReadResult {
            config: config.clone(),
            start,
            end: chunk.end,
            stop: stop.unwrap_or(chunk.end),
            tail: view.tail,
            closed: view.closed,
            data: chunk.data,
            framed: Arc::default(),
        })
    }

    /// The next bytes of a catch-up answer: from `from` towards `stop`, at
    /// most `max_read_bytes`. Fails with `NotFound` if the stream was deleted
    /// (or replaced by a new one of the same name) since the answer began.
    pub(crate) async fn read_more(
        &self,
        key: &Key,
        config: &Arc<StreamConfig>,
        from: u64,
        stop: u64,
    ) -> Result<ReadChunk, StreamError> {
        // `find`, not the cache alone: with shared storage an idle cached
        // entry may have been dropped while a slow client read the answer.
        let same = |handle: Option<Arc<super::registry::Handle>>| {
            handle.is_some_and(|handle| {
                let view = handle.view.borrow();
                !view.soft_deleted && view.config.as_ref().is_some_and(|c| c.id == config.id)
            })
        };
        if !same(self.find(key).await?) {
            return Err(StreamError::NotFound);
        }
        let step = self.limits.max_read_bytes;
        let read = self
            .read_stitched(key, config, from, stop, step, Cut::AnyByte)
            .await;
        let chunk = match read {
            Ok(chunk) => chunk,
            // A stream deleted during the read may look like missing bytes.
            Err(_) if !same(self.find(key).await?) => return Err(StreamError::NotFound),
            Err(error) => return Err(error),
        };
        // Stream ids are never reused: if the name still holds the same
        // stream after the read, the read saw that stream's bytes.
        if !same(self.find(key).await?) {
            return Err(StreamError::NotFound);
        }
        Ok(chunk)
    }

    /// Reads the bytes at `start` for a live reader woken by `view`: the
    /// readers of one stream woken by the same append share one storage read
    /// (the first reads, the others wait for it and get the same `Bytes`).
    pub(crate) async fn read_live(
        &self,
        key: &Key,
        config: &Arc<StreamConfig>,
        start: u64,
        view: &View,
    ) -> Result<ReadResult, StreamError> {
        let handle = match self.registry.existing(key) {
            Some(handle) if handle.view.receiver_count() > 1 => handle,
            _ => return self.read_at(key, config, start, view).await,
        };
        // Held across the storage read on purpose (single flight); the read
        // is bounded like any other.
        let mut recent = handle.recent.lock().await;
        if let Some(hit) = recent.as_ref().filter(|r| {
            r.id == config.id
                && r.start == start
                && r.tail == view.tail
                && r.result.closed == view.closed
        }) {
            return Ok(hit.result.clone());
        }
        let result = self.read_at(key, config, start, view).await?;
        let size: usize = result.data.iter().map(bytes::Bytes::len).sum();
        *recent = (result.up_to_date() && size <= RECENT_MAX_BYTES).then(|| Recent {
            id: config.id,
            start,
            tail: view.tail,
            result: result.clone(),
        });
        Ok(result)
    }

    /// Reads `from..to` of `key`, following fork origins into sources.
    pub(super) async fn read_stitched(
        &self,
        key: &Key,
        config: &Arc<StreamConfig>,
        from: u64,
        to: u64,
        max_bytes: usize,
        cut: Cut,
    ) -> Result<ReadChunk, StreamError> {
        let mut out = ReadChunk::empty(from);
        let mut budget = max_bytes;
        while out.end < to && budget > 0 {
            // Find the stream that holds position `out.end`.
            let (mut seg_key, mut seg_config, mut seg_to) =
                (Cow::Borrowed(key.as_str()), config.clone(), to);
            while let Some(fork) = seg_config.fork.clone() {
                if out.end >= fork.position {
                    break;
                }
                seg_to = seg_to.min(fork.position);
                // A source can only vanish if the fork was deleted meanwhile.
                let source = self
                    .find(&Key::trusted(fork.source.clone()))
                    .await?
                    .and_then(|h| h.view.borrow().config.clone())
                    .ok_or(StreamError::NotFound)?;
                seg_key = Cow::Owned(fork.source);
                seg_config = source;
            }
            let chunk = self
                .storage
                .read(&seg_key, out.end, seg_to, budget, cut)
                .await
                .map_err(StreamError::storage)?;
            if chunk.end <= out.end {
                return Err(StorageError::Corrupt(format!(
                    "no data at position {} of {seg_key}",
                    out.end
                ))
                .into());
            }
            budget = budget.saturating_sub((chunk.end - out.end) as usize);
            out.end = chunk.end;
            if out.data.is_empty() {
                out.data = chunk.data;
            } else {
                out.data.extend(chunk.data);
            }
            if out.end < seg_to {
                // The backend stopped early: the budget is spent.
                break;
            }
        }
        Ok(out)
    }

    /// A stream's metadata, for `HEAD`. Does not renew a TTL.
    pub(crate) async fn head(&self, key: &Key) -> Result<View, StreamError> {
        self.ready().await?;
        let (_, view) = self.live_view(key, true).await?;
        match view.config {
            None => Err(StreamError::NotFound),
            Some(_) if view.soft_deleted => Err(StreamError::Gone),
            Some(_) => Ok(view),
        }
    }

    /// Subscribes to `key`'s view, to wait for appends, closure or deletion.
    /// A stream with subscribers does not expire.
    pub(crate) async fn subscribe(&self, key: &Key) -> Result<watch::Receiver<View>, StreamError> {
        self.ready().await?;
        let handle = self.find(key).await?.ok_or(StreamError::NotFound)?;
        Ok(handle.view.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::engine::{AppendRequest, BodyType, CreateRequest, Limits};
    use crate::storage::MemoryStorage;

    #[tokio::test]
    async fn readers_woken_by_one_append_share_its_read_and_framing() {
        let storage = Arc::new(MemoryStorage::new());
        let engine = Engine::new(storage, Limits::default(), &CancellationToken::new());
        let key = Key::parse("/s").expect("key");
        engine
            .create(&key, CreateRequest::default())
            .await
            .expect("create");
        let (mut first, mut second) = (
            engine.subscribe(&key).await.expect("subscribe"),
            engine.subscribe(&key).await.expect("subscribe"),
        );
        let append = AppendRequest {
            content_type: BodyType::Stream,
            body: bytes::Bytes::from_static(b"news"),
            ..AppendRequest::default()
        };
        engine.append(&key, append).await.expect("append");
        first.changed().await.expect("woken");
        second.changed().await.expect("woken");
        let (a, b) = (first.borrow().clone(), second.borrow().clone());
        let config = a.config.clone().expect("config");
        let one = engine.read_live(&key, &config, 0, &a).await.expect("read");
        let two = engine.read_live(&key, &config, 0, &b).await.expect("read");
        assert_eq!(one.data.concat(), b"news");
        assert_eq!(
            one.data[0].as_ptr(),
            two.data[0].as_ptr(),
            "one storage read"
        );
        assert!(Arc::ptr_eq(&one.framed, &two.framed), "one framing");
    }
}
