//! The tower `Service`: HTTP in, protocol operations on the engine, HTTP out.

mod body;
mod future;
mod live;
mod problem;
mod request;

pub use body::{BoxError, ResponseBody};
pub use future::ResponseFuture;

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, HOST, IF_NONE_MATCH,
    LOCATION, X_CONTENT_TYPE_OPTIONS,
};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthorizeRequest, Authorizer, Operation, ReadMode};
use crate::engine::{AppendKind, AppendRequest, CreateRequest, Engine, ForkRequest, ReadResult};
use crate::protocol::{
    etag, etag_matches, format_rfc3339, is_json, is_true_flag, is_valid_content_type,
    json_read_frame, parse_expires_at, parse_producer, parse_sub_offset, parse_ttl, CursorClock,
    Offset, ReadFrom, PRODUCER_EPOCH, PRODUCER_ID, PRODUCER_SEQ, STREAM_CLOSED, STREAM_EXPIRES_AT,
    STREAM_FORKED_FROM, STREAM_FORK_OFFSET, STREAM_FORK_SUB_OFFSET, STREAM_NEXT_OFFSET, STREAM_SEQ,
    STREAM_TTL, STREAM_UP_TO_DATE,
};
use crate::storage::{Expiry, MemoryStorage, Storage};
use problem::Problem;
use request::{fork_source_key, header_str, parse_query, stream_key};

/// `Cache-Control` of catch-up reads that return stream data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CachePolicy {
    /// `public, max-age=60, stale-while-revalidate=300`: shared streams behind a CDN.
    #[default]
    Public,
    /// `private, max-age=60, stale-while-revalidate=300`: user-specific streams.
    Private,
    /// `no-store`: nothing is cached anywhere.
    NoStore,
}

impl CachePolicy {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            CachePolicy::Public => "public, max-age=60, stale-while-revalidate=300",
            CachePolicy::Private => "private, max-age=60, stale-while-revalidate=300",
            CachePolicy::NoStore => "no-store",
        })
    }
}

/// A setting that `build()` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// `base_path` must start with `/`, not end with `/`, and be a valid path.
    #[error("invalid base_path {0:?}: it must start with '/' and must not end with '/'")]
    BasePath(String),
    /// A duration setting is zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// A size setting is zero.
    #[error("{0} must be greater than zero")]
    ZeroSize(&'static str),
}

/// Configures a [`DurableStreamsService`].
///
/// ```
/// use std::time::Duration;
/// use tower_durable_streams::{DurableStreamsService, MemoryStorage};
///
/// let service = DurableStreamsService::builder()
///     .storage(MemoryStorage::new())
///     .base_path("/v1/stream")
///     .long_poll_timeout(Duration::from_secs(30))
///     .build()
///     .expect("valid settings");
/// # let _ = service;
/// ```
#[derive(Clone)]
#[must_use]
pub struct Builder {
    storage: Option<Arc<dyn Storage>>,
    authorizer: Option<Arc<dyn Authorizer>>,
    shutdown: Option<CancellationToken>,
    base_path: Option<String>,
    long_poll_timeout: Duration,
    sse_reconnect_interval: Duration,
    cursor_interval: Duration,
    max_append_bytes: usize,
    max_read_bytes: usize,
    cache_policy: CachePolicy,
    expiry_sweep_interval: Duration,
    max_stream_bytes: Option<u64>,
    max_live_readers: usize,
    max_inflight_writes: usize,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Metrics>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            storage: None,
            authorizer: None,
            shutdown: None,
            base_path: None,
            long_poll_timeout: Duration::from_secs(30),
            sse_reconnect_interval: Duration::from_secs(60),
            cursor_interval: Duration::from_secs(20),
            max_append_bytes: 64 * 1024 * 1024,
            max_read_bytes: 1024 * 1024,
            cache_policy: CachePolicy::Public,
            expiry_sweep_interval: Duration::from_secs(1),
            max_stream_bytes: None,
            max_live_readers: 10_000,
            max_inflight_writes: 1_024,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("storage", &self.storage)
            .field("authorizer", &self.authorizer.is_some())
            .field("base_path", &self.base_path)
            .field("long_poll_timeout", &self.long_poll_timeout)
            .field("sse_reconnect_interval", &self.sse_reconnect_interval)
            .field("max_append_bytes", &self.max_append_bytes)
            .field("max_read_bytes", &self.max_read_bytes)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// Where streams are kept. Defaults to a new [`MemoryStorage`].
    pub fn storage(mut self, storage: impl Storage) -> Self {
        self.storage = Some(Arc::new(storage));
        self
    }

    /// Where streams are kept, as a shared handle. Defaults to a new [`MemoryStorage`].
    pub fn storage_arc(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The host's per-stream authorization decision, asked before every
    /// operation (see [`auth`](crate::auth)). A refusal is answered with 401 or
    /// 403 and nothing is written. Defaults to none: everything is allowed.
    pub fn authorize(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// A token that, once cancelled, ends live reads promptly with their
    /// protocol answers: pending long-polls answer 204, SSE responses send a
    /// last control event and close. Cancel it when the host shuts down.
    /// Defaults to a token nobody cancels.
    pub fn shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(token);
        self
    }

    /// The path prefix the service is mounted under, such as `/v1/stream`.
    /// Request paths that start with it have it removed before they name a
    /// stream, `Stream-Forked-From` values are read relative to it, and
    /// `Location` headers include it. Defaults to none.
    pub fn base_path(mut self, base_path: impl Into<String>) -> Self {
        self.base_path = Some(base_path.into());
        self
    }

    /// How long a long-poll read waits for data before answering 204.
    /// Defaults to 30 seconds.
    pub fn long_poll_timeout(mut self, timeout: Duration) -> Self {
        self.long_poll_timeout = timeout;
        self
    }

    /// How long an SSE response stays open before the server closes it so the
    /// client reconnects (section 10.2). Defaults to 60 seconds.
    pub fn sse_reconnect_interval(mut self, interval: Duration) -> Self {
        self.sse_reconnect_interval = interval;
        self
    }

    /// The interval of live-read cursors (section 10.1). Defaults to 20 seconds.
    pub fn cursor_interval(mut self, interval: Duration) -> Self {
        self.cursor_interval = interval;
        self
    }

    /// The largest request body accepted by `PUT` and `POST`; larger ones get 413.
    /// Defaults to 64 MiB.
    pub fn max_append_bytes(mut self, bytes: usize) -> Self {
        self.max_append_bytes = bytes;
        self
    }

    /// The most stream bytes one read response carries; a longer range is served
    /// over several requests. Defaults to 1 MiB.
    pub fn max_read_bytes(mut self, bytes: usize) -> Self {
        self.max_read_bytes = bytes;
        self
    }

    /// `Cache-Control` of catch-up reads. Defaults to [`CachePolicy::Public`].
    pub fn cache_policy(mut self, policy: CachePolicy) -> Self {
        self.cache_policy = policy;
        self
    }

    /// The longest a stream may grow, in bytes (inherited fork bytes count); the
    /// create or append that would cross it gets 413 and nothing is written.
    /// Defaults to no limit.
    pub fn max_stream_bytes(mut self, bytes: u64) -> Self {
        self.max_stream_bytes = Some(bytes);
        self
    }

    /// The most long-poll and SSE reads served at once; more get 429 with
    /// `Retry-After` instead of queueing. Defaults to 10,000.
    pub fn max_live_readers(mut self, readers: usize) -> Self {
        self.max_live_readers = readers;
        self
    }

    /// The most creates, appends and deletes in progress at once; more get 503
    /// with `Retry-After` instead of queueing. Defaults to 1,024.
    pub fn max_inflight_writes(mut self, writes: usize) -> Self {
        self.max_inflight_writes = writes;
        self
    }

    /// Counts requests, latency, appends, bytes and live readers into
    /// `metrics` (feature `metrics`). Defaults to none.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// How often expired streams that nobody touches are removed.
    /// Defaults to 1 second.
    pub fn expiry_sweep_interval(mut self, interval: Duration) -> Self {
        self.expiry_sweep_interval = interval;
        self
    }

    /// Checks the settings and builds the service.
    pub fn build(self) -> Result<DurableStreamsService, BuildError> {
        if let Some(base) = &self.base_path {
            let valid = base.starts_with('/')
                && !base.ends_with('/')
                && !base.contains(['?', '#'])
                && base.parse::<http::uri::PathAndQuery>().is_ok();
            if !valid {
                return Err(BuildError::BasePath(base.clone()));
            }
        }
        for (name, value) in [
            ("long_poll_timeout", self.long_poll_timeout),
            ("sse_reconnect_interval", self.sse_reconnect_interval),
            ("cursor_interval", self.cursor_interval),
            ("expiry_sweep_interval", self.expiry_sweep_interval),
        ] {
            if value.is_zero() {
                return Err(BuildError::ZeroDuration(name));
            }
        }
        for (name, value) in [
            ("max_append_bytes", self.max_append_bytes),
            ("max_read_bytes", self.max_read_bytes),
            ("max_live_readers", self.max_live_readers),
            ("max_inflight_writes", self.max_inflight_writes),
        ] {
            if value == 0 {
                return Err(BuildError::ZeroSize(name));
            }
        }
        let storage = self
            .storage
            .unwrap_or_else(|| Arc::new(MemoryStorage::new()));
        Ok(DurableStreamsService {
            inner: Arc::new(Inner {
                engine: Engine::new(storage, self.max_read_bytes)
                    .with_max_stream_bytes(self.max_stream_bytes.unwrap_or(u64::MAX)),
                live_readers: Arc::new(Semaphore::new(self.max_live_readers)),
                #[cfg(feature = "metrics")]
                metrics: self.metrics,
                inflight_writes: Arc::new(Semaphore::new(self.max_inflight_writes)),
                authorizer: self.authorizer,
                shutdown: self.shutdown.unwrap_or_default(),
                sweeper: std::sync::Once::new(),
                expiry_sweep_interval: self.expiry_sweep_interval,
                base_path: self.base_path,
                long_poll_timeout: self.long_poll_timeout,
                sse_reconnect_interval: self.sse_reconnect_interval,
                cursor: CursorClock::new(self.cursor_interval),
                max_append_bytes: self.max_append_bytes,
                cache_policy: self.cache_policy,
            }),
        })
    }
}

/// The Durable Streams protocol as a tower [`Service`](tower_service::Service).
///
/// Cheap to clone (all clones share one engine). Accepts any request body that
/// yields [`Bytes`]; answers every request, including refusals, with a response
/// (`Error = Infallible`).
///
/// ```
/// use http::Request;
/// use http_body_util::Full;
/// use bytes::Bytes;
/// use tower::ServiceExt;
/// use tower_durable_streams::DurableStreamsService;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let service = DurableStreamsService::builder().build().unwrap();
/// let create = Request::put("/greetings")
///     .header("content-type", "text/plain")
///     .body(Full::new(Bytes::from("hello")))
///     .unwrap();
/// let response = service.clone().oneshot(create).await.unwrap();
/// assert_eq!(response.status(), 201);
/// # }
/// ```
#[derive(Clone)]
pub struct DurableStreamsService {
    inner: Arc<Inner>,
}

impl fmt::Debug for DurableStreamsService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableStreamsService")
            .field("engine", &self.inner.engine)
            .field("base_path", &self.inner.base_path)
            .finish_non_exhaustive()
    }
}

impl DurableStreamsService {
    /// Starts configuring a service.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Loads the storage's streams now instead of on the first request, and
    /// reports a storage that cannot be opened.
    pub async fn ready(&self) -> Result<(), crate::engine::EngineError> {
        self.inner.engine.ready().await
    }
}

pub(crate) struct Inner {
    engine: Engine,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Metrics>,
    live_readers: Arc<Semaphore>,
    inflight_writes: Arc<Semaphore>,
    authorizer: Option<Arc<dyn Authorizer>>,
    shutdown: CancellationToken,
    sweeper: std::sync::Once,
    expiry_sweep_interval: Duration,
    base_path: Option<String>,
    long_poll_timeout: Duration,
    sse_reconnect_interval: Duration,
    cursor: CursorClock,
    max_append_bytes: usize,
    cache_policy: CachePolicy,
}

impl Inner {
    /// Starts, once, the task that removes expired streams nobody touches. It
    /// holds only a weak reference and ends when the service is dropped.
    fn start_sweeper(self: &Arc<Self>) {
        self.sweeper.call_once(|| {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let weak = Arc::downgrade(self);
            let period = self.expiry_sweep_interval;
            runtime.spawn(async move {
                let start = tokio::time::Instant::now() + period;
                let mut ticker = tokio::time::interval_at(start, period);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    // Hold the service only while there is work, so dropping it
                    // releases its storage at once.
                    let due = match weak.upgrade() {
                        Some(inner) => inner.engine.due_for_expiry(),
                        None => return,
                    };
                    if due.is_empty() {
                        continue;
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    inner.engine.expire_all(&due).await;
                    tracing::debug!(expired = due.len(), "removed expired streams");
                }
            });
        });
    }
}

impl<B> tower_service::Service<Request<B>> for DurableStreamsService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ResponseFuture {
        let inner = self.inner.clone();
        inner.start_sweeper();
        ResponseFuture::new(async move {
            let started = std::time::Instant::now();
            let logging = tracing::enabled!(
                target: "tower_durable_streams::access",
                tracing::Level::DEBUG
            );
            let method = request.method().clone();
            let path = if logging {
                request.uri().path().to_owned()
            } else {
                String::new()
            };
            let operation = operation_name(&method, request.uri().query());
            let request_bytes = http_body::Body::size_hint(request.body()).exact();
            #[cfg(feature = "metrics")]
            let metrics = inner.metrics.clone();
            let mut response = match handle(inner, request).await {
                Ok(response) => response,
                Err(problem) => problem.into_response(),
            };
            let elapsed = started.elapsed();
            // One structured line per request; no header is logged, so no
            // credential can leak into logs.
            if logging {
                tracing::debug!(
                    target: "tower_durable_streams::access",
                    %method,
                    stream = %path,
                    operation,
                    status = response.status().as_u16(),
                    latency_us = elapsed.as_micros() as u64,
                    request_bytes,
                    response_bytes = http_body::Body::size_hint(response.body()).exact(),
                    "request"
                );
            }
            #[cfg(feature = "metrics")]
            if let Some(metrics) = &metrics {
                metrics.request(operation, response.status().as_u16(), elapsed);
                if operation == "append" && response.status().is_success() {
                    metrics.appended(request_bytes.unwrap_or(0) as usize);
                }
                if operation.starts_with("read") && response.status() == StatusCode::OK {
                    metrics.read(
                        http_body::Body::size_hint(response.body())
                            .exact()
                            .unwrap_or(0),
                    );
                }
            }
            let headers = response.headers_mut();
            headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            headers.insert(
                CROSS_ORIGIN_RESOURCE_POLICY,
                HeaderValue::from_static("cross-origin"),
            );
            response
        })
    }
}

async fn handle<B>(
    inner: Arc<Inner>,
    request: Request<B>,
) -> Result<Response<ResponseBody>, Problem>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let key = stream_key(parts.uri.path(), inner.base_path.as_deref())?;
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
    let _write = match parts.method {
        Method::PUT | Method::POST | Method::DELETE => Some(write_permit(&inner)?),
        _ => None,
    };
    match parts.method {
        Method::PUT => create(inner, key, parts, body).await,
        Method::POST => append(inner, key, parts, body).await,
        Method::GET => read(inner, key, parts).await,
        Method::HEAD => head(inner, key).await,
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
fn operation_name(method: &Method, query: Option<&str>) -> &'static str {
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
fn write_permit(inner: &Inner) -> Result<OwnedSemaphorePermit, Problem> {
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
pub(crate) struct ReaderSlot {
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
pub(crate) fn reader_permit(inner: &Inner) -> Result<ReaderSlot, Problem> {
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
    key: &str,
    body_empty: bool,
) -> Result<Vec<Operation>, Problem> {
    let path = key.to_owned();
    Ok(match parts.method {
        Method::PUT => match header_str(&parts.headers, &STREAM_FORKED_FROM)? {
            Some(source) => {
                let source = fork_source_key(source, inner.base_path.as_deref())?;
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

const CROSS_ORIGIN_RESOURCE_POLICY: http::HeaderName =
    http::HeaderName::from_static("cross-origin-resource-policy");

fn allowed() -> HeaderValue {
    HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE, OPTIONS")
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::default());
    *response.status_mut() = status;
    response
}

/// Sets an offset header without formatting machinery.
fn set_offset(headers: &mut HeaderMap, name: http::HeaderName, offset: Offset) {
    if let Ok(value) = HeaderValue::from_bytes(&offset.to_bytes()) {
        headers.insert(name, value);
    }
}

fn set(headers: &mut HeaderMap, name: http::HeaderName, value: impl ToString) {
    if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
        headers.insert(name, value);
    }
}

/// Reads a request body up to the configured limit (413 beyond it).
async fn body_bytes<B>(inner: &Inner, headers: &HeaderMap, body: B) -> Result<Bytes, Problem>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("request body exceeds {} bytes", inner.max_append_bytes),
        )
    };
    let declared = header_str(headers, &CONTENT_LENGTH)?.and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > inner.max_append_bytes as u64) {
        return Err(too_large());
    }
    let failed = |e: BoxError| {
        // The limit may be ours or a host layer's (tower-http's
        // RequestBodyLimitLayer): look for it anywhere in the chain.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
        while let Some(error) = cause {
            if error.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            cause = error.source();
        }
        Problem::bad_request(format!("could not read the request body: {e}"))
    };
    // Most bodies arrive as one data frame: hand that out as is, and only
    // concatenate when there are more.
    let mut body = std::pin::pin!(Limited::new(body, inner.max_append_bytes));
    let Some(first) = next_data(body.as_mut()).await.map_err(failed)? else {
        return Ok(Bytes::new());
    };
    let Some(second) = next_data(body.as_mut()).await.map_err(failed)? else {
        return Ok(first);
    };
    let mut joined = BytesMut::with_capacity(first.len() + second.len());
    joined.extend_from_slice(&first);
    joined.extend_from_slice(&second);
    while let Some(more) = next_data(body.as_mut()).await.map_err(failed)? {
        joined.extend_from_slice(&more);
    }
    Ok(joined.freeze())
}

/// The next data frame of a body; trailers carry nothing to append.
async fn next_data<B>(mut body: std::pin::Pin<&mut B>) -> Result<Option<Bytes>, B::Error>
where
    B: http_body::Body<Data = Bytes>,
{
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

fn content_type(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    match header_str(headers, &CONTENT_TYPE)? {
        Some(ct) if !is_valid_content_type(ct) => Err(Problem::bad_request(format!(
            "Content-Type {ct:?} is not a valid media type"
        ))),
        other => Ok(other.map(str::to_owned)),
    }
}

fn closed_flag(headers: &HeaderMap) -> bool {
    headers
        .get(STREAM_CLOSED)
        .is_some_and(|v| is_true_flag(v.as_bytes()))
}

async fn create<B>(
    inner: Arc<Inner>,
    key: String,
    parts: &Parts,
    body: B,
) -> Result<Response<ResponseBody>, Problem>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let headers = &parts.headers;
    let content_type = content_type(headers)?;
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
        (None, Some(at)) if at <= time::OffsetDateTime::now_utc() => {
            return Err(Problem::bad_request("Stream-Expires-At is in the past"))
        }
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
        Some(source) => {
            let source = fork_source_key(source, inner.base_path.as_deref())?;
            if sub_offset.unwrap_or(0) > 0 && fork_offset.is_none() {
                return Err(Problem::bad_request(
                    "Stream-Fork-Sub-Offset requires Stream-Fork-Offset",
                ));
            }
            Some(ForkRequest {
                source,
                offset: fork_offset.map(Offset::position),
                sub_offset: sub_offset.unwrap_or(0),
            })
        }
        None if fork_offset.is_some() || sub_offset.is_some() => {
            return Err(Problem::bad_request(
                "Stream-Fork-Offset and Stream-Fork-Sub-Offset require Stream-Forked-From",
            ))
        }
        None => None,
    };
    let closed = closed_flag(headers);
    let location = location(&inner, parts, &key);
    let body = body_bytes(&inner, headers, body).await?;
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

fn bad(error: crate::protocol::HeaderError) -> Problem {
    Problem::bad_request(error.to_string())
}

/// The absolute URL of a stream, from the request's scheme and `Host`.
fn location(inner: &Inner, parts: &Parts, key: &str) -> Option<String> {
    let host = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))?;
    let scheme = parts.uri.scheme_str().unwrap_or("http");
    let base = inner.base_path.as_deref().unwrap_or("");
    Some(format!("{scheme}://{host}{base}{key}"))
}

async fn append<B>(
    inner: Arc<Inner>,
    key: String,
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
    let content_type = header_str(headers, &CONTENT_TYPE)?.map(str::to_owned);
    let body = body_bytes(&inner, headers, body).await?;
    if body.is_empty() && !close {
        return Err(Problem::bad_request(
            "an append needs a non-empty body (or Stream-Closed: true to close)",
        ));
    }
    if !body.is_empty() {
        match &content_type {
            None => {
                return Err(Problem::bad_request(
                    "an append with a body needs a Content-Type",
                ))
            }
            Some(ct) if !is_valid_content_type(ct) => {
                return Err(Problem::bad_request(format!(
                    "Content-Type {ct:?} is not a valid media type"
                )))
            }
            Some(_) => {}
        }
    }
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

async fn head(inner: Arc<Inner>, key: String) -> Result<Response<ResponseBody>, Problem> {
    let view = inner.engine.head(&key).await?;
    let config = view
        .config
        .clone()
        .ok_or_else(|| Problem::from(crate::engine::EngineError::NotFound))?;
    let mut response = empty(StatusCode::OK);
    let headers = response.headers_mut();
    set(headers, CONTENT_TYPE, &config.content_type);
    set_offset(headers, STREAM_NEXT_OFFSET, Offset::new(view.tail));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match config.expiry {
        Expiry::Never => {}
        Expiry::Ttl(secs) => set(headers, STREAM_TTL, secs),
        Expiry::At(at) => set(headers, STREAM_EXPIRES_AT, format_rfc3339(at)),
    }
    if view.closed {
        headers.insert(STREAM_CLOSED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

async fn read(
    inner: Arc<Inner>,
    key: String,
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
            let result = inner.engine.read(&key, from).await?;
            let if_none_match = parts
                .headers
                .get(IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok());
            let mut response = catch_up_response(
                &inner,
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

/// The 200 (or 304) of a read that returns data from `result`.
pub(crate) fn catch_up_response(
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
