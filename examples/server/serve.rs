//! Serving: the routes (streams under `/v1/stream`, health, readiness,
//! metrics), CORS, the accept loop with optional TLS, and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::{HeaderValue, Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_durable_streams::headers::{REQUEST_HEADERS, RESPONSE_HEADERS};
use tower_durable_streams::{DurableStreamsService, ResponseBody, WithFallback};
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

use crate::config::Config;
use crate::connection::{drive, within, Activity, Tracked, Watched};
use crate::storage::{open_blocking, Describe};
use crate::{fail, tls, BASE_PATH};

/// Everything the server answers once storage is open: the streams under the
/// mount, the router for the rest.
type App = WithFallback<Router>;

#[cfg(feature = "metrics")]
use tower_durable_streams::metrics::Metrics;
/// Without the metrics feature there is nothing to count into.
#[cfg(not(feature = "metrics"))]
#[derive(Clone, Default)]
struct Metrics;
#[cfg(not(feature = "metrics"))]
impl Metrics {
    fn new() -> Self {
        Metrics
    }
}

/// Set once storage is open.
type Ready = Arc<OnceLock<(App, Cors<App>, Describe)>>;

fn cors(config: &Config) -> Result<CorsLayer, String> {
    let origins = config.http.cors_origins.trim();
    let origin = if origins == "*" {
        AllowOrigin::any()
    } else {
        let list = origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|o| {
                HeaderValue::from_str(o)
                    .map_err(|_| format!("http.cors_origins: invalid origin {o:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(REQUEST_HEADERS)
        .expose_headers(RESPONSE_HEADERS))
}

/// Health, readiness and metrics.
fn router(config: &Config, metrics: &Metrics, ready: &Ready) -> Router {
    #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get({
                let ready = ready.clone();
                move || async move {
                    let Some((app, _, _)) = ready.get() else {
                        return (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "opening storage\n".to_owned(),
                        );
                    };
                    // A database that went away, a file writer that stopped.
                    match app.streams().health().await {
                        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("storage: {e}\n")),
                    }
                }
            }),
        );
    #[cfg(feature = "metrics")]
    if config.metrics.enabled {
        let metrics = metrics.clone();
        let ready = ready.clone();
        metrics.add_collector(move || {
            ready
                .get()
                .map(|(_, _, describe)| describe().prometheus)
                .unwrap_or_default()
        });
        app = app.route(
            &config.metrics.path,
            get(move || {
                let metrics = metrics.clone();
                async move { ([("content-type", Metrics::CONTENT_TYPE)], metrics.render()) }
            }),
        );
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (config, metrics);
    app
}

/// Opens storage in the background and builds the streams service on it.
fn open(
    config: &Config,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    (routes, cors): (Router, CorsLayer),
    ready: &Ready,
) {
    let (config, shutdown, ready) = (config.clone(), shutdown.clone(), ready.clone());
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let (storage, describe) = open_blocking(&config).await;
        let builder = DurableStreamsService::builder()
            .storage(storage)
            .base_path(BASE_PATH)
            .long_poll_timeout(config.long_poll_timeout())
            .sse_reconnect_interval(config.sse_reconnect_interval())
            .max_append_bytes(config.limits.max_append_bytes)
            .max_read_bytes(config.limits.max_read_bytes)
            .max_response_bytes(config.limits.max_response_bytes)
            .max_live_readers(config.limits.max_live_readers)
            .max_inflight_writes(config.limits.max_inflight_writes)
            .max_buffered_body_bytes(config.limits.max_buffered_body_bytes)
            .min_body_rate(
                config.limits.min_body_rate,
                Duration::from_millis(config.limits.body_grace_ms),
            )
            .trust_forwarded_headers(config.http.trust_forwarded_headers)
            .shutdown(shutdown);
        let builder = match config.limits.max_stream_bytes {
            0 => builder,
            limit => builder.max_stream_bytes(limit),
        };
        let builder = subscriptions(builder, &config);
        #[cfg(feature = "metrics")]
        let builder = if config.metrics.enabled {
            builder.metrics(metrics)
        } else {
            builder
        };
        let streams = builder.build().unwrap_or_else(|e| fail(e, 2));
        if let Err(e) = streams.start().await {
            fail(format!("cannot load streams from storage: {e}"), 1);
        }
        tracing::info!(mode = ?config.storage.mode, "storage ready");
        let app = streams.fallback(routes);
        let with_cors = tower::Layer::layer(&cors, app.clone());
        let _ = ready.set((app, with_cors, describe));
    });
}

/// Listens on `address`. Accepted connections inherit the listener's send
/// buffer size: a fixed buffer of about the CPU cache's size (rather than the
/// kernel's autotuned one, which grows to megabytes) keeps the bytes of a
/// catch-up read in cache between our copy and the kernel's.
fn listen(address: SocketAddr, send_buffer: u64) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if send_buffer > 0 {
        socket.set_send_buffer_size(send_buffer as u32)?;
    }
    socket.bind(address)?;
    socket.listen(1024)
}

pub async fn serve(config: Config) {
    let tls = tls::acceptor(&config.tls).unwrap_or_else(|e| fail(e, 2));
    #[cfg(not(feature = "metrics"))]
    if config.metrics.enabled {
        tracing::warn!(
            "metrics.enabled is set but this build has no metrics feature: /metrics is off"
        );
    }
    let cors = cors(&config).unwrap_or_else(|e| fail(e, 2));
    let address = SocketAddr::new(config.server.host, config.server.port);
    let listener = listen(address, config.server.send_buffer_bytes).unwrap_or_else(|e| {
        fail(
            format!("cannot listen on {address} (server.host/server.port): {e}"),
            1,
        )
    });
    let local = listener.local_addr().expect("bound socket has an address");
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("listening on {scheme}://{local}{BASE_PATH}/");

    // Storage opens in the background (replaying a log takes a while): until it
    // is ready, /healthz answers and /readyz and the streams answer 503.
    let shutdown = CancellationToken::new();
    let ready: Ready = Arc::new(OnceLock::new());
    let metrics = Metrics::new();
    let routes = router(&config, &metrics, &ready);
    let opening = routes
        .clone()
        .fallback(|| async { (StatusCode::SERVICE_UNAVAILABLE, "opening storage\n") });
    open(&config, &metrics, &shutdown, (routes, cors), &ready);

    // Called by reference for each request (hyper's service_fn): only the
    // service a request goes to is cloned. Writes that carry no `Origin` (not
    // from a browser, never cached) skip the CORS layer; reads always pass it,
    // so a cached read suits every origin.
    let route = {
        let ready = ready.clone();
        Arc::new(move |request: Request<hyper::body::Incoming>| {
            let browser = request.headers().contains_key(http::header::ORIGIN)
                || matches!(
                    *request.method(),
                    Method::GET | Method::HEAD | Method::OPTIONS
                );
            let target = match ready.get() {
                Some((_, with_cors, _)) if browser => Target::Cors(Box::new(with_cors.clone())),
                Some((app, _, _)) => Target::Plain(app.clone()),
                None => Target::Opening(opening.clone()),
            };
            async move {
                let response = match target {
                    Target::Cors(app) => app.oneshot(request).await,
                    Target::Plain(app) => app.oneshot(request).await,
                    Target::Opening(app) => {
                        app.oneshot(request).await.map(|r| r.map(ResponseBody::new))
                    }
                };
                let Ok(response) = response;
                Ok::<_, Infallible>(response)
            }
        })
    };

    let mut server = auto::Builder::new(TokioExecutor::new());
    // Response bodies go out as queued buffers in one writev, never copied
    // into hyper's own buffer (hyper picks this for sockets that support
    // vectored writes; said here so a wrapper that hides it cannot undo it).
    server.http1().writev(true);
    let timeouts = config.timeouts();
    let handshake_timeout = Duration::from_millis(config.server.tls_handshake_timeout_ms);
    // One permit per open connection: at the cap, new connections wait in the
    // listen backlog until one closes (timeouts make sure one does).
    let max_connections = config.server.max_connections;
    let connections = Arc::new(Semaphore::new(max_connections));
    let mut signal = std::pin::pin!(shutdown_signal());
    loop {
        let permit = match connections.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                tracing::warn!(
                    max_connections,
                    "connection cap reached: new connections wait until one closes"
                );
                tokio::select! {
                    permit = connections.clone().acquire_owned() => permit.expect("never closed"),
                    () = &mut signal => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, for example: back off a little
                        // instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let activity = Activity::new();
                let https = tls.is_some();
                let service = {
                    let (route, activity) = (route.clone(), activity.clone());
                    hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                        let in_flight = activity.begin();
                        // HTTP/1.1 request URIs carry no scheme: say it is
                        // TLS, so that Location headers say https.
                        if https {
                            request.extensions_mut().insert(http::uri::Scheme::HTTPS);
                        }
                        // Boxed: hyper keeps a connection's request future in a
                        // box of that future's size for the connection's whole
                        // life, so an idle SSE subscriber would hold a box as
                        // large as the routing future (about 1.6 KiB) for
                        // nothing; this box is freed once the response is made.
                        let answer = Box::pin(route(request));
                        async move {
                            let response = answer.await?;
                            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
                        }
                    })
                };
                let (server, shutdown, tls) = (server.clone(), shutdown.clone(), tls.clone());
                let stream = Watched::new(stream, activity.clone());
                // Plain and TLS connections are separate tasks: a task is as
                // large as its largest state, and a TLS session's is
                // several KiB that a plain connection would otherwise carry.
                match tls {
                    None => tokio::spawn(async move {
                        let _permit = permit;
                        let connection = server.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        drive(connection, activity, timeouts, shutdown, peer).await;
                    }),
                    Some(acceptor) => tokio::spawn(async move {
                        let _permit = permit;
                        // The handshake runs in the connection's task, never in the accept loop.
                        let stream = match within(handshake_timeout, acceptor.accept(stream)).await {
                            Some(Ok(stream)) => {
                                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                    activity.speaks_http2();
                                }
                                stream
                            }
                            Some(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            None => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let connection = server.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        drive(connection, activity, timeouts, shutdown, peer).await;
                    }),
                };
            }
            () = &mut signal => break,
        }
    }
    // Live readers get their final answers (204, a last SSE control event), then
    // connections drain; after the grace period whatever is left is cut. Every
    // acknowledged write is already durable (or, in file-fast mode, with the OS).
    tracing::info!("shutting down");
    shutdown.cancel();
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    // Every connection's task holds a permit until it ends.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = connections.acquire_many(all) => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("connections still open after the grace period were closed");
        }
    }
    if let Some((_, _, describe)) = ready.get() {
        let figures = describe();
        tracing::info!(storage = %figures.summary, "stopped");
        eprintln!("storage: {}", figures.summary);
    }
}

/// The subscription APIs, if the settings ask for them.
#[cfg(feature = "subscriptions")]
fn subscriptions(
    builder: tower_durable_streams::Builder,
    config: &Config,
) -> tower_durable_streams::Builder {
    use base64::Engine as _;
    let section = &config.subscriptions;
    if !section.enabled {
        return builder;
    }
    let mut options = tower_durable_streams::SubscriptionOptions::new()
        .allow_development_webhooks(section.allow_development_webhooks);
    if let Some(seed) = &section.signing_seed {
        let seed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(seed.trim_end_matches('='))
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .unwrap_or_else(|| {
                fail(
                    "subscriptions.signing_seed must be 32 bytes in base64url",
                    2,
                )
            });
        options = options.signing_seed(seed);
    }
    for path in &section.webhook_root_certificates {
        use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .unwrap_or_else(|e| {
                fail(
                    format!(
                        "subscriptions.webhook_root_certificates: cannot read {}: {e}",
                        path.display()
                    ),
                    2,
                )
            });
        if certs.is_empty() {
            fail(
                format!(
                    "subscriptions.webhook_root_certificates: no certificate in {}",
                    path.display()
                ),
                2,
            );
        }
        for cert in certs {
            options = options.add_webhook_root_certificate(cert.to_vec());
        }
    }
    if let Some(max) = section.max_backfill_streams {
        options = options.max_backfill_streams(max);
    }
    if let Some(bytes) = section.compact_log_after_bytes {
        options = options.compact_log_after_bytes(bytes);
    }
    tracing::warn!("the subscription APIs are on, and this server does not authorize them");
    builder.subscriptions(options)
}

#[cfg(not(feature = "subscriptions"))]
fn subscriptions(
    builder: tower_durable_streams::Builder,
    config: &Config,
) -> tower_durable_streams::Builder {
    if config.subscriptions.enabled {
        fail(
            "subscriptions.enabled needs a server built with the subscriptions feature",
            2,
        );
    }
    builder
}

/// Where a request goes.
enum Target {
    /// Streams and routes, with CORS headers (browsers, and every read).
    Cors(Box<Cors<App>>),
    /// Streams and routes, without (writes no browser sent).
    Plain(App),
    /// Routes, and 503 for everything else, while storage opens.
    Opening(Router),
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
