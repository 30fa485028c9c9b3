//! One request from its path and method to an operation: the stream key, the
//! authorizer, the admission limits, and the operation's handler.

use std::sync::Arc;

use bytes::Bytes;
use http::header::ALLOW;
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use tokio::sync::OwnedSemaphorePermit;

use super::operations::{closed_flag, fork_source};
use super::problem::Problem;
use super::request::{header_str, parse_query};
use super::responses::{allowed, empty};
use super::{operations, BoxError, Inner, ResponseBody};
use crate::auth::{AuthorizeRequest, Operation, ReadMode};
use crate::engine::Key;
use crate::protocol::STREAM_FORKED_FROM;

pub(super) async fn handle<B>(
    inner: Arc<Inner>,
    request: Request<B>,
) -> Result<Response<ResponseBody>, Problem>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    #[cfg(feature = "subscriptions")]
    if let Some(hub) = &inner.hub {
        if super::subscriptions::is_control(parts.uri.path()) {
            return super::subscriptions::handle(inner.clone(), hub.clone(), parts, body).await;
        }
    }
    let key = Key::parse(parts.uri.path())?;
    // The authorizer is handed shared parts; without one, nothing is shared.
    let shared: Arc<Parts>;
    let parts = match &inner.authorizer {
        None => &parts,
        Some(authorizer) => {
            shared = Arc::new(parts);
            let body_empty = body.size_hint().exact() == Some(0);
            for operation in operations(&inner, &shared, &key, body_empty)? {
                let request = AuthorizeRequest::new(shared.clone(), operation);
                if let Err(refusal) = authorizer.authorize(request).await {
                    return Err(Problem::refused(refusal));
                }
            }
            &*shared
        }
    };
    // Creates and appends take their write slot once their body is in.
    let _slot = match parts.method {
        Method::DELETE => Some(write_slot(&inner)?),
        _ => None,
    };
    match parts.method {
        Method::PUT => operations::create(inner, key, parts, body).await,
        Method::POST => operations::append(inner, key, parts, body).await,
        Method::GET => operations::read(inner, key, parts).await,
        Method::HEAD => operations::head(inner, key).await,
        Method::DELETE => {
            inner.engine.delete(&key).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        Method::OPTIONS => {
            let mut response = empty(StatusCode::NO_CONTENT);
            response.headers_mut().insert(ALLOW, allowed());
            Ok(response)
        }
        _ => Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("{} is not a Durable Streams operation", parts.method),
        )
        .header(ALLOW, "GET, HEAD, PUT, POST, DELETE, OPTIONS")),
    }
}

/// A short name of the operation a request asks for (for logs and metrics).
pub(super) fn operation_name(method: &Method, query: Option<&str>) -> &'static str {
    match *method {
        Method::PUT => "create",
        Method::POST => "append",
        Method::HEAD => "head",
        Method::DELETE => "delete",
        Method::GET => match query.unwrap_or_default() {
            q if q.contains("live=sse") => "read_sse",
            q if q.contains("live=long-poll") => "read_long_poll",
            _ => "read",
        },
        _ => "other",
    }
}

/// A slot among the writes in progress, or 503 with `Retry-After`.
pub(super) fn write_slot(inner: &Inner) -> Result<OwnedSemaphorePermit, Problem> {
    inner
        .inflight_writes
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "TOO_MANY_WRITES",
                "too many writes in progress; retry shortly",
            )
            .header(http::header::RETRY_AFTER, 1)
        })
}

/// A live reader's slot; counted in the metrics while held.
pub(super) struct ReaderSlot {
    _permit: OwnedSemaphorePermit,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Metrics>,
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.live_reader(-1);
        }
    }
}

/// A slot among the live readers, or 429 with `Retry-After`.
pub(super) fn reader_permit(inner: &Inner) -> Result<ReaderSlot, Problem> {
    let permit = inner
        .live_readers
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_LIVE_READERS",
                "too many live readers; retry shortly",
            )
            .header(http::header::RETRY_AFTER, 1)
        })?;
    #[cfg(feature = "metrics")]
    if let Some(metrics) = &inner.metrics {
        metrics.live_reader(1);
    }
    Ok(ReaderSlot {
        _permit: permit,
        #[cfg(feature = "metrics")]
        metrics: inner.metrics.clone(),
    })
}

/// The operations a request asks the authorizer about, in order: a fork is a
/// read of its source and then the creation of its target.
fn operations(
    inner: &Inner,
    parts: &Parts,
    key: &Key,
    body_empty: bool,
) -> Result<Vec<Operation>, Problem> {
    let path = key.as_str().to_owned();
    Ok(match parts.method {
        Method::PUT => match header_str(&parts.headers, &STREAM_FORKED_FROM)? {
            Some(value) => {
                let source = fork_source(inner, value)?.as_str().to_owned();
                vec![
                    Operation::Read {
                        path: source.clone(),
                        mode: ReadMode::ForkSource,
                    },
                    Operation::Fork { path, source },
                ]
            }
            None => vec![Operation::Create { path }],
        },
        Method::POST => {
            let closes = closed_flag(&parts.headers);
            if closes && body_empty {
                vec![Operation::Close { path }]
            } else {
                vec![Operation::Append { path, closes }]
            }
        }
        Method::GET => {
            let mode = match parse_query(parts.uri.query())?.live.as_deref() {
                Some("long-poll") => ReadMode::LongPoll,
                Some("sse") => ReadMode::Sse,
                _ => ReadMode::CatchUp,
            };
            vec![Operation::Read { path, mode }]
        }
        Method::HEAD => vec![Operation::Head { path }],
        Method::DELETE => vec![Operation::Delete { path }],
        _ => Vec::new(),
    })
}
