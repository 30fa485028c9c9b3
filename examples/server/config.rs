//! Layered settings: built-in defaults < `config/default.toml` <
//! `config/<profile>.toml` (`--profile`) < `config/local.toml` < `--config <path>`
//! < environment variables `DS_<SECTION>__<FIELD>`. Unknown keys and bad values
//! stop the start with a message naming the key and where it came from.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::connection::Timeouts;

/// Where streams are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// In memory.
    Memory,
    /// File log, acknowledged when written to the OS.
    FileFast,
    /// File log, acknowledged after fdatasync.
    FileDurable,
    /// redb, acknowledged after a durable commit.
    #[serde(alias = "redb")]
    Acid,
    /// PostgreSQL, shared by several instances; acknowledged after commit.
    Postgres,
}

/// Every setting of the server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerSection,
    pub http: HttpSection,
    pub storage: StorageSection,
    pub limits: LimitsSection,
    pub tls: TlsSection,
    pub metrics: MetricsSection,
    pub log: LogSection,
    pub subscriptions: SubscriptionsSection,
}

/// The subscription APIs (webhooks and pull-wake workers), in a server built
/// with the `subscriptions` feature.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionsSection {
    /// Serve them (off by default).
    pub enabled: bool,
    /// Also accept webhooks to localhost and 127.0.0.x (development).
    pub allow_development_webhooks: bool,
    /// The webhook signing key's 32-byte seed, base64url. Without it the key
    /// is made once and kept in the store, which every instance shares.
    pub signing_seed: Option<String>,
    /// PEM files of extra root certificates for `https` webhooks (a
    /// private CA), beside the Mozilla roots built in.
    pub webhook_root_certificates: Vec<std::path::PathBuf>,
    /// The most existing streams a new subscription's pattern may match.
    pub max_backfill_streams: Option<usize>,
    /// The subscription log's length that sets off its compaction.
    pub compact_log_after_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// The log filter (tracing's `EnvFilter` syntax); `RUST_LOG` wins when set.
    pub rust_log: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            rust_log: "info,tower_durable_streams::access=debug".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address to listen on.
    pub host: IpAddr,
    /// Port to listen on (0: any free port).
    pub port: u16,
    /// How long a long-poll waits before 204.
    pub long_poll_timeout_secs: u64,
    /// How long an SSE response stays open.
    pub sse_reconnect_interval_secs: u64,
    /// How long shutdown waits for connections to drain.
    pub shutdown_grace_ms: u64,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Longest a request head may take from its first byte.
    pub header_read_timeout_ms: u64,
    /// Longest a TLS handshake may take.
    pub tls_handshake_timeout_ms: u64,
    /// A connection with no request in progress closes after this long.
    pub idle_timeout_ms: u64,
    /// A connection whose client reads nothing of our answer for this long closes.
    pub write_stall_timeout_ms: u64,
    /// Kernel send buffer of each connection (`SO_SNDBUF`; 0, the default:
    /// the kernel's autotuning). A fixed, cache-sized buffer (256 KiB) sends
    /// catch-up reads faster on loopback and in a data centre, but caps a
    /// connection's bytes in flight, which slows clients far away.
    pub send_buffer_bytes: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            host: [127, 0, 0, 1].into(),
            port: 4437,
            long_poll_timeout_secs: 30,
            sse_reconnect_interval_secs: 60,
            shutdown_grace_ms: 900,
            max_connections: 16_384,
            header_read_timeout_ms: 10_000,
            tls_handshake_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            write_stall_timeout_ms: 30_000,
            send_buffer_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Allowed browser origins, comma-separated, or `*`.
    pub cors_origins: String,
    /// Build `Location` from `Forwarded` / `X-Forwarded-*` (behind a proxy).
    pub trust_forwarded_headers: bool,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            cors_origins: "*".into(),
            trust_forwarded_headers: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    pub mode: Mode,
    pub data_dir: PathBuf,
    pub acid_shard_count: usize,
    /// postgres mode: the database URL.
    pub postgres_url: String,
    /// postgres mode: connections in the pool.
    pub postgres_pool_size: usize,
    /// postgres mode: the schema of the tables.
    pub postgres_schema: String,
    /// postgres mode: the longest a database call may take (503 beyond).
    pub postgres_timeout_ms: u64,
    /// file modes: about how large a log segment grows before the next starts.
    pub file_segment_bytes: u64,
    /// file modes: the compactor's I/O rate in bytes/s; 0 turns it off.
    pub file_compaction_rate: u64,
    /// file modes: how often the compactor looks for mostly-dead segments.
    pub file_compaction_interval_ms: u64,
    /// file modes: the dead share (percent) from which a segment is rewritten.
    pub file_compaction_min_dead_percent: u8,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            mode: Mode::Memory,
            data_dir: "./data/streams".into(),
            acid_shard_count: 16,
            postgres_url: String::new(),
            postgres_pool_size: 16,
            postgres_schema: "public".into(),
            postgres_timeout_ms: 5_000,
            file_segment_bytes: 64 * 1024 * 1024,
            file_compaction_rate: 32 * 1024 * 1024,
            file_compaction_interval_ms: 10_000,
            file_compaction_min_dead_percent: 50,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest request body (413 beyond).
    pub max_append_bytes: usize,
    /// Longest stream, 0 for no limit (413 for the append that would cross it).
    pub max_stream_bytes: u64,
    /// Memory mode only: total stream bytes held (507 beyond).
    pub max_memory_bytes: u64,
    /// Long-poll and SSE reads at once (429 beyond).
    pub max_live_readers: usize,
    /// Writes in progress at once (503 beyond).
    pub max_inflight_writes: usize,
    /// Request-body bytes held at once across all writes (503 beyond).
    pub max_buffered_body_bytes: usize,
    /// Slowest average request-body rate after the grace (408 below).
    pub min_body_rate: u64,
    /// How long a request body may take before `min_body_rate` applies.
    pub body_grace_ms: u64,
    /// Stream bytes read from storage at a time; also the most one long-poll
    /// answer or SSE event carries.
    pub max_read_bytes: usize,
    /// The most stream bytes one catch-up answer carries.
    pub max_response_bytes: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_append_bytes: 64 * 1024 * 1024,
            max_stream_bytes: 0,
            max_memory_bytes: 1024 * 1024 * 1024,
            max_live_readers: 10_000,
            max_inflight_writes: 1_024,
            max_buffered_body_bytes: 256 * 1024 * 1024,
            min_body_rate: 1_024,
            body_grace_ms: 10_000,
            max_read_bytes: 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain; TLS is on when this and `key_path` are set.
    pub cert_path: Option<PathBuf>,
    /// PEM private key.
    pub key_path: Option<PathBuf>,
    /// PEM CA certificates; clients must present a certificate they signed.
    pub client_ca_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Serve Prometheus metrics.
    pub enabled: bool,
    /// Where.
    pub path: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: true,
            path: "/metrics".into(),
        }
    }
}

impl Config {
    pub fn long_poll_timeout(&self) -> Duration {
        Duration::from_secs(self.server.long_poll_timeout_secs)
    }

    pub fn sse_reconnect_interval(&self) -> Duration {
        Duration::from_secs(self.server.sse_reconnect_interval_secs)
    }

    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            header_read: Duration::from_millis(self.server.header_read_timeout_ms),
            idle: Duration::from_millis(self.server.idle_timeout_ms),
            write_stall: Duration::from_millis(self.server.write_stall_timeout_ms),
        }
    }

    /// Loads every layer and checks the result.
    pub fn load(root: &Path, profile: Option<&str>, file: Option<&Path>) -> Result<Config, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(root.join("config/default.toml")));
        if let Some(profile) = profile {
            let path = root.join(format!("config/{profile}.toml"));
            if !path.is_file() {
                return Err(format!(
                    "--profile {profile}: {} does not exist",
                    path.display()
                ));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Toml::file(root.join("config/local.toml")));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(format!("--config: {} does not exist", file.display()));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("DS_").split("__"));
        let config: Config = figment.extract().map_err(|e| describe(&e))?;
        config.check(&figment)
    }

    /// Checks what types cannot, naming the key and its source.
    fn check(self, figment: &Figment) -> Result<Config, String> {
        let at = |key: &str, problem: String| {
            let source = figment
                .find_metadata(key)
                .map(|m| source_name(m, key))
                .unwrap_or_else(|| "built-in default".into());
            Err(format!("{key}: {problem} [from {source}]"))
        };
        let shards = self.storage.acid_shard_count;
        if !(1..=256).contains(&shards) || !shards.is_power_of_two() {
            return at(
                "storage.acid_shard_count",
                format!("{shards} is not a power of two from 1 to 256"),
            );
        }
        if self.storage.mode == Mode::Postgres && self.storage.postgres_url.is_empty() {
            return at(
                "storage.postgres_url",
                "is required with storage.mode = postgres".into(),
            );
        }
        for (key, value) in [
            (
                "storage.postgres_pool_size",
                self.storage.postgres_pool_size as u64,
            ),
            (
                "storage.postgres_timeout_ms",
                self.storage.postgres_timeout_ms,
            ),
            (
                "server.long_poll_timeout_secs",
                self.server.long_poll_timeout_secs,
            ),
            (
                "server.sse_reconnect_interval_secs",
                self.server.sse_reconnect_interval_secs,
            ),
            (
                "limits.max_append_bytes",
                self.limits.max_append_bytes as u64,
            ),
            ("limits.max_read_bytes", self.limits.max_read_bytes as u64),
            ("limits.max_response_bytes", self.limits.max_response_bytes),
            (
                "limits.max_live_readers",
                self.limits.max_live_readers as u64,
            ),
            (
                "limits.max_inflight_writes",
                self.limits.max_inflight_writes as u64,
            ),
            ("limits.min_body_rate", self.limits.min_body_rate),
            (
                "storage.file_segment_bytes",
                self.storage.file_segment_bytes,
            ),
            (
                "storage.file_compaction_interval_ms",
                self.storage.file_compaction_interval_ms,
            ),
            ("limits.body_grace_ms", self.limits.body_grace_ms),
            ("server.max_connections", self.server.max_connections as u64),
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.tls_handshake_timeout_ms",
                self.server.tls_handshake_timeout_ms,
            ),
            ("server.idle_timeout_ms", self.server.idle_timeout_ms),
            (
                "server.write_stall_timeout_ms",
                self.server.write_stall_timeout_ms,
            ),
        ] {
            if value == 0 {
                return at(key, "must be greater than zero".into());
            }
        }
        if self.limits.max_buffered_body_bytes < self.limits.max_append_bytes {
            return at(
                "limits.max_buffered_body_bytes",
                format!(
                    "{} is smaller than limits.max_append_bytes ({})",
                    self.limits.max_buffered_body_bytes, self.limits.max_append_bytes
                ),
            );
        }
        if self.storage.file_compaction_min_dead_percent > 100 {
            return at(
                "storage.file_compaction_min_dead_percent",
                "must be from 0 to 100".into(),
            );
        }
        if self.limits.max_response_bytes < self.limits.max_read_bytes as u64 {
            return at(
                "limits.max_response_bytes",
                format!(
                    "{} is smaller than limits.max_read_bytes ({})",
                    self.limits.max_response_bytes, self.limits.max_read_bytes
                ),
            );
        }
        if self.server.send_buffer_bytes > u64::from(u32::MAX / 2) {
            return at(
                "server.send_buffer_bytes",
                "must be at most 2147483647 (or 0 for the kernel's autotuning)".into(),
            );
        }
        if self.server.max_connections > u32::MAX as usize {
            return at(
                "server.max_connections",
                "must be at most 4294967295".into(),
            );
        }
        match (&self.tls.cert_path, &self.tls.key_path) {
            (Some(_), None) => {
                return at(
                    "tls.cert_path",
                    "is set but tls.key_path is not; set both or neither".into(),
                )
            }
            (None, Some(_)) => {
                return at(
                    "tls.key_path",
                    "is set but tls.cert_path is not; set both or neither".into(),
                )
            }
            _ => {}
        }
        if self.tls.client_ca_path.is_some() && self.tls.cert_path.is_none() {
            return at(
                "tls.client_ca_path",
                "needs tls.cert_path and tls.key_path".into(),
            );
        }
        if !self.metrics.path.starts_with('/') || self.metrics.path.starts_with("/v1/stream") {
            return at(
                "metrics.path",
                format!(
                    "{:?} must start with / and stay outside /v1/stream",
                    self.metrics.path
                ),
            );
        }
        Ok(self)
    }
}

/// A figment error with its key and source spelled out.
fn describe(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                "<root>".to_owned()
            } else {
                e.path.join(".")
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| source_name(m, &key))
                .unwrap_or_else(|| "unknown source".into());
            format!("{key}: {} [from {source}]", e.kind)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where a value came from: a file's path, or the environment variable's name.
fn source_name(metadata: &figment::Metadata, key: &str) -> String {
    if metadata.name.contains("environment") {
        return format!(
            "environment variable DS_{}",
            key.replace('.', "__").to_uppercase()
        );
    }
    match &metadata.source {
        Some(source) => format!("{} {source}", metadata.name),
        None => metadata.name.to_string(),
    }
}
