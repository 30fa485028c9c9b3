//! Each operation: its request headers and body in, one engine call, its
//! response headers out. The protocol's rules live in the engine; what is here
//! is HTTP: header parsing and response building.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, HOST, IF_NONE_MATCH, LOCATION};
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};

use super::dispatch::write_slot;
use super::problem::Problem;
use super::request::{header_str, parse_query};
use super::responses::{catch_up_response, empty, set, set_offset};
use super::{live, upload};
use super::{BoxError, Inner, ResponseBody};
use crate::engine::{AppendKind, AppendRequest, BodyType, CreateRequest, ForkRequest, Key};
use crate::protocol::{
    format_rfc3339, is_true_flag, parse_expires_at, parse_producer, parse_sub_offset, parse_ttl,
    HeaderError, Offset, ReadFrom, PRODUCER_EPOCH, PRODUCER_ID, PRODUCER_SEQ, STREAM_CLOSED,
    STREAM_EXPIRES_AT, STREAM_FORKED_FROM, STREAM_FORK_OFFSET, STREAM_FORK_SUB_OFFSET,
    STREAM_NEXT_OFFSET, STREAM_SEQ, STREAM_TTL,
};
use crate::storage::Expiry;

/// `PUT`: create a stream or a fork.
pub(super) async fn create<B>(
    inner: Arc<Inner>,
    key: Key,
    parts: &Parts,
    body: B,
) -> Result<Response<ResponseBody>, Problem>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let headers = &parts.headers;
    let content_type = header_str(headers, &CONTENT_TYPE)?.map(str::to_owned);
    let ttl = header_str(headers, &STREAM_TTL)?
        .map(parse_ttl)
        .transpose()
        .map_err(bad)?;
    let expires_at = header_str(headers, &STREAM_EXPIRES_AT)?
        .map(parse_expires_at)
        .transpose()
        .map_err(bad)?;
    let expiry = match (ttl, expires_at) {
        (Some(_), Some(_)) => {
            return Err(Problem::bad_request(
                "Stream-TTL and Stream-Expires-At must not be used together",
            ))
        }
        (Some(ttl), None) => Expiry::Ttl(ttl),
        (None, Some(at)) => Expiry::At(at),
        (None, None) => Expiry::Never,
    };
    let fork_offset = header_str(headers, &STREAM_FORK_OFFSET)?
        .map(|v| v.parse::<Offset>())
        .transpose()
        .map_err(|_| Problem::bad_request("Stream-Fork-Offset is not a valid offset"))?;
    let sub_offset = header_str(headers, &STREAM_FORK_SUB_OFFSET)?
        .map(parse_sub_offset)
        .transpose()
        .map_err(bad)?;
    let fork = match header_str(headers, &STREAM_FORKED_FROM)? {
        Some(value) => Some(ForkRequest {
            source: fork_source(&inner, value)?,
            offset: fork_offset.map(Offset::position),
            sub_offset: sub_offset.unwrap_or(0),
        }),
        None if fork_offset.is_some() || sub_offset.is_some() => {
            return Err(Problem::bad_request(
                "Stream-Fork-Offset and Stream-Fork-Sub-Offset require Stream-Forked-From",
            ))
        }
        None => None,
    };
    let closed = closed_flag(headers);
    let location = location(&inner, parts, &key);
    // The body first, then a write slot: a slow uploader holds no slot.
    let (body, _held) = upload::receive(&inner, headers, body).await?;
    let _slot = write_slot(&inner)?;
    let created = inner
        .engine
        .create(
            &key,
            CreateRequest {
                content_type,
                expiry,
                closed,
                body,
                fork,
            },
        )
        .await?;
    let mut response = empty(if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    });
    let headers = response.headers_mut();
    set(headers, CONTENT_TYPE, &created.config.content_type);
    set_offset(headers, STREAM_NEXT_OFFSET, Offset::new(created.tail));
    if created.closed {
        headers.insert(STREAM_CLOSED, HeaderValue::from_static("true"));
    }
    if created.created {
        if let Some(location) = location {
            set(headers, LOCATION, location);
        }
    }
    Ok(response)
}

/// `POST`: append, close, or both.
pub(super) async fn append<B>(
    inner: Arc<Inner>,
    key: Key,
    parts: &Parts,
    body: B,
) -> Result<Response<ResponseBody>, Problem>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let headers = &parts.headers;
    let producer = parse_producer(
        header_str(headers, &PRODUCER_ID)?,
        header_str(headers, &PRODUCER_EPOCH)?,
        header_str(headers, &PRODUCER_SEQ)?,
    )
    .map_err(bad)?;
    let stream_seq = header_str(headers, &STREAM_SEQ)?.map(str::to_owned);
    let close = closed_flag(headers);
    let content_type = match header_str(headers, &CONTENT_TYPE)? {
        Some(ct) => BodyType::Given(ct.to_owned()),
        None => BodyType::Missing,
    };
    let (body, _held) = upload::receive(&inner, headers, body).await?;
    let _slot = write_slot(&inner)?;
    let has_body = !body.is_empty();
    let with_producer = producer.is_some();
    let appended = inner
        .engine
        .append(
            &key,
            AppendRequest {
                content_type,
                body,
                close,
                stream_seq,
                producer,
            },
        )
        .await?;
    let status = if appended.kind == AppendKind::Written && with_producer && has_body {
        StatusCode::OK
    } else {
        StatusCode::NO_CONTENT
    };
    let mut response = empty(status);
    let headers = response.headers_mut();
    set_offset(headers, STREAM_NEXT_OFFSET, Offset::new(appended.tail));
    if appended.closed {
        headers.insert(STREAM_CLOSED, HeaderValue::from_static("true"));
    }
    if let Some((epoch, seq)) = appended.producer {
        set(headers, PRODUCER_EPOCH, epoch);
        set(headers, PRODUCER_SEQ, seq);
    }
    Ok(response)
}

/// `HEAD`: metadata.
pub(super) async fn head(inner: Arc<Inner>, key: Key) -> Result<Response<ResponseBody>, Problem> {
    let view = inner.engine.head(&key).await?;
    let Some(config) = view.config.clone() else {
        return Err(crate::engine::StreamError::NotFound.into());
    };
    let mut response = empty(StatusCode::OK);
    let headers = response.headers_mut();
    set(headers, CONTENT_TYPE, &config.content_type);
    set_offset(headers, STREAM_NEXT_OFFSET, Offset::new(view.tail));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match config.expiry {
        Expiry::Ttl(secs) => set(headers, STREAM_TTL, secs),
        Expiry::At(at) => set(headers, STREAM_EXPIRES_AT, format_rfc3339(at)),
        _ => {}
    }
    if view.closed {
        headers.insert(STREAM_CLOSED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// `GET`: catch-up, long-poll or SSE.
pub(super) async fn read(
    inner: Arc<Inner>,
    key: Key,
    parts: &Parts,
) -> Result<Response<ResponseBody>, Problem> {
    let query = parse_query(parts.uri.query())?;
    let from = match query.offset.as_deref() {
        Some(value) => Some(ReadFrom::parse(value).map_err(|_| {
            Problem::bad_request(format!(
                "offset {value:?} is not -1, now, or an offset returned by this server"
            ))
        })?),
        None => None,
    };
    match query.live.as_deref() {
        None => {
            let from = from.unwrap_or(ReadFrom::Start);
            let result = inner.engine.catch_up(&key, from).await?;
            let if_none_match = parts
                .headers
                .get(IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok());
            let mut response = catch_up_response(
                &inner,
                &key,
                result,
                if_none_match.filter(|_| from != ReadFrom::Now),
            );
            if from == ReadFrom::Now {
                let headers = response.headers_mut();
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                headers.remove(ETAG);
            }
            Ok(response)
        }
        Some(mode @ ("long-poll" | "sse")) => {
            let from = from.ok_or_else(|| {
                Problem::bad_request(format!("live={mode} requires an offset parameter"))
            })?;
            if mode == "sse" {
                live::sse(inner, key, from, query.cursor).await
            } else {
                live::long_poll(inner, key, from, query.cursor).await
            }
        }
        Some(other) => Err(Problem::bad_request(format!(
            "live={other:?} is not a read mode; use long-poll or sse"
        ))),
    }
}

fn bad(error: HeaderError) -> Problem {
    Problem::bad_request(error.to_string())
}

pub(super) fn closed_flag(headers: &HeaderMap) -> bool {
    headers
        .get(STREAM_CLOSED)
        .is_some_and(|v| is_true_flag(v.as_bytes()))
}

/// The stream a `Stream-Forked-From` value names: the path of a URL on this
/// server (or the URL itself), which must lie under the mount point.
pub(super) fn fork_source(inner: &Inner, value: &str) -> Result<Key, Problem> {
    let path = match value.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => value,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let relative = match inner.base_path.as_deref() {
        None => path,
        Some(base) => match path.strip_prefix(base) {
            Some(rest) if rest.starts_with('/') => rest,
            _ => {
                return Err(Problem::new(
                    StatusCode::NOT_FOUND,
                    "STREAM_NOT_FOUND",
                    format!("the fork source {path:?} is not a stream under {base}"),
                ))
            }
        },
    };
    Ok(Key::parse(relative)?)
}

/// The absolute URL of a stream. The scheme is the request URI's (HTTP/2),
/// or the one the host put in the request's extensions as an
/// `http::uri::Scheme` (a host serving TLS does), else `http`; the host is
/// `Host`, or the URI's authority. With `Builder::trust_forwarded_headers`,
/// a proxy's `Forwarded` (RFC 7239) or `X-Forwarded-Proto` /
/// `X-Forwarded-Host` come first.
fn location(inner: &Inner, parts: &Parts, key: &Key) -> Option<String> {
    absolute_url(inner, parts, key.as_str())
}

/// The absolute URL of `path` (below the mount, with a leading `/`), as
/// [`location`] makes it.
pub(super) fn absolute_url(inner: &Inner, parts: &Parts, path: &str) -> Option<String> {
    let forwarded = if inner.trust_forwarded_headers {
        forwarded(&parts.headers)
    } else {
        Forwarded::default()
    };
    let host = forwarded
        .host
        .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()))
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))?;
    let scheme = forwarded
        .proto
        .or_else(|| parts.uri.scheme_str())
        .or_else(|| {
            parts
                .extensions
                .get::<http::uri::Scheme>()
                .map(|s| s.as_str())
        })
        .unwrap_or("http");
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let base = inner.base_path.as_deref().unwrap_or("");
    Some(format!("{scheme}://{host}{base}{path}"))
}

/// What a proxy says the client asked for.
#[derive(Default)]
struct Forwarded<'a> {
    proto: Option<&'a str>,
    host: Option<&'a str>,
}

/// The first hop's `proto` and `host` from `Forwarded`, else
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (first values).
fn forwarded(headers: &HeaderMap) -> Forwarded<'_> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut found = Forwarded::default();
    if let Some(first) = text("forwarded").and_then(|v| v.split(',').next()) {
        for pair in first.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=') {
                let value = value.trim().trim_matches('"');
                match name.trim().to_ascii_lowercase().as_str() {
                    "proto" => found.proto = Some(value),
                    "host" => found.host = Some(value),
                    _ => {}
                }
            }
        }
    }
    fn first(value: &str) -> &str {
        value.split(',').next().map(str::trim).unwrap_or_default()
    }
    if found.proto.is_none() {
        found.proto = text("x-forwarded-proto").map(first);
    }
    if found.host.is_none() {
        found.host = text("x-forwarded-host").map(first);
    }
    // A host value must be a valid authority, or it is ignored.
    found.host = found
        .host
        .filter(|h| !h.is_empty() && h.parse::<http::uri::Authority>().is_ok());
    found.proto = found.proto.filter(|p| !p.is_empty());
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_are_read_first_hop_first() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "forwarded",
            "for=1.2.3.4;proto=https;host=\"streams.example\", for=5.6.7.8"
                .parse()
                .unwrap(),
        );
        headers.insert("x-forwarded-proto", "http".parse().unwrap());
        let f = forwarded(&headers);
        assert_eq!((f.proto, f.host), (Some("https"), Some("streams.example")));
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-proto", "https, http".parse().unwrap());
        headers.insert("x-forwarded-host", "a.example:8443".parse().unwrap());
        let f = forwarded(&headers);
        assert_eq!((f.proto, f.host), (Some("https"), Some("a.example:8443")));
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-host", "bad host/".parse().unwrap());
        assert_eq!(forwarded(&headers).host, None);
    }
}
