//! A PostgreSQL schema of its own for each test, at `TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`). Without a reachable
//! database a test is skipped with a message, unless `CI` is set: then it
//! fails.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_postgres::NoTls;
use tower_durable_streams::storage::{PostgresConfig, PostgresStorage};

pub fn url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Runs `sql` on a fresh connection.
pub async fn execute(sql: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls).await?;
    tokio::spawn(connection);
    client.batch_execute(sql).await
}

/// A new, empty schema name for this test, or `None` (skip) when the
/// database is unreachable outside CI. Drops the schemas of test processes
/// that are gone.
pub async fn schema() -> Option<String> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(&url(), NoTls),
    )
    .await;
    let client = match connected {
        Ok(Ok((client, connection))) => {
            tokio::spawn(connection);
            client
        }
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            if std::env::var_os("CI").is_some() {
                panic!(
                    "PostgreSQL at {} is unreachable and CI is set: {why}",
                    url()
                );
            }
            eprintln!(
                "SKIPPED: PostgreSQL at {} is unreachable ({why}); start PostgreSQL or set \
                 TEST_POSTGRES_URL to run the PostgreSQL tests",
                url()
            );
            return None;
        }
    };
    let stale = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'ds\\_t\\_%'",
            &[],
        )
        .await
        .expect("list schemas");
    for row in stale {
        let name: String = row.get(0);
        let pid = name.split('_').nth(2).unwrap_or_default();
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .await;
        }
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Some(format!("ds_t_{}_{n}", std::process::id()))
}

/// The settings tests use: a small pool, a short TTL grace.
pub fn config(schema: &str) -> PostgresConfig {
    PostgresConfig::new(url())
        .schema(schema)
        .pool_size(4)
        .ttl_grace(Duration::from_millis(300))
}

pub async fn connect(schema: &str) -> PostgresStorage {
    PostgresStorage::connect(config(schema))
        .await
        .expect("connect to PostgreSQL")
}
