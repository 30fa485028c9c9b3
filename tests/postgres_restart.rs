//! PostgreSQL restarts under load: requests during the outage get 503 with
//! `Retry-After` (never a hang, never a 500), the instances reconnect by
//! themselves, and no acknowledged append is lost. It restarts the machine's
//! cluster, so it runs alone in this binary, and only with CI set or
//! `TEST_POSTGRES_RESTART=1`.
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use common::cluster::{check, cluster, records, Load};
use common::postgres::schema;
use common::process::wait_ready;

/// The cluster this machine runs, for `pg_ctlcluster`.
fn cluster_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql: a Debian PostgreSQL cluster")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max()
        .expect("a cluster version")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_is_503_then_nothing_lost() {
    let Some(schema) = schema().await else { return };
    if std::env::var_os("TEST_POSTGRES_RESTART").is_none() && std::env::var_os("CI").is_none() {
        eprintln!(
            "SKIPPED: restarting PostgreSQL under load; set TEST_POSTGRES_RESTART=1 (CI does) \
             to run it: it restarts the local cluster with pg_ctlcluster"
        );
        return;
    }
    let servers = cluster(&schema, 2).await;
    let load = Load::start(&servers, 4);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let version = cluster_version();
    let restarted = tokio::task::spawn_blocking(move || {
        std::process::Command::new("pg_ctlcluster")
            .args([
                "--skip-systemctl-redirect",
                &version,
                "main",
                "restart",
                "--mode",
                "fast",
            ])
            .status()
    })
    .await
    .expect("join")
    .expect("run pg_ctlcluster");
    assert!(restarted.success(), "pg_ctlcluster restart failed");
    // Both instances are ready again by themselves.
    for server in &servers {
        wait_ready(server.address).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let outcomes = load.finish().await;
    let found = records(servers[1].address).await;
    let acked = check(&found, &outcomes);
    let unavailable: usize = outcomes.iter().map(|o| o.unavailable).sum();
    let longest = outcomes.iter().map(|o| o.longest).max().unwrap_or_default();
    eprintln!(
        "PostgreSQL restart: {acked} acknowledged appends all present once, {unavailable} answers \
         503 + Retry-After during the outage, longest request {longest:?}"
    );
    assert!(acked > 20);
}
