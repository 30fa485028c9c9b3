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

mod backup;
mod config;
mod connection;
mod serve;
mod storage;
mod tls;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use config::{Config, Mode};

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
    /// Give back the space of deleted streams now (with the server stopped):
    /// rewrite mostly-dead log segments (file modes) or compact the redb
    /// databases (acid). File modes also do this in the background.
    Compact,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Conflict {
    Skip,
    Fail,
    Replace,
}

fn fail(message: impl std::fmt::Display, code: i32) -> ! {
    eprintln!("error: {message}");
    std::process::exit(code)
}

/// The log filter: `RUST_LOG` when set, else `log.rust_log`
/// (`DS_LOG__RUST_LOG`, as operators of the older Rust server set it).
fn log_filter(config: &Config) -> tracing_subscriber::EnvFilter {
    let setting = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log.rust_log.clone());
    tracing_subscriber::EnvFilter::try_new(&setting).unwrap_or_else(|e| {
        fail(
            format!("log filter {setting:?} (RUST_LOG or log.rust_log): {e}"),
            2,
        )
    })
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let root = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let config = Config::load(&root, cli.profile.as_deref(), cli.config.as_deref())
        .unwrap_or_else(|e| fail(e, 2));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(log_filter(&config))
        .init();
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
        Command::Serve => serve::serve(config).await,
        Command::Export { out } => backup::export(config, out).await,
        Command::Import { input, on_conflict } => backup::import(config, input, on_conflict).await,
        Command::Compact => storage::compact(&config),
    }
}
