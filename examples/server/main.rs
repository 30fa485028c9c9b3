//! A standalone Durable Streams server on port 4437.
//!
//! Run it with:
//!
//! ```text
//! cargo run --release --example server
//! cargo run --release --features redb,metrics --example server -- --profile prod
//! ```
//!
//! Streams live under `http://localhost:4437/v1/stream/`. Settings are layered
//! (later wins): built-in defaults, `config/default.toml`, `config/<profile>.toml`
//! (`--profile`), `config/local.toml` (git-ignored), `--config <path>`, and
//! environment variables `DS_<SECTION>__<FIELD>` (`DS_SERVER__PORT`,
//! `DS_STORAGE__MODE`, `DS_LIMITS__MAX_STREAM_BYTES`, …). `--print-config` shows
//! the effective settings; `config/default.toml` documents every key. Unknown
//! keys and bad values stop the start with a message naming the key and its
//! source. `RUST_LOG` sets the log filter.
//!
//! `GET /healthz` answers 200 while the process runs; `GET /readyz` answers 200
//! once storage is open (503 while a log is replayed); `GET /metrics` serves
//! Prometheus metrics (built with the `metrics` feature). SIGINT or SIGTERM end
//! live reads with their protocol answers and stop the process within a second.
//!
//! `server export --out FILE` and `server import --in FILE --on-conflict
//! skip|fail|replace` copy every stream of the configured storage to and from a
//! versioned file (`docs/backup.md`), across storage modes.

mod config;
mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use clap::{Parser, Subcommand};
use config::{Config, Mode};
use http::{HeaderValue, Method, Request, StatusCode};
// The streams' own body type, unboxed, or the router's.
use http_body_util::Either;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_durable_streams::protocol::{REQUEST_HEADERS, RESPONSE_HEADERS};
use tower_durable_streams::storage::backup::{self, OnConflict};
use tower_durable_streams::storage::{Durability, FileStorage};
use tower_durable_streams::{DurableStreamsService, MemoryStorage, Storage};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The mount point of the protocol.
const BASE_PATH: &str = "/v1/stream";

#[derive(Parser)]
#[command(about = "A Durable Streams server", version)]
struct Cli {
    /// Also load config/<PROFILE>.toml.
    #[arg(long, global = true)]
    profile: Option<String>,
    /// Also load this TOML file (after config/local.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print the effective settings as TOML and exit.
    #[arg(long, global = true)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Write every stream of the configured storage to a file.
    Export {
        /// Output file (`-` for standard output).
        #[arg(long)]
        out: PathBuf,
    },
    /// Read streams from an export file into the configured storage.
    Import {
        /// Input file (`-` for standard input).
        #[arg(long = "in")]
        input: PathBuf,
        /// What to do when a stream exists already.
        #[arg(long, value_enum, default_value = "fail")]
        on_conflict: Conflict,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Conflict {
    Skip,
    Fail,
    Replace,
}

/// Describes the storage writer's work so far (logged and exported as metrics).
type Describe = Box<dyn Fn() -> StorageFigures + Send + Sync>;

/// Counters of a durable backend's writer.
#[derive(Default)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
struct StorageFigures {
    summary: String,
    prometheus: String,
}

fn open_storage(config: &Config) -> Result<(Arc<dyn Storage>, Describe), String> {
    let dir = &config.storage.data_dir;
    let opened: Result<(Arc<dyn Storage>, Describe), tower_durable_streams::StorageError> =
        match config.storage.mode {
            Mode::Memory => {
                let memory = MemoryStorage::new().with_max_bytes(config.limits.max_memory_bytes);
                let held = memory.clone();
                let describe = move || StorageFigures {
                    summary: format!("in memory, {} bytes held", held.data_bytes()),
                    prometheus: format!(
                        "# TYPE durable_streams_memory_bytes gauge\ndurable_streams_memory_bytes {}\n",
                        held.data_bytes()
                    ),
                };
                Ok((Arc::new(memory), Box::new(describe)))
            }
            Mode::FileFast | Mode::FileDurable => {
                let durability = if config.storage.mode == Mode::FileFast {
                    Durability::Buffered
                } else {
                    Durability::Fsync
                };
                FileStorage::open(dir, durability).map(|storage| {
                    let stats = storage.clone();
                    let describe = move || file_figures(&stats);
                    (Arc::new(storage) as Arc<dyn Storage>, Box::new(describe) as Describe)
                })
            }
            #[cfg(feature = "redb")]
            Mode::Acid => tower_durable_streams::storage::RedbStorage::open(
                dir,
                config.storage.acid_shard_count,
            )
            .map(|storage| {
                let stats = storage.clone();
                let describe = move || StorageFigures {
                    summary: format!("{} redb write transactions", stats.commits()),
                    prometheus: format!(
                        "# TYPE durable_streams_storage_commits counter\ndurable_streams_storage_commits_total {}\n",
                        stats.commits()
                    ),
                };
                (Arc::new(storage) as Arc<dyn Storage>, Box::new(describe) as Describe)
            }),
            #[cfg(not(feature = "redb"))]
            Mode::Acid => {
                return Err("storage.mode = acid needs the redb feature: \
                            cargo run --release --features redb --example server"
                    .into())
            }
        };
    opened.map_err(|e| {
        let cause = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        format!(
            "cannot open storage in {} (storage.data_dir): {e}{cause}",
            dir.display()
        )
    })
}

/// The file writer's counters, as a log line and as Prometheus text.
fn file_figures(storage: &FileStorage) -> StorageFigures {
    let s = storage.stats();
    let mut prometheus = String::new();
    for (name, help, value) in [
        (
            "storage_writes",
            "Operations written to the log",
            s.operations,
        ),
        (
            "storage_flushes",
            "Batches written (one write each)",
            s.flushes,
        ),
        ("storage_fsyncs", "fdatasync calls", s.fsyncs),
        ("storage_bytes", "Bytes written to the log", s.bytes),
    ] {
        prometheus.push_str(&format!(
            "# HELP durable_streams_{name} {help}.\n# TYPE durable_streams_{name} counter\ndurable_streams_{name}_total {value}\n"
        ));
    }
    prometheus.push_str("# HELP durable_streams_storage_batch_size Operations per flush.\n# TYPE durable_streams_storage_batch_size histogram\n");
    let mut cumulative = 0;
    for (i, count) in s.batch_sizes.iter().enumerate() {
        cumulative += count;
        let le = if i + 1 == s.batch_sizes.len() {
            "+Inf".to_owned()
        } else {
            (1u64 << i).to_string()
        };
        prometheus.push_str(&format!(
            "durable_streams_storage_batch_size_bucket{{le=\"{le}\"}} {cumulative}\n"
        ));
    }
    prometheus.push_str(&format!(
        "durable_streams_storage_batch_size_sum {}\ndurable_streams_storage_batch_size_count {}\n",
        s.operations, s.flushes
    ));
    StorageFigures {
        summary: format!(
            "{} writes in {} flushes with {} fsyncs ({:.1} writes per flush), {} bytes",
            s.operations,
            s.flushes,
            s.fsyncs,
            s.operations as f64 / s.flushes.max(1) as f64,
            s.bytes
        ),
        prometheus,
    }
}

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

fn fail(message: impl std::fmt::Display, code: i32) -> ! {
    eprintln!("error: {message}");
    std::process::exit(code)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_durable_streams::access=debug".into()),
        )
        .init();
    let cli = Cli::parse();
    let root = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let config = Config::load(&root, cli.profile.as_deref(), cli.config.as_deref())
        .unwrap_or_else(|e| fail(e, 2));
    if cli.print_config {
        print!(
            "{}",
            toml::to_string(&config).unwrap_or_else(|e| fail(e, 1))
        );
        return;
    }
    let command = cli.command.unwrap_or(Command::Serve);
    if !matches!(command, Command::Serve) && config.storage.mode == Mode::Memory {
        fail(
            "export and import work on stored data: set storage.mode (DS_STORAGE__MODE) \
             to file-fast, file-durable or acid, and storage.data_dir",
            2,
        );
    }
    match command {
        Command::Serve => serve(config).await,
        Command::Export { out } => export(config, out).await,
        Command::Import { input, on_conflict } => import(config, input, on_conflict).await,
    }
}

async fn open_blocking(config: &Config) -> (Arc<dyn Storage>, Describe) {
    // Opening replays the log or the databases: blocking work, off the reactor.
    let opening = config.clone();
    tokio::task::spawn_blocking(move || open_storage(&opening))
        .await
        .unwrap_or_else(|e| Err(format!("opening storage panicked: {e}")))
        .unwrap_or_else(|e| fail(e, 1))
}

async fn export(config: Config, out: PathBuf) {
    let (storage, _) = open_blocking(&config).await;
    let summary = if out.as_os_str() == "-" {
        backup::export(storage.as_ref(), tokio::io::stdout()).await
    } else {
        let file = tokio::fs::File::create(&out)
            .await
            .unwrap_or_else(|e| fail(format!("cannot create {}: {e}", out.display()), 1));
        backup::export(storage.as_ref(), tokio::io::BufWriter::new(file)).await
    }
    .unwrap_or_else(|e| fail(format!("export failed: {e}"), 1));
    eprintln!(
        "exported {} streams, {} bytes",
        summary.streams, summary.bytes
    );
}

async fn import(config: Config, input: PathBuf, on_conflict: Conflict) {
    let (storage, _) = open_blocking(&config).await;
    let policy = match on_conflict {
        Conflict::Skip => OnConflict::Skip,
        Conflict::Fail => OnConflict::Fail,
        Conflict::Replace => OnConflict::Replace,
    };
    let summary = if input.as_os_str() == "-" {
        backup::import(
            storage.as_ref(),
            tokio::io::BufReader::new(tokio::io::stdin()),
            policy,
        )
        .await
    } else {
        let file = tokio::fs::File::open(&input)
            .await
            .unwrap_or_else(|e| fail(format!("cannot open {}: {e}", input.display()), 1));
        backup::import(storage.as_ref(), tokio::io::BufReader::new(file), policy).await
    }
    .unwrap_or_else(|e| fail(format!("import failed: {e}"), 1));
    eprintln!(
        "imported {} streams ({} skipped), {} bytes",
        summary.streams, summary.skipped, summary.bytes
    );
}

type Ready = Arc<OnceLock<(DurableStreamsService, Describe)>>;

/// Where a request goes: the streams with CORS, the streams without (writes
/// that no browser sent), or the router (health, metrics).
enum Target {
    Cors(Box<tower_http::cors::Cors<ReadyStreams>>),
    Plain(ReadyStreams),
    Other(Router),
}

/// The streams service once storage is open; 503 until then.
#[derive(Clone)]
struct ReadyStreams(Ready);

impl<B> tower::Service<Request<B>> for ReadyStreams
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tower_durable_streams::BoxError>,
{
    type Response = http::Response<tower_durable_streams::ResponseBody>;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        tower_durable_streams::ResponseFuture,
        std::future::Ready<Result<Self::Response, Infallible>>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.0.get() {
            Some((streams, _)) => {
                let mut streams = streams.clone();
                futures_util::future::Either::Left(tower::Service::call(&mut streams, request))
            }
            None => {
                let mut response = http::Response::new(tower_durable_streams::ResponseBody::from(
                    bytes::Bytes::from_static(b"opening storage\n"),
                ));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                futures_util::future::Either::Right(std::future::ready(Ok(response)))
            }
        }
    }
}

async fn serve(config: Config) {
    let tls = tls::acceptor(&config.tls).unwrap_or_else(|e| fail(e, 2));
    #[cfg(not(feature = "metrics"))]
    if config.metrics.enabled {
        tracing::warn!(
            "metrics.enabled is set but this build has no metrics feature: /metrics is off"
        );
    }
    let cors = cors(&config).unwrap_or_else(|e| fail(e, 2));
    let address = SocketAddr::new(config.server.host, config.server.port);
    let listener = TcpListener::bind(address).await.unwrap_or_else(|e| {
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
    #[cfg(feature = "metrics")]
    let metrics = tower_durable_streams::metrics::Metrics::new();
    {
        let (config, shutdown, ready) = (config.clone(), shutdown.clone(), ready.clone());
        #[cfg(feature = "metrics")]
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let (storage, describe) = open_blocking(&config).await;
            let builder = DurableStreamsService::builder()
                .storage_arc(storage)
                .base_path(BASE_PATH)
                .long_poll_timeout(config.long_poll_timeout())
                .sse_reconnect_interval(config.sse_reconnect_interval())
                .max_append_bytes(config.limits.max_append_bytes)
                .max_live_readers(config.limits.max_live_readers)
                .max_inflight_writes(config.limits.max_inflight_writes)
                .shutdown(shutdown);
            let builder = match config.limits.max_stream_bytes {
                0 => builder,
                limit => builder.max_stream_bytes(limit),
            };
            #[cfg(feature = "metrics")]
            let builder = if config.metrics.enabled {
                builder.metrics(metrics)
            } else {
                builder
            };
            let streams = builder.build().unwrap_or_else(|e| fail(e, 2));
            if let Err(e) = streams.ready().await {
                fail(format!("cannot load streams from storage: {e}"), 1);
            }
            tracing::info!(mode = ?config.storage.mode, "storage ready");
            let _ = ready.set((streams, describe));
        });
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get({
                let ready = ready.clone();
                move || async move {
                    match ready.get() {
                        Some(_) => (StatusCode::OK, "ready\n"),
                        None => (StatusCode::SERVICE_UNAVAILABLE, "opening storage\n"),
                    }
                }
            }),
        );
    #[cfg(feature = "metrics")]
    if config.metrics.enabled {
        let (metrics, ready) = (metrics.clone(), ready.clone());
        metrics.add_collector(move || {
            ready
                .get()
                .map(|(_, describe)| describe().prometheus)
                .unwrap_or_default()
        });
        app = app.route(
            &config.metrics.path,
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        metrics.render(),
                    )
                }
            }),
        );
    }
    // The hot path skips the router: requests under the mount point go straight
    // to the (CORS-wrapped) streams service; the rest (health, metrics) to axum.
    // Writes that carry no `Origin` (not from a browser, never cached) skip the
    // CORS layer; reads always pass it, so a cached read suits every origin.
    let plain = ReadyStreams(ready.clone());
    let streams = tower::ServiceBuilder::new()
        .layer(cors)
        .service(plain.clone());
    // Called by reference for each request (hyper's service_fn): only the
    // service a request goes to is cloned.
    let route = Arc::new(move |request: Request<hyper::body::Incoming>| {
        let path = request.uri().path();
        let target = if path == BASE_PATH || path.starts_with(concat!("/v1/stream", "/")) {
            let browser = request.headers().contains_key(http::header::ORIGIN)
                || matches!(
                    *request.method(),
                    Method::GET | Method::HEAD | Method::OPTIONS
                );
            if browser {
                Target::Cors(Box::new(streams.clone()))
            } else {
                Target::Plain(plain.clone())
            }
        } else {
            Target::Other(app.clone())
        };
        async move {
            let response = match target {
                Target::Cors(streams) => {
                    let Ok(response) = streams.oneshot(request).await;
                    response.map(Either::Left)
                }
                Target::Plain(streams) => {
                    let Ok(response) = streams.oneshot(request).await;
                    response.map(Either::Left)
                }
                Target::Other(app) => {
                    let Ok(response) = app.oneshot(request.map(axum::body::Body::new)).await;
                    response.map(Either::Right)
                }
            };
            Ok::<_, Infallible>(response)
        }
    });

    let server = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut signal = std::pin::pin!(shutdown_signal());
    loop {
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
                let service = {
                    let route = route.clone();
                    hyper::service::service_fn(move |request| route(request))
                };
                match &tls {
                    None => {
                        let connection = server.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        let connection = graceful.watch(connection.into_owned());
                        tokio::spawn(async move {
                            if let Err(e) = connection.await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        // The handshake runs in the connection's task, never in the accept loop.
                        let (acceptor, server, watcher) = (acceptor.clone(), server.clone(), graceful.watcher());
                        tokio::spawn(async move {
                            let stream = match acceptor.accept(stream).await {
                                Ok(stream) => stream,
                                Err(e) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                            };
                            let connection = server.serve_connection_with_upgrades(TokioIo::new(stream), service);
                            if let Err(e) = watcher.watch(connection.into_owned()).await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        });
                    }
                }
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
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("connections still open after the grace period were closed");
        }
    }
    if let Some((_, describe)) = ready.get() {
        let figures = describe();
        tracing::info!(storage = %figures.summary, "stopped");
        eprintln!("storage: {}", figures.summary);
    }
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
