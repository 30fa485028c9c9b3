//! Response shapes shared by the operations.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG};
use http::{HeaderMap, Response, StatusCode};

use super::{Inner, ResponseBody};
use crate::engine::ReadResult;
use crate::protocol::{
    etag, etag_matches, is_json, json_read_frame, Offset, STREAM_CLOSED, STREAM_NEXT_OFFSET,
    STREAM_UP_TO_DATE,
};

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

/// The 200 (or 304) of a read that returns data from `result`.
pub(super) fn catch_up_response(
    inner: &Inner,
    result: ReadResult,
    if_none_match: Option<&str>,
) -> Response<ResponseBody> {
    let up_to_date = result.up_to_date();
    let closed = result.closed && up_to_date;
    let tag = etag(
        result.config.id,
        Offset::new(result.start),
        Offset::new(result.end),
        closed,
    );
    let not_modified = if_none_match.is_some_and(|v| etag_matches(v, &tag));
    let mut response = if not_modified {
        empty(StatusCode::NOT_MODIFIED)
    } else if is_json(&result.config.content_type) {
        Response::new(ResponseBody::chunks(json_read_frame(result.data)))
    } else {
        Response::new(ResponseBody::chunks(result.data))
    };
    let headers = response.headers_mut();
    set(headers, CONTENT_TYPE, &result.config.content_type);
    set_offset(headers, STREAM_NEXT_OFFSET, Offset::new(result.end));
    set(headers, ETAG, tag);
    if result.end == result.start && up_to_date {
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
