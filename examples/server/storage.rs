//! Opening the configured storage, and describing its writer's work for the
//! log and for `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use tower_durable_streams::storage::{Compaction, Durability, FileStorage};
use tower_durable_streams::{MemoryStorage, Storage};

use crate::config::{Config, Mode};
use crate::fail;

/// Describes the storage writer's work so far (logged and exported as metrics).
pub type Describe = Box<dyn Fn() -> StorageFigures + Send + Sync>;

/// Counters of a durable backend's writer.
#[derive(Default)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub struct StorageFigures {
    pub summary: String,
    pub prometheus: String,
}

pub fn open_storage(config: &Config) -> Result<(Arc<dyn Storage>, Describe), String> {
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
                let compaction = Compaction::default()
                    .rate(config.storage.file_compaction_rate)
                    .interval(Duration::from_millis(
                        config.storage.file_compaction_interval_ms,
                    ))
                    .min_dead_ratio(
                        f64::from(config.storage.file_compaction_min_dead_percent) / 100.0,
                    );
                FileStorage::open_with(dir, durability, config.storage.file_segment_bytes)
                    .map(|storage| storage.with_compaction(compaction))
                    .map(|storage| {
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
            Mode::Postgres => unreachable!("opened by open_postgres"),
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
        (
            "storage_compactions",
            "Log segments rewritten by the compactor",
            s.compactions,
        ),
        (
            "storage_compacted_bytes",
            "Bytes the compactor gave back",
            s.compacted_bytes,
        ),
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

/// Connects to PostgreSQL and migrates the schema.
#[cfg(feature = "postgres")]
async fn open_postgres(config: &Config) -> Result<(Arc<dyn Storage>, Describe), String> {
    use tower_durable_streams::storage::{PostgresConfig, PostgresStorage};
    let section = &config.storage;
    let settings = PostgresConfig::new(&section.postgres_url)
        .pool_size(section.postgres_pool_size)
        .schema(&section.postgres_schema)
        .timeout(std::time::Duration::from_millis(
            section.postgres_timeout_ms,
        ));
    let storage = PostgresStorage::connect(settings).await.map_err(|e| {
        let cause = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        format!("cannot open PostgreSQL storage (storage.postgres_url, storage.postgres_schema): {e}{cause}")
    })?;
    let stats = storage.clone();
    let describe = move || {
        let s = stats.stats();
        StorageFigures {
            summary: format!(
                "{} appends in {} PostgreSQL transactions ({:.1} per transaction), {} failed batches",
                s.appends,
                s.commits,
                s.appends as f64 / s.commits.max(1) as f64,
                s.failed_batches
            ),
            prometheus: format!(
                "# HELP durable_streams_postgres_appends Appends committed by this instance.\n\
                 # TYPE durable_streams_postgres_appends counter\n\
                 durable_streams_postgres_appends_total {}\n\
                 # HELP durable_streams_postgres_commits Write transactions committed by this instance.\n\
                 # TYPE durable_streams_postgres_commits counter\n\
                 durable_streams_postgres_commits_total {}\n\
                 # HELP durable_streams_postgres_failed_batches Write batches that failed.\n\
                 # TYPE durable_streams_postgres_failed_batches counter\n\
                 durable_streams_postgres_failed_batches_total {}\n",
                s.appends, s.commits, s.failed_batches
            ),
        }
    };
    Ok((Arc::new(storage), Box::new(describe)))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_: &Config) -> Result<(Arc<dyn Storage>, Describe), String> {
    Err("storage.mode = postgres needs the postgres feature: \
         cargo run --release --features postgres --example server"
        .into())
}

pub async fn open_blocking(config: &Config) -> (Arc<dyn Storage>, Describe) {
    if config.storage.mode == Mode::Postgres {
        return open_postgres(config).await.unwrap_or_else(|e| fail(e, 1));
    }
    // Opening replays the log or the databases: blocking work, off the reactor.
    let opening = config.clone();
    tokio::task::spawn_blocking(move || open_storage(&opening))
        .await
        .unwrap_or_else(|e| Err(format!("opening storage panicked: {e}")))
        .unwrap_or_else(|e| fail(e, 1))
}

/// `server compact`: gives back the space of deleted streams, now.
pub fn compact(config: &Config) {
    let dir = &config.storage.data_dir;
    let report = match config.storage.mode {
        Mode::FileFast | Mode::FileDurable => {
            FileStorage::open_with(dir, Durability::Fsync, config.storage.file_segment_bytes)
                .map(|storage| {
                    storage.with_compaction(Compaction::off().min_dead_ratio(
                        f64::from(config.storage.file_compaction_min_dead_percent) / 100.0,
                    ))
                })
                .and_then(|storage| storage.compact_now())
        }
        #[cfg(feature = "redb")]
        Mode::Acid => tower_durable_streams::storage::RedbStorage::compact(
            dir,
            config.storage.acid_shard_count,
        ),
        _ => fail(
            "compact works on the file and acid storage modes (storage.mode)",
            2,
        ),
    }
    .unwrap_or_else(|e| fail(format!("compaction failed: {e}"), 1));
    eprintln!(
        "compacted {} files, {} bytes given back",
        report.segments, report.bytes_freed
    );
}
