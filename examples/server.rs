//! A standalone Durable Streams server on port 4437.
//!
//! Run it with:
//!
//! ```text
//! cargo run --release --example server
//! cargo run --release --features redb --example server   # to offer DS_STORAGE__MODE=acid
//! ```
//!
//! Streams live under `http://localhost:4437/v1/stream/`. Settings come from the
//! environment, with the names operators of the older Rust server already use:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `DS_SERVER__HOST` | `127.0.0.1` | address to listen on (`0.0.0.0` for every interface) |
//! | `DS_SERVER__PORT` | `4437` | port to listen on (`0` picks a free one and prints it) |
//! | `DS_SERVER__LONG_POLL_TIMEOUT_SECS` | `30` | how long a long-poll waits before 204 |
//! | `DS_SERVER__SSE_RECONNECT_INTERVAL_SECS` | `60` | how long an SSE response stays open |
//! | `DS_HTTP__CORS_ORIGINS` | `*` | allowed browser origins, comma-separated, or `*` |
//! | `DS_STORAGE__MODE` | `memory` | `memory`, `file-fast`, `file-durable`, or `acid` (alias `redb`) |
//! | `DS_STORAGE__DATA_DIR` | `./data/streams` | where the file and acid modes keep their data |
//! | `DS_STORAGE__ACID_SHARD_COUNT` | `16` | redb shards in acid mode: a power of two from 1 to 256 |
//! | `RUST_LOG` | `info` | log filter (tracing-subscriber syntax) |
//!
//! A bad value stops the server at start with a message naming the variable.
//!
//! `GET /healthz` answers 200 while the process runs; `GET /readyz` answers 200
//! once storage is open (503 while a log is replayed). SIGINT or SIGTERM end live
//! reads with their protocol answers and stop the process within a second.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http::{HeaderValue, Method};
use http::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::sync::OnceLock;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_durable_streams::protocol::{REQUEST_HEADERS, RESPONSE_HEADERS};
use tower_durable_streams::storage::{Durability, FileStorage};
use tower_durable_streams::{DurableStreamsService, MemoryStorage, Storage};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

/// The mount point of the protocol.
const BASE_PATH: &str = "/v1/stream";

/// Describes the storage writer's work so far (logged at shutdown).
type Describe = Box<dyn Fn() -> String + Send + Sync>;

/// Where streams are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Memory,
    FileFast,
    FileDurable,
    Acid,
}

impl FromStr for Mode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "memory" => Ok(Mode::Memory),
            "file-fast" => Ok(Mode::FileFast),
            "file-durable" => Ok(Mode::FileDurable),
            "acid" | "redb" => Ok(Mode::Acid),
            _ => Err(()),
        }
    }
}

#[derive(Clone)]
struct Settings {
    mode: Mode,
    data_dir: std::path::PathBuf,
    shard_count: usize,
    host: IpAddr,
    port: u16,
    long_poll_timeout: Duration,
    sse_reconnect_interval: Duration,
    cors_origins: Vec<HeaderValue>,
}

/// Reads `name` from the environment, or `default` when unset.
fn env_or<T: FromStr>(name: &str, default: T, expected: &str) -> Result<T, String> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name}: value is not valid UTF-8")),
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("{name}: invalid value {value:?}: expected {expected}")),
    }
}

fn positive_secs(name: &str, default: u64) -> Result<Duration, String> {
    match env_or(name, default, "a positive whole number of seconds")? {
        0 => Err(format!("{name}: must be at least 1 second")),
        secs => Ok(Duration::from_secs(secs)),
    }
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let origins = std::env::var("DS_HTTP__CORS_ORIGINS").unwrap_or_else(|_| "*".into());
        let cors_origins = if origins.trim() == "*" {
            Vec::new()
        } else {
            origins
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(|o| {
                    HeaderValue::from_str(o)
                        .map_err(|_| format!("DS_HTTP__CORS_ORIGINS: invalid origin {o:?}"))
                })
                .collect::<Result<_, _>>()?
        };
        let shard_count: usize = env_or(
            "DS_STORAGE__ACID_SHARD_COUNT",
            16,
            "a power of two from 1 to 256",
        )?;
        if !(1..=256).contains(&shard_count) || !shard_count.is_power_of_two() {
            return Err(format!(
                "DS_STORAGE__ACID_SHARD_COUNT: invalid value {shard_count}: expected a power of two from 1 to 256"
            ));
        }
        Ok(Settings {
            mode: env_or(
                "DS_STORAGE__MODE",
                Mode::Memory,
                "memory, file-fast, file-durable, acid or redb",
            )?,
            data_dir: env_or(
                "DS_STORAGE__DATA_DIR",
                "./data/streams".into(),
                "a directory path",
            )?,
            shard_count,
            host: env_or(
                "DS_SERVER__HOST",
                IpAddr::from([127, 0, 0, 1]),
                "an IP address",
            )?,
            port: env_or("DS_SERVER__PORT", 4437, "a port number from 0 to 65535")?,
            long_poll_timeout: positive_secs("DS_SERVER__LONG_POLL_TIMEOUT_SECS", 30)?,
            sse_reconnect_interval: positive_secs("DS_SERVER__SSE_RECONNECT_INTERVAL_SECS", 60)?,
            cors_origins,
        })
    }

    /// Opens the configured storage; also returns a function that describes the
    /// writer's work so far, logged at shutdown.
    fn storage(&self) -> Result<(Arc<dyn Storage>, Describe), String> {
        fn file(storage: FileStorage) -> (Arc<dyn Storage>, Describe) {
            let stats = storage.clone();
            let describe = move || {
                let s = stats.stats();
                format!(
                    "{} writes in {} flushes with {} fsyncs ({:.1} writes per flush), {} bytes",
                    s.operations,
                    s.flushes,
                    s.fsyncs,
                    s.operations as f64 / s.flushes.max(1) as f64,
                    s.bytes
                )
            };
            (Arc::new(storage), Box::new(describe))
        }
        let dir = &self.data_dir;
        let opened = match self.mode {
            Mode::Memory => {
                return Ok((
                    Arc::new(MemoryStorage::new()),
                    Box::new(|| "in memory".to_owned()),
                ))
            }
            Mode::FileFast => FileStorage::open(dir, Durability::Buffered).map(file),
            Mode::FileDurable => FileStorage::open(dir, Durability::Fsync).map(file),
            #[cfg(feature = "redb")]
            Mode::Acid => tower_durable_streams::storage::RedbStorage::open(dir, self.shard_count)
                .map(|storage| {
                    let stats = storage.clone();
                    let describe = move || format!("{} redb write transactions", stats.commits());
                    (
                        Arc::new(storage) as Arc<dyn Storage>,
                        Box::new(describe) as Describe,
                    )
                }),
            #[cfg(not(feature = "redb"))]
            Mode::Acid => {
                let _ = self.shard_count;
                return Err("DS_STORAGE__MODE=acid needs the redb feature: \
                            cargo run --release --features redb --example server"
                    .into());
            }
        };
        opened.map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            format!(
                "cannot open storage in {} (DS_STORAGE__DATA_DIR): {e}{cause}",
                dir.display()
            )
        })
    }

    fn cors(&self) -> CorsLayer {
        let origin = if self.cors_origins.is_empty() {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(self.cors_origins.clone())
        };
        CorsLayer::new()
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
            .expose_headers(RESPONSE_HEADERS)
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
    };
    let address = SocketAddr::new(settings.host, settings.port);
    let listener = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {address} (DS_SERVER__HOST/DS_SERVER__PORT): {e}");
            std::process::exit(1);
        }
    };
    let local = listener.local_addr().expect("bound socket has an address");
    println!("listening on http://{local}{BASE_PATH}/");

    // Storage opens in the background (replaying a log takes a while): until it
    // is ready, /healthz answers and /readyz and the streams answer 503.
    let shutdown = CancellationToken::new();
    let ready: Arc<OnceLock<(DurableStreamsService, Describe)>> = Arc::new(OnceLock::new());
    tokio::spawn(open_storage(
        Arc::new(settings.clone()),
        shutdown.clone(),
        ready.clone(),
    ));

    let app = Router::new()
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
        )
        .nest_service(BASE_PATH, {
            let ready = ready.clone();
            tower::service_fn(move |request: Request<axum::body::Body>| {
                let ready = ready.clone();
                async move {
                    Ok::<_, Infallible>(match ready.get() {
                        Some((streams, _)) => {
                            let Ok(response) = streams.clone().oneshot(request).await;
                            response.into_response()
                        }
                        None => {
                            (StatusCode::SERVICE_UNAVAILABLE, "opening storage\n").into_response()
                        }
                    })
                }
            })
        })
        .layer(settings.cors())
        .layer(TraceLayer::new_for_http());

    let server = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut signal = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let connection = server.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let connection = graceful.watch(connection.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut signal => break,
        }
    }
    // Live readers get their final answers (204, a last SSE control event), then
    // connections drain; after 900 ms whatever is left is cut. Every acknowledged
    // write is already durable (or, in file-fast mode, with the OS).
    tracing::info!("shutting down");
    shutdown.cancel();
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_millis(900)) => {
            tracing::warn!("connections still open after the grace period were closed");
        }
    }
    if let Some((_, describe)) = ready.get() {
        tracing::info!(storage = %describe(), "stopped");
        eprintln!("storage: {}", describe());
    }
}

/// Opens storage off the reactor (replay is blocking work), loads its streams
/// and publishes the ready service; exits the process if storage cannot open.
async fn open_storage(
    settings: Arc<Settings>,
    shutdown: CancellationToken,
    ready: Arc<OnceLock<(DurableStreamsService, Describe)>>,
) {
    let opening = settings.clone();
    let opened = tokio::task::spawn_blocking(move || opening.storage())
        .await
        .unwrap_or_else(|e| Err(format!("opening storage panicked: {e}")));
    let (storage, describe) = match opened {
        Ok(storage) => storage,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(1);
        }
    };
    let streams = DurableStreamsService::builder()
        .storage_arc(storage)
        .base_path(BASE_PATH)
        .long_poll_timeout(settings.long_poll_timeout)
        .sse_reconnect_interval(settings.sse_reconnect_interval)
        .shutdown(shutdown)
        .build()
        .expect("settings were validated at start");
    if let Err(e) = streams.ready().await {
        eprintln!("error: cannot load streams from storage: {e}");
        std::process::exit(1);
    }
    tracing::info!(mode = ?settings.mode, "storage ready");
    let _ = ready.set((streams, describe));
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
