//! Live reads: long-poll and Server-Sent Events.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};
use tokio::sync::watch;
use tokio::time::Instant;

use super::dispatch::{reader_permit, ReaderSlot};
use super::problem::Problem;
use super::responses::catch_up_response;
use super::{Inner, ResponseBody};
use crate::engine::{Key, ReadResult, StreamError, View};
use crate::protocol::sse::{put_control_event, put_data_event};
use crate::protocol::{
    incomplete_utf8_suffix, is_sse_text, Control, Offset, ReadFrom, SseEncoding, STREAM_CLOSED,
    STREAM_CURSOR, STREAM_NEXT_OFFSET, STREAM_SSE_DATA_ENCODING, STREAM_UP_TO_DATE,
};
use crate::storage::StreamConfig;

/// Subscribes to `key` and reads from `from`; the subscription is taken first so
/// that no append between the read and the wait can be missed.
async fn start(
    inner: &Inner,
    key: &Key,
    from: ReadFrom,
) -> Result<(watch::Receiver<View>, ReadResult), Problem> {
    let rx = inner.engine.subscribe(key).await?;
    let read = inner.engine.read(key, from).await?;
    Ok((rx, read))
}

/// `GET ?live=long-poll`.
pub(crate) async fn long_poll(
    inner: Arc<Inner>,
    key: Key,
    from: ReadFrom,
    cursor: Option<String>,
) -> Result<Response<ResponseBody>, Problem> {
    let _permit = reader_permit(&inner)?;
    let (mut rx, first) = start(&inner, &key, from).await?;
    let cursor = inner.cursor.cursor(cursor.as_deref()).to_string();
    if first.end > first.start {
        return Ok(with_cursor(
            catch_up_response(&inner, &key, first, None),
            &cursor,
        ));
    }
    let (config, position) = (first.config.clone(), first.start);
    if first.closed {
        return Ok(no_content(first.tail, true, None));
    }
    let deadline = Instant::now() + inner.long_poll_timeout;
    loop {
        let changed = tokio::select! {
            woken = tokio::time::timeout_at(deadline, rx.changed()) => woken.ok(),
            // Shutting down: answer as if the wait had timed out.
            () = inner.shutdown.cancelled() => None,
        };
        match changed {
            None => {
                let tail = rx.borrow().tail.max(position);
                return Ok(no_content(tail, false, Some(&cursor)));
            }
            Some(Err(_)) => return Err(StreamError::NotFound.into()),
            Some(Ok(())) => {
                let view = rx.borrow_and_update().clone();
                check_same_stream(&view, &config)?;
                if view.tail > position {
                    let read = inner
                        .engine
                        .read_live(&key, &config, position, &view)
                        .await?;
                    return Ok(with_cursor(
                        catch_up_response(&inner, &key, read, None),
                        &cursor,
                    ));
                }
                if view.closed {
                    return Ok(no_content(view.tail, true, None));
                }
            }
        }
    }
}

fn check_same_stream(view: &View, config: &StreamConfig) -> Result<(), StreamError> {
    match &view.config {
        Some(c) if c.id == config.id && view.soft_deleted => Err(StreamError::Gone),
        Some(c) if c.id == config.id => Ok(()),
        _ => Err(StreamError::NotFound),
    }
}

fn with_cursor(mut response: Response<ResponseBody>, cursor: &str) -> Response<ResponseBody> {
    if let Ok(value) = HeaderValue::from_str(cursor) {
        response.headers_mut().insert(STREAM_CURSOR, value);
    }
    response
}

/// The 204 of a long-poll that found nothing new.
fn no_content(tail: u64, closed: bool, cursor: Option<&str>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(STREAM_UP_TO_DATE, HeaderValue::from_static("true"));
    if let Ok(offset) = HeaderValue::from_str(&Offset::new(tail).to_string()) {
        headers.insert(STREAM_NEXT_OFFSET, offset);
    }
    if closed {
        headers.insert(STREAM_CLOSED, HeaderValue::from_static("true"));
    }
    if let Some(cursor) = cursor.and_then(|c| HeaderValue::from_str(c).ok()) {
        headers.insert(STREAM_CURSOR, cursor);
    }
    response
}

struct SseState {
    inner: Arc<Inner>,
    key: Key,
    config: Arc<StreamConfig>,
    position: u64,
    rx: watch::Receiver<View>,
    encoding: SseEncoding,
    /// A JSON stream (its reads are framed as arrays).
    json: bool,
    cursor: String,
    /// Ends the response for a reconnect; made once, not per wait.
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Shutdown, likewise registered once.
    shutdown: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    sent_control: bool,
    done: bool,
    /// Held for as long as the response streams.
    _permit: ReaderSlot,
}

/// `GET ?live=sse`.
pub(crate) async fn sse(
    inner: Arc<Inner>,
    key: Key,
    from: ReadFrom,
    cursor: Option<String>,
) -> Result<Response<ResponseBody>, Problem> {
    let permit = reader_permit(&inner)?;
    let (rx, first) = start(&inner, &key, from).await?;
    let encoding = if is_sse_text(&first.config.content_type) {
        SseEncoding::Text
    } else {
        SseEncoding::Base64
    };
    let state = SseState {
        cursor: inner.cursor.cursor(cursor.as_deref()).to_string(),
        deadline: Box::pin(tokio::time::sleep(inner.sse_reconnect_interval)),
        shutdown: Box::pin(inner.shutdown.clone().cancelled_owned()),
        config: first.config.clone(),
        position: first.start,
        inner,
        key,
        rx,
        encoding,
        json: crate::protocol::is_json(&first.config.content_type),
        sent_control: false,
        done: false,
        _permit: permit,
    };
    let events = futures_util::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        match next_event(&mut state).await {
            Ok(Some(frame)) => Some((Ok(frame), state)),
            Ok(None) => None,
            Err(error) => {
                state.done = true;
                Some((Err(Box::new(error) as super::BoxError), state))
            }
        }
    });
    let mut response = Response::new(ResponseBody::stream(events));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if encoding == SseEncoding::Base64 {
        headers.insert(STREAM_SSE_DATA_ENCODING, HeaderValue::from_static("base64"));
    }
    Ok(response)
}

/// The next frame(s) of an SSE response, or `None` when it should end.
async fn next_event(state: &mut SseState) -> Result<Option<Bytes>, StreamError> {
    loop {
        let view = state.rx.borrow_and_update().clone();
        if check_same_stream(&view, &state.config).is_err() {
            return Ok(None);
        }
        if state.position < view.tail {
            let read = state
                .inner
                .engine
                .read_live(&state.key, &state.config, state.position, &view)
                .await?;
            // The readers woken by one append share `read`: the first frames
            // it, the others reuse the same bytes.
            let final_bytes = view.closed && read.end >= view.tail;
            let (end, event) = read
                .framed
                .get_or_init(|| data_event(&read, final_bytes, state.encoding, state.json))
                .clone();
            if end > state.position {
                let at_tail = end >= view.tail;
                let closed = view.closed && at_tail;
                // One frame: the shared data event (copied, which costs far
                // less than framing it again), then where to go on.
                let mut frame = BytesMut::with_capacity(event.len() + 192);
                frame.extend_from_slice(&event);
                put_control(&mut frame, state, end, at_tail, closed);
                state.position = end;
                state.sent_control = true;
                state.done = closed;
                return Ok(Some(frame.freeze()));
            }
        }
        if view.closed {
            state.done = true;
            return Ok(Some(control(state, view.tail, true, true)));
        }
        if !state.sent_control {
            state.sent_control = true;
            return Ok(Some(control(state, state.position, true, false)));
        }
        tokio::select! {
            // An append is the usual wake-up: look at it first and leave the
            // timer and the shutdown watch alone.
            biased;
            changed = state.rx.changed() => {
                if changed.is_err() {
                    return Ok(None);
                }
            }
            () = state.deadline.as_mut() => return Ok(None),
            () = state.shutdown.as_mut() => {
                // Shutting down: a last control event, then the response ends
                // and the client reconnects elsewhere from that offset.
                state.done = true;
                let up_to_date = state.position >= view.tail;
                return Ok(Some(control(state, state.position, up_to_date, false)));
            }
        }
    }
}

/// The data event of `read` and the position it ends at: a character split
/// at the end of a text read is held back until its rest arrives (unless the
/// stream is closed there).
fn data_event(
    read: &ReadResult,
    final_bytes: bool,
    encoding: SseEncoding,
    json: bool,
) -> (u64, Bytes) {
    let (mut data, mut end) = (read.data.clone(), read.end);
    if encoding == SseEncoding::Text && !json && !final_bytes {
        let mut hold = incomplete_utf8_suffix(&data) as u64;
        end -= hold;
        while hold > 0 {
            let Some(last) = data.last_mut() else { break };
            let cut = hold.min(last.len() as u64);
            last.truncate(last.len() - cut as usize);
            hold -= cut;
            if last.is_empty() {
                data.pop();
            }
        }
    }
    if end <= read.start {
        return (end, Bytes::new());
    }
    let pieces = if json {
        crate::protocol::json_read_frame(data)
    } else {
        data
    };
    let size: usize = pieces.iter().map(Bytes::len).sum();
    let mut frame = BytesMut::with_capacity(size * 4 / 3 + 64);
    put_data_event(&mut frame, &pieces, encoding);
    (end, frame.freeze())
}

fn control(state: &SseState, next: u64, up_to_date: bool, closed: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(160);
    put_control(&mut out, state, next, up_to_date, closed);
    out.freeze()
}

fn put_control(out: &mut BytesMut, state: &SseState, next: u64, up_to_date: bool, closed: bool) {
    let next_offset = Offset::new(next).to_bytes();
    let next_offset = std::str::from_utf8(&next_offset).unwrap_or_default();
    put_control_event(
        out,
        &Control {
            next_offset,
            cursor: (!closed).then_some(state.cursor.as_str()),
            up_to_date,
            closed,
        },
    );
}
