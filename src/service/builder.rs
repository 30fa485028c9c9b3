//! Configuring a service: every setting, checked once by `build()`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{DurableStreamsService, Inner};
use crate::auth::Authorizer;
use crate::engine::{Engine, Limits};
use crate::protocol::CursorClock;
use crate::storage::{MemoryStorage, Storage};

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
    pub(crate) fn header(self) -> HeaderValue {
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
    /// A catch-up answer could not hold one storage read.
    #[error("max_response_bytes ({response}) must be at least max_read_bytes ({read})")]
    ResponseSize {
        /// The largest answer asked for.
        response: u64,
        /// The storage read step.
        read: usize,
    },
    /// The body budget cannot hold even one body of `max_append_bytes`.
    #[error("max_buffered_body_bytes ({budget}) must be at least max_append_bytes ({append})")]
    BodyBudget {
        /// The budget asked for.
        budget: usize,
        /// The largest body.
        append: usize,
    },
    /// The subscription APIs could not be set up (a webhook root
    /// certificate given to
    /// [`SubscriptionOptions::add_webhook_root_certificate`](crate::SubscriptionOptions::add_webhook_root_certificate)
    /// does not parse).
    #[cfg(feature = "subscriptions")]
    #[error("the subscription APIs could not be set up: {0}")]
    Subscriptions(String),
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
    trust_forwarded_headers: bool,
    long_poll_timeout: Duration,
    sse_reconnect_interval: Duration,
    cursor_interval: Duration,
    max_append_bytes: usize,
    max_read_bytes: usize,
    max_response_bytes: u64,
    cache_policy: CachePolicy,
    expiry_sweep_interval: Duration,
    max_stream_bytes: Option<u64>,
    max_live_readers: usize,
    max_inflight_writes: usize,
    max_buffered_body_bytes: Option<usize>,
    body_grace: Duration,
    min_body_rate: u64,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Metrics>,
    #[cfg(feature = "subscriptions")]
    subscriptions: Option<crate::SubscriptionOptions>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            storage: None,
            authorizer: None,
            shutdown: None,
            base_path: None,
            trust_forwarded_headers: false,
            long_poll_timeout: Duration::from_secs(30),
            sse_reconnect_interval: Duration::from_secs(60),
            cursor_interval: Duration::from_secs(20),
            max_append_bytes: 64 * 1024 * 1024,
            max_read_bytes: 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
            cache_policy: CachePolicy::Public,
            expiry_sweep_interval: Duration::from_secs(1),
            max_stream_bytes: None,
            max_live_readers: 10_000,
            max_inflight_writes: 1_024,
            max_buffered_body_bytes: None,
            body_grace: Duration::from_secs(10),
            min_body_rate: 1_024,
            #[cfg(feature = "metrics")]
            metrics: None,
            #[cfg(feature = "subscriptions")]
            subscriptions: None,
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
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// Where streams are kept: any [`Storage`], including a shared
    /// `Arc<dyn Storage>` or `Arc<MemoryStorage>` the host keeps a handle to.
    /// Defaults to a new [`MemoryStorage`].
    pub fn storage(mut self, storage: impl Storage) -> Self {
        self.storage = Some(Arc::new(storage));
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
    /// protocol answers (pending long-polls answer 204, SSE responses send a
    /// last control event and close) and stops the expiry sweeper. Cancel it
    /// when the host shuts down. Defaults to a token nobody cancels.
    pub fn shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(token);
        self
    }

    /// The path the service is mounted under, such as `/v1/stream`.
    ///
    /// The service always receives paths relative to its mount, as axum's
    /// `nest_service` hands them over, and names the stream by that relative
    /// path: `/v1/stream/chats/1` is the stream `/chats/1`, and every stream
    /// has exactly one URL. `base_path` says where the mount is: `Location`
    /// headers include it, `Stream-Forked-From` values (full URL paths) must
    /// start with it, and [`DurableStreamsService::fallback`] strips it from
    /// full paths for hyper and warp hosts. Defaults to none: mounted at `/`.
    pub fn base_path(mut self, base_path: impl Into<String>) -> Self {
        self.base_path = Some(base_path.into());
        self
    }

    /// Whether `Location` headers follow what a reverse proxy in front says the
    /// client used: `Forwarded` (RFC 7239) or `X-Forwarded-Proto` and
    /// `X-Forwarded-Host`. Turn it on only behind a proxy that sets (or strips)
    /// these headers, since clients can send them too. Without it, the scheme
    /// comes from the request URI or an `http::uri::Scheme` the host put in the
    /// request's extensions (a host serving TLS inserts `Scheme::HTTPS`), and
    /// the host from `Host`. Defaults to `false`.
    pub fn trust_forwarded_headers(mut self, trust: bool) -> Self {
        self.trust_forwarded_headers = trust;
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

    /// The most stream bytes read from storage at a time, and the most one
    /// long-poll answer, SSE event or JSON page carries. Defaults to 1 MiB.
    ///
    /// A catch-up answer longer than this is streamed: one read of this size
    /// after another as the client takes the bytes (see
    /// [`max_response_bytes`](Self::max_response_bytes)), so this also bounds
    /// the memory one reader holds.
    pub fn max_read_bytes(mut self, bytes: usize) -> Self {
        self.max_read_bytes = bytes;
        self
    }

    /// The most stream bytes one catch-up answer (`GET` without `live`)
    /// carries; a longer range is served over several requests, each naming
    /// the next in `Stream-Next-Offset`. Defaults to 64 MiB; at least
    /// [`max_read_bytes`](Self::max_read_bytes).
    ///
    /// The answer is produced as the socket drains, so a large value costs
    /// memory only as [`max_read_bytes`](Self::max_read_bytes) does. A JSON
    /// stream's answer must end between records: when the range to the tail
    /// is longer than this, it carries `max_read_bytes` instead.
    ///
    /// ```
    /// use tower_durable_streams::{DurableStreamsService, MemoryStorage};
    ///
    /// let service = DurableStreamsService::builder()
    ///     .storage(MemoryStorage::new())
    ///     .max_response_bytes(256 * 1024 * 1024)
    ///     .build()
    ///     .unwrap();
    /// # let _ = service;
    /// ```
    pub fn max_response_bytes(mut self, bytes: u64) -> Self {
        self.max_response_bytes = bytes;
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

    /// The most request-body bytes held at once across every create and append
    /// being received or written; a body that would cross it gets 503 with
    /// `Retry-After`, so memory stays bounded whatever clients send. Defaults
    /// to 256 MiB or `max_append_bytes`, whichever is larger; `build()` refuses
    /// a budget smaller than `max_append_bytes`.
    pub fn max_buffered_body_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered_body_bytes = Some(bytes);
        self
    }

    /// How slowly a request body may arrive: after `grace`, at least
    /// `bytes_per_second` on average since the request head, and never a
    /// pause longer than `grace` between two pieces, or the request gets 408
    /// and nothing is written. Write slots are taken only once the
    /// whole body is in, so a slow uploader never holds one. Defaults to
    /// 1 KiB/s after 10 seconds.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_durable_streams::DurableStreamsService;
    ///
    /// let service = DurableStreamsService::builder()
    ///     .min_body_rate(64 * 1024, Duration::from_secs(5))
    ///     .build()
    ///     .unwrap();
    /// # let _ = service;
    /// ```
    pub fn min_body_rate(mut self, bytes_per_second: u64, grace: Duration) -> Self {
        self.min_body_rate = bytes_per_second;
        self.body_grace = grace;
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

    /// Serves the subscription APIs under `__ds` (PROTOCOL.md sections 6
    /// and 7: webhooks and pull-wake workers), which otherwise answer 404.
    ///
    /// Feature `subscriptions`. Subscription state lives in the storage
    /// backend (an internal stream under `__ds`), so it survives restarts of
    /// durable backends and is shared by every instance over one
    /// PostgreSQL. Webhooks go to public `https` URLs only unless
    /// [`SubscriptionOptions::allow_development_webhooks`] is on.
    /// The control routes and claims ask the [`Builder::authorize`] hook with
    /// [`Operation::Subscription`](crate::auth::Operation::Subscription);
    /// without an authorizer anyone who reaches the service can subscribe.
    /// `docs/subscriptions.md` covers operating them.
    ///
    /// [`SubscriptionOptions::allow_development_webhooks`]: crate::SubscriptionOptions::allow_development_webhooks
    ///
    /// ```
    /// use tower_durable_streams::{DurableStreamsService, SubscriptionOptions};
    ///
    /// let service = DurableStreamsService::builder()
    ///     .subscriptions(SubscriptionOptions::new())
    ///     .build()
    ///     .expect("valid settings");
    /// # let _ = service;
    /// ```
    #[cfg(feature = "subscriptions")]
    pub fn subscriptions(mut self, options: crate::SubscriptionOptions) -> Self {
        self.subscriptions = Some(options);
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
            ("min_body_rate grace", self.body_grace),
        ] {
            if value.is_zero() {
                return Err(BuildError::ZeroDuration(name));
            }
        }
        for (name, value) in [
            ("max_append_bytes", self.max_append_bytes),
            ("max_read_bytes", self.max_read_bytes),
            (
                "max_response_bytes",
                self.max_response_bytes.min(usize::MAX as u64) as usize,
            ),
            ("max_live_readers", self.max_live_readers),
            ("max_inflight_writes", self.max_inflight_writes),
            (
                "min_body_rate",
                self.min_body_rate.min(usize::MAX as u64) as usize,
            ),
        ] {
            if value == 0 {
                return Err(BuildError::ZeroSize(name));
            }
        }
        let body_budget = match self.max_buffered_body_bytes {
            None => self.max_append_bytes.max(256 * 1024 * 1024),
            Some(budget) if budget < self.max_append_bytes => {
                return Err(BuildError::BodyBudget {
                    budget,
                    append: self.max_append_bytes,
                })
            }
            Some(budget) => budget,
        }
        .min(Semaphore::MAX_PERMITS);
        let storage = self
            .storage
            .unwrap_or_else(|| Arc::new(MemoryStorage::new()));
        if self.max_response_bytes < self.max_read_bytes as u64 {
            return Err(BuildError::ResponseSize {
                response: self.max_response_bytes,
                read: self.max_read_bytes,
            });
        }
        let shutdown = self.shutdown.unwrap_or_default();
        let limits = Limits {
            max_read_bytes: self.max_read_bytes,
            max_response_bytes: self.max_response_bytes,
            max_stream_bytes: self.max_stream_bytes.unwrap_or(u64::MAX),
            sweep_interval: self.expiry_sweep_interval,
        };
        let engine = Engine::new(storage, limits, &shutdown);
        #[cfg(feature = "subscriptions")]
        let hub = match &self.subscriptions {
            Some(options) => Some(
                crate::subscriptions::hub::Hub::new(engine.clone(), options, shutdown.clone())
                    .map_err(|e| BuildError::Subscriptions(e.to_string()))?,
            ),
            None => None,
        };
        Ok(DurableStreamsService {
            inner: Arc::new(Inner {
                engine,
                #[cfg(feature = "subscriptions")]
                hub,
                live_readers: Arc::new(Semaphore::new(self.max_live_readers)),
                #[cfg(feature = "metrics")]
                metrics: self.metrics,
                inflight_writes: Arc::new(Semaphore::new(self.max_inflight_writes)),
                body_budget: Arc::new(Semaphore::new(body_budget)),
                pace: super::upload::Pace {
                    grace: self.body_grace,
                    min_rate: self.min_body_rate,
                },
                authorizer: self.authorizer,
                shutdown,
                base_path: self.base_path,
                trust_forwarded_headers: self.trust_forwarded_headers,
                long_poll_timeout: self.long_poll_timeout,
                sse_reconnect_interval: self.sse_reconnect_interval,
                cursor: CursorClock::new(self.cursor_interval),
                max_append_bytes: self.max_append_bytes,
                cache_policy: self.cache_policy,
            }),
        })
    }
}
