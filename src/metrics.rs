//! Prometheus metrics (feature `metrics`): requests by operation and status,
//! request latency, appends and bytes, read bytes, live readers.
//!
//! Off unless the host asks: create [`Metrics`], give it to
//! [`Builder::metrics`](crate::Builder::metrics), and serve
//! [`Metrics::render`] with [`Metrics::CONTENT_TYPE`] where Prometheus scrapes.
//!
//! ```
//! use tower_durable_streams::metrics::Metrics;
//! use tower_durable_streams::DurableStreamsService;
//!
//! let metrics = Metrics::new();
//! let service = DurableStreamsService::builder().metrics(metrics.clone()).build().unwrap();
//! let text = metrics.render();
//! assert!(text.contains("durable_streams_appends_total 0"));
//! # let _ = service;
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

type Collector = Box<dyn Fn() -> String + Send + Sync>;

/// A set of counters for one service (cheap to clone; clones share them).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    appends: Counter,
    append_bytes: Counter,
    read_bytes: Counter,
    live_readers: Gauge,
    collectors: Mutex<Vec<Collector>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_histogram() -> Histogram {
    // 0.1 ms to ~3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Metrics {
    /// The media type of [`render`](Self::render)'s text: OpenMetrics 1.0,
    /// which Prometheus scrapes. Serve it as the response's `Content-Type`.
    ///
    /// ```
    /// use tower_durable_streams::metrics::Metrics;
    ///
    /// assert!(Metrics::CONTENT_TYPE.starts_with("application/openmetrics-text"));
    /// ```
    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";

    /// A fresh set, registered under the `durable_streams_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("durable_streams");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: Family<OperationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let (appends, append_bytes, read_bytes) =
            (Counter::default(), Counter::default(), Counter::default());
        let live_readers = Gauge::default();
        registry.register(
            "requests",
            "Requests answered, by operation and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to the response head, by operation",
            latency.clone(),
        );
        registry.register("appends", "Appends written", appends.clone());
        registry.register(
            "append_bytes",
            "Request body bytes appended",
            append_bytes.clone(),
        );
        registry.register(
            "read_bytes",
            "Stream bytes served by catch-up and long-poll reads",
            read_bytes.clone(),
        );
        registry.register(
            "live_readers",
            "Long-poll and SSE reads in progress",
            live_readers.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                latency,
                appends,
                append_bytes,
                read_bytes,
                live_readers,
                collectors: Mutex::default(),
            }),
        }
    }

    /// Adds text in OpenMetrics exposition format (counters typed under their
    /// bare name, samples ending in `_total`; no `# EOF`) to every
    /// [`render`](Self::render), for figures the host collects itself (such as
    /// a storage backend's flush counters).
    pub fn add_collector(&self, collector: impl Fn() -> String + Send + Sync + 'static) {
        self.inner
            .collectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(collector));
    }

    /// The metrics in OpenMetrics text format ([`CONTENT_TYPE`](Self::CONTENT_TYPE)),
    /// ending with `# EOF`.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = encode_registry(&mut text, &self.inner.registry);
        for collector in self
            .inner
            .collectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            text.push_str(&collector());
        }
        let _ = encode_eof(&mut text);
        text
    }

    pub(crate) fn request(&self, operation: &'static str, status: u16, elapsed: Duration) {
        self.inner
            .requests
            .get_or_create(&RequestLabels { operation, status })
            .inc();
        self.inner
            .latency
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn appended(&self, bytes: usize) {
        self.inner.appends.inc();
        self.inner.append_bytes.inc_by(bytes as u64);
    }

    pub(crate) fn read(&self, bytes: u64) {
        self.inner.read_bytes.inc_by(bytes);
    }

    pub(crate) fn live_reader(&self, delta: i64) {
        self.inner.live_readers.inc_by(delta);
    }
}
