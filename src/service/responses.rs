//! Response shapes shared by the operations.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG};
use http::{HeaderMap, Response, StatusCode};

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use http_body::SizeHint;

use super::{BoxError, Inner, ResponseBody};
use crate::engine::{Engine, Key, ReadResult, StreamError};
use crate::protocol::{
    etag, etag_matches, is_json, json_read_frame, Offset, STREAM_CLOSED, STREAM_NEXT_OFFSET,
    STREAM_UP_TO_DATE,
};
use crate::storage::{ReadChunk, StreamConfig};

pub(super) fn allowed() -> HeaderValue {
    HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE, OPTIONS")
}

pub(super) fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::default());
    *response.status_mut() = status;
    response
}

/// Sets an offset header without formatting machinery.
pub(super) fn set_offset(headers: &mut HeaderMap, name: http::HeaderName, offset: Offset) {
    if let Ok(value) = HeaderValue::from_bytes(&offset.to_bytes()) {
        headers.insert(name, value);
    }
}

pub(super) fn set(headers: &mut HeaderMap, name: http::HeaderName, value: impl ToString) {
    if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
        headers.insert(name, value);
    }
}

/// The 200 (or 304) of a read that returns data from `result` (with the rest
/// of the answer, up to `result.stop`, read from `key` as the body drains).
pub(super) fn catch_up_response(
    inner: &Inner,
    key: &Key,
    result: ReadResult,
    if_none_match: Option<&str>,
) -> Response<ResponseBody> {
    let up_to_date = result.up_to_date();
    let closed = result.closed && up_to_date;
    let tag = etag(
        result.config.id,
        Offset::new(result.start),
        Offset::new(result.stop),
        closed,
    );
    let not_modified = if_none_match.is_some_and(|v| etag_matches(v, &tag));
    let (config, start, stop) = (result.config.clone(), result.start, result.stop);
    let mut response = if not_modified {
        empty(StatusCode::NOT_MODIFIED)
    } else if result.stop > result.end {
        Response::new(CatchUp::body(inner.engine.clone(), key, result))
    } else if is_json(&result.config.content_type) {
        Response::new(ResponseBody::chunks(json_read_frame(result.data)))
    } else {
        Response::new(ResponseBody::chunks(result.data))
    };
    let headers = response.headers_mut();
    set(headers, CONTENT_TYPE, &config.content_type);
    set_offset(headers, STREAM_NEXT_OFFSET, Offset::new(stop));
    set(headers, ETAG, tag);
    if stop == start && up_to_date {
        // An empty answer at the tail must be revalidated (the ETag changes with
        // new data and with closure), or a cache would hide both.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    } else {
        headers.insert(CACHE_CONTROL, inner.cache_policy.header());
    }
    if up_to_date {
        headers.insert(STREAM_UP_TO_DATE, HeaderValue::from_static("true"));
    }
    if closed {
        headers.insert(STREAM_CLOSED, HeaderValue::from_static("true"));
    }
    response
}

type ReadMore = Pin<Box<dyn Future<Output = Result<ReadChunk, StreamError>> + Send>>;

/// The body of a catch-up answer longer than one storage read: the first
/// read's bytes, then one read after another as the socket drains, so an
/// answer of any length holds about one read's bytes in memory at a time.
struct CatchUp {
    engine: Arc<Engine>,
    key: Key,
    config: Arc<StreamConfig>,
    /// Where the next read starts.
    at: u64,
    stop: u64,
    json: bool,
    ready: VecDeque<Bytes>,
    reading: Option<ReadMore>,
}

impl CatchUp {
    fn body(engine: Arc<Engine>, key: &Key, result: ReadResult) -> ResponseBody {
        let json = is_json(&result.config.content_type);
        let len = result.stop - result.start;
        // A JSON answer is `[`, the records without the last one's trailing
        // comma, and `]`: one byte more than the records.
        let hint = if json {
            SizeHint::with_exact(len + 1)
        } else {
            SizeHint::with_exact(len)
        };
        let mut ready: VecDeque<Bytes> = result.data.into();
        if json {
            ready.push_front(Bytes::from_static(b"["));
        }
        let body = CatchUp {
            engine,
            key: key.clone(),
            config: result.config,
            at: result.end,
            stop: result.stop,
            json,
            ready,
            reading: None,
        };
        ResponseBody::stream_with_hint(body, hint)
    }

    /// Queues a read's bytes; at the end of a JSON answer, drops the last
    /// record's trailing comma and closes the array.
    fn take(&mut self, chunk: ReadChunk) -> Result<(), BoxError> {
        if chunk.end <= self.at {
            return Err(
                format!("no bytes at position {} of {}", self.at, self.key.as_str()).into(),
            );
        }
        self.at = chunk.end;
        self.ready
            .extend(chunk.data.into_iter().filter(|b| !b.is_empty()));
        if self.json && self.at >= self.stop {
            match self.ready.back_mut() {
                Some(last) if last.last() == Some(&b',') => last.truncate(last.len() - 1),
                _ => return Err("a JSON stream's bytes did not end with a record".into()),
            }
            self.ready.push_back(Bytes::from_static(b"]"));
        }
        Ok(())
    }
}

impl Stream for CatchUp {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(bytes) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(bytes)));
            }
            if this.at >= this.stop {
                return Poll::Ready(None);
            }
            let reading = this.reading.get_or_insert_with(|| {
                let (engine, key, config) =
                    (this.engine.clone(), this.key.clone(), this.config.clone());
                let (at, stop) = (this.at, this.stop);
                Box::pin(async move { engine.read_more(&key, &config, at, stop).await })
            });
            let read = std::task::ready!(reading.as_mut().poll(cx));
            this.reading = None;
            let taken = match read {
                // Deleted (or replaced) meanwhile: an everyday event.
                Err(StreamError::NotFound) => {
                    tracing::debug!(stream = %this.key.as_str(), "stream deleted during its catch-up answer");
                    Err(BoxError::from(StreamError::NotFound))
                }
                Err(error) => {
                    tracing::warn!(stream = %this.key.as_str(), %error, "catch-up answer cut short");
                    Err(BoxError::from(error))
                }
                Ok(chunk) => this.take(chunk).inspect_err(|error| {
                    tracing::warn!(stream = %this.key.as_str(), %error, "catch-up answer cut short");
                }),
            };
            if let Err(error) = taken {
                // Ends the answer early: hyper closes the connection, and the
                // client, short of `Content-Length`, sees it cut short.
                this.at = this.stop;
                return Poll::Ready(Some(Err(error)));
            }
        }
    }
}
