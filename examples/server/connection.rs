//! One client connection and the timeouts that keep a slow or hostile client
//! from holding it: a request head must arrive within `header_read_timeout`,
//! a connection with nothing in progress closes after `idle_timeout`, and one
//! whose client stops reading our answers closes after `write_stall_timeout`.
//!
//! hyper sees the connection through [`Watched`], which notes when bytes
//! arrive and when a write cannot proceed; the service counts the requests in
//! progress with [`InFlight`] (held until the response body is done, so a
//! long SSE answer counts). [`drive`] sleeps until the next deadline and
//! checks it against those notes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tower_durable_streams::{BoxError, ResponseBody};

/// The connection timeouts, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
    pub write_stall: Duration,
}

/// Milliseconds since the first call, plus one: 0 stands for "never".
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// What the connection's watchdog knows of it.
#[derive(Debug)]
pub struct Activity {
    /// Requests whose response is not finished.
    in_flight: AtomicUsize,
    /// When the last request finished (or the connection opened).
    quiet_since: AtomicU64,
    /// When bytes first arrived with no request in progress: a head is coming
    /// (HTTP/1.1 only: on HTTP/2 control frames arrive between requests).
    head_started: AtomicU64,
    /// The connection speaks HTTP/2 (its preface, or ALPN `h2`).
    http2: AtomicBool,
    /// The first bytes were looked at for the HTTP/2 preface.
    sniffed: AtomicBool,
    /// Since when a write has been waiting for the client to read.
    write_blocked_since: AtomicU64,
    /// Each response body's hand-off: since when a frame it gave hyper has
    /// not been followed by hyper asking for the next (0: not waiting). An
    /// HTTP/2 stream whose client sends no WINDOW_UPDATE stalls here, with no
    /// socket write pending.
    bodies: Mutex<Vec<Weak<AtomicU64>>>,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            quiet_since: AtomicU64::new(now_ms()),
            head_started: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            sniffed: AtomicBool::new(false),
            write_blocked_since: AtomicU64::new(0),
            bodies: Mutex::new(Vec::new()),
        })
    }

    /// A request starts; it ends when the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        InFlight(self.clone())
    }

    /// The connection negotiated HTTP/2 (ALPN over TLS): between requests it
    /// is idle, whatever control frames arrive.
    pub fn speaks_http2(&self) {
        self.http2.store(true, Ordering::Release);
        self.head_started.store(0, Ordering::Release);
    }

    fn read(&self, bytes: &[u8]) {
        if !self.sniffed.swap(true, Ordering::AcqRel) && bytes.starts_with(b"PRI * HTTP/2.0") {
            self.http2.store(true, Ordering::Release);
        }
        if self.http2.load(Ordering::Acquire) {
            return;
        }
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == 0
        {
            self.head_started.store(now_ms(), Ordering::Release);
        }
    }

    fn write_blocked(&self, blocked: bool) {
        let since = self.write_blocked_since.load(Ordering::Acquire);
        match (blocked, since) {
            (true, 0) => self.write_blocked_since.store(now_ms(), Ordering::Release),
            (false, s) if s != 0 => self.write_blocked_since.store(0, Ordering::Release),
            _ => {}
        }
    }

    /// The oldest hand-off a body is waiting on (0: none), forgetting bodies
    /// that are gone.
    fn oldest_hand_off(&self) -> u64 {
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        let mut oldest = 0;
        bodies.retain(|body| match body.upgrade() {
            Some(since) => {
                let since = since.load(Ordering::Acquire);
                if since != 0 && (oldest == 0 || since < oldest) {
                    oldest = since;
                }
                true
            }
            None => false,
        });
        oldest
    }

    /// Whether the connection should close now, and if not, when to look again.
    fn check(&self, limits: &Timeouts, now: u64) -> Result<u64, &'static str> {
        let after = |since: u64, limit: Duration| since + limit.as_millis() as u64;
        let blocked = match (
            self.write_blocked_since.load(Ordering::Acquire),
            self.oldest_hand_off(),
        ) {
            (0, handed) | (handed, 0) => handed,
            (socket, handed) => socket.min(handed),
        };
        if blocked != 0 && now >= after(blocked, limits.write_stall) {
            return Err("the client stopped reading");
        }
        let mut next = if blocked != 0 {
            after(blocked, limits.write_stall)
        } else {
            now + limits.write_stall.as_millis() as u64
        };
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let head = self.head_started.load(Ordering::Acquire);
            let deadline = if head != 0 {
                after(head, limits.header_read)
            } else {
                after(self.quiet_since.load(Ordering::Acquire), limits.idle)
            };
            if now >= deadline {
                return Err(if head != 0 {
                    "no complete request head within the header read timeout"
                } else {
                    "idle"
                });
            }
            next = next.min(deadline);
        }
        Ok(next)
    }
}

/// A request in progress on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.quiet_since.store(now_ms(), Ordering::Release);
            self.0.head_started.store(0, Ordering::Release);
        }
    }
}

/// A response body that keeps its request counted until it is done, and
/// notes how long hyper leaves a frame it was given without asking for more.
pub struct Tracked {
    body: ResponseBody,
    handed_off: Arc<AtomicU64>,
    _in_flight: InFlight,
}

impl Tracked {
    pub fn new(body: ResponseBody, in_flight: InFlight) -> Self {
        let handed_off = Arc::new(AtomicU64::new(0));
        let mut bodies = in_flight.0.bodies.lock().unwrap_or_else(|e| e.into_inner());
        // A keep-alive connection serves many requests between two checks:
        // forget finished bodies here too, so the list stays as long as the
        // bodies in progress (amortised: only once it has grown).
        if bodies.len() >= 32 && bodies.len().is_power_of_two() {
            bodies.retain(|body| body.strong_count() > 0);
        }
        bodies.push(Arc::downgrade(&handed_off));
        drop(bodies);
        Tracked {
            body,
            handed_off,
            _in_flight: in_flight,
        }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let since = match &polled {
            Poll::Ready(Some(Ok(_))) => now_ms(),
            _ => 0,
        };
        self.handed_off.store(since, Ordering::Release);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A socket whose reads and blocked writes are noted in an [`Activity`].
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.write_blocked(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.write_blocked(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.activity.write_blocked(polled.is_pending());
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `connection` until it ends, the server shuts down (gracefully), or
/// a timeout closes it (gracefully first; cut if it is still there at the
/// next check, which is at most a second later).
pub async fn drive<C>(
    connection: C,
    activity: Arc<Activity>,
    limits: Timeouts,
    shutdown: CancellationToken,
    peer: std::net::SocketAddr,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut connection = std::pin::pin!(connection);
    let mut closing: Option<&'static str> = None;
    let mut draining = false;
    loop {
        let now = now_ms();
        let next = match activity.check(&limits, now) {
            Ok(next) => next,
            Err(reason) if closing.is_some() => {
                tracing::debug!(%peer, reason, "connection cut");
                return;
            }
            Err(reason) => {
                tracing::debug!(%peer, reason, "closing connection");
                closing = Some(reason);
                connection.as_mut().graceful_shutdown();
                now + 1_000
            }
        };
        let wake = tokio::time::Instant::now() + Duration::from_millis(next.saturating_sub(now));
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Waits at most `limit` for `handshake`.
pub async fn within<F: Future>(limit: Duration, handshake: F) -> Option<F::Output> {
    tokio::time::timeout(limit, handshake).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Timeouts {
        Timeouts {
            header_read: Duration::from_millis(100),
            idle: Duration::from_millis(1_000),
            write_stall: Duration::from_millis(500),
        }
    }

    #[test]
    fn an_idle_connection_closes_after_the_idle_timeout() {
        let activity = Activity::new();
        let start = activity.quiet_since.load(Ordering::Acquire);
        assert_eq!(activity.check(&limits(), start), Ok(start + 500));
        assert_eq!(activity.check(&limits(), start + 999), Ok(start + 1_000));
        assert_eq!(activity.check(&limits(), start + 1_000), Err("idle"));
    }

    #[test]
    fn http2_frames_between_requests_leave_the_connection_idle() {
        let activity = Activity::new();
        activity.read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        activity.read(b"a PING frame");
        let quiet = activity.quiet_since.load(Ordering::Acquire);
        assert!(
            activity.check(&limits(), quiet + 500).is_ok(),
            "not a stalled head"
        );
        assert_eq!(activity.check(&limits(), quiet + 1_000), Err("idle"));
        let tls = Activity::new();
        tls.read(b"a TLS ClientHello");
        tls.speaks_http2();
        tls.read(b"a WINDOW_UPDATE frame");
        let quiet = tls.quiet_since.load(Ordering::Acquire);
        assert!(tls.check(&limits(), quiet + 500).is_ok());
    }

    #[test]
    fn a_partial_head_gets_the_header_timeout_and_a_request_none() {
        let activity = Activity::new();
        activity.read(b"POST /v1/stream/x HTTP/1.1\r\n");
        let head = activity.head_started.load(Ordering::Acquire);
        assert!(activity.check(&limits(), head + 100).is_err());
        let request = activity.begin();
        assert!(activity.check(&limits(), head + 10_000).is_ok(), "busy");
        drop(request);
        let quiet = activity.quiet_since.load(Ordering::Acquire);
        assert_eq!(activity.check(&limits(), quiet + 999).map(|_| ()), Ok(()));
    }

    #[test]
    fn a_frame_hyper_never_comes_back_for_closes_the_connection() {
        let activity = Activity::new();
        let request = activity.begin();
        let handed = Arc::new(AtomicU64::new(0));
        activity
            .bodies
            .lock()
            .unwrap()
            .push(Arc::downgrade(&handed));
        let now = now_ms();
        assert!(activity.check(&limits(), now).is_ok(), "nothing handed off");
        handed.store(now, Ordering::Release);
        assert_eq!(activity.check(&limits(), now + 10), Ok(now + 500));
        assert!(activity.check(&limits(), now + 500).is_err());
        drop(handed);
        drop(request);
        assert!(
            activity.check(&limits(), now + 500).is_ok(),
            "the body is gone"
        );
        assert!(activity.bodies.lock().unwrap().is_empty());
    }

    #[test]
    fn finished_bodies_do_not_pile_up_on_a_keep_alive_connection() {
        let activity = Activity::new();
        for _ in 0..10_000 {
            drop(Tracked::new(ResponseBody::default(), activity.begin()));
        }
        assert!(activity.bodies.lock().unwrap().len() <= 32);
    }

    #[test]
    fn a_blocked_write_closes_even_with_a_request_in_progress() {
        let activity = Activity::new();
        let _request = activity.begin();
        activity.write_blocked(true);
        let since = activity.write_blocked_since.load(Ordering::Acquire);
        assert_eq!(activity.check(&limits(), since + 10), Ok(since + 500));
        assert!(activity.check(&limits(), since + 500).is_err());
        activity.write_blocked(false);
        assert!(activity.check(&limits(), since + 5_000).is_ok());
    }
}
