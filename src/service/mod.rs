//! The tower `Service`: HTTP in, protocol operations on the engine, HTTP out.
//!
//! - `builder`: settings and `build()`;
//! - `dispatch`: one request from path and method to an operation, through the
//!   authorizer and the admission limits;
//! - `operations`: each operation's headers in, engine call, headers out;
//! - `responses`, `problem`: shared response shapes and problem+json errors;
//! - `live`: long-poll and SSE; `mount`: the fallback for hyper and warp hosts;
//! - `body`, `future`: the named response body and future.

mod body;
mod builder;
mod dispatch;
mod future;
mod live;
mod mount;
mod operations;
mod problem;
mod request;
mod responses;
#[cfg(feature = "subscriptions")]
mod subscriptions;
mod upload;

#[cfg(feature = "unstable-fuzz")]
pub(crate) use request::parse_query;

pub use body::{BoxError, ResponseBody};
pub use builder::{BuildError, Builder, CachePolicy};
pub use future::ResponseFuture;
pub use mount::{WithFallback, WithFallbackFuture};

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, X_CONTENT_TYPE_OPTIONS};
use http::{Request, Response};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::Authorizer;
use crate::engine::{Engine, StreamError};
use crate::protocol::CursorClock;
use crate::streams::Streams;

/// The Durable Streams protocol as a tower [`Service`](tower_service::Service).
///
/// Cheap to clone (all clones share one engine). Accepts any request body that
/// yields [`Bytes`]; answers every request, including refusals, with a response
/// (`Error = Infallible`). Request paths are relative to the mount point (see
/// [`Builder::base_path`]).
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
    /// starts the expiry sweeper on the current runtime; reports a storage that
    /// cannot be loaded.
    ///
    /// Optional: the first request (or [`Streams`] call) does the same. The
    /// sweeper runs until the builder's shutdown token is cancelled or the last
    /// clone of the service is dropped; if its runtime shuts down first, the
    /// next request starts it again on the runtime serving that request.
    /// With subscriptions on, their state is read and their lease and retry
    /// sweeper started too.
    pub async fn start(&self) -> Result<(), StreamError> {
        self.inner.engine.ready().await?;
        #[cfg(feature = "subscriptions")]
        if let Some(hub) = &self.inner.hub {
            hub.log().await?;
        }
        Ok(())
    }

    /// Whether the storage can serve writes now (a database is reachable, a
    /// file writer is running): what a host's readiness check should ask.
    pub async fn health(&self) -> Result<(), StreamError> {
        self.inner.engine.health().await
    }

    /// A handle to create, append to, close and read streams from host code,
    /// sharing this service's engine: appends made through it wake the
    /// service's live HTTP readers at once. See [`Streams`].
    pub fn streams(&self) -> Streams {
        Streams::new(self.inner.engine.clone())
    }

    /// This service for requests under [`Builder::base_path`], with the mount
    /// prefix removed, and `fallback` for every other request: the form for
    /// hosts that pass full paths (plain hyper, warp). See [`WithFallback`].
    pub fn fallback<F>(self, fallback: F) -> WithFallback<F> {
        WithFallback::new(self, fallback)
    }

    pub(crate) fn base_path(&self) -> Option<&str> {
        self.inner.base_path.as_deref()
    }
}

pub(crate) struct Inner {
    engine: Arc<Engine>,
    #[cfg(feature = "subscriptions")]
    hub: Option<Arc<crate::subscriptions::hub::Hub>>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Metrics>,
    live_readers: Arc<Semaphore>,
    inflight_writes: Arc<Semaphore>,
    body_budget: Arc<Semaphore>,
    pace: upload::Pace,
    authorizer: Option<Arc<dyn Authorizer>>,
    shutdown: CancellationToken,
    base_path: Option<String>,
    trust_forwarded_headers: bool,
    long_poll_timeout: Duration,
    sse_reconnect_interval: Duration,
    cursor: CursorClock,
    max_append_bytes: usize,
    cache_policy: crate::CachePolicy,
}

const CROSS_ORIGIN_RESOURCE_POLICY: http::HeaderName =
    http::HeaderName::from_static("cross-origin-resource-policy");

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
            let operation = dispatch::operation_name(&method, request.uri().query());
            let request_bytes = http_body::Body::size_hint(request.body()).exact();
            #[cfg(feature = "metrics")]
            let metrics = inner.metrics.clone();
            let mut response = match dispatch::handle(inner, request).await {
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
                if operation.starts_with("read") && response.status() == http::StatusCode::OK {
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
