//! Several example-server processes over one PostgreSQL schema, under
//! concurrent appends, while one is killed with SIGKILL. Writers are
//! idempotent producers that retry what they do not know the outcome of, on
//! another instance if theirs is gone; every acknowledged append must be there
//! exactly once. (PostgreSQL restarting is `postgres_restart.rs`, a binary of
//! its own so that no other test runs meanwhile.)
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use common::cluster::{check, cluster, records, Load};
use common::postgres::schema;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_instances_loses_and_duplicates_nothing() {
    let Some(schema) = schema().await else { return };
    let mut servers = cluster(&schema, 3).await;
    let load = Load::start(&servers, 6);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The first instance dies mid-flight; its writers move on.
    let victim = servers.remove(0);
    load.instances.lock().expect("lock").remove(0);
    victim.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let outcomes = load.finish().await;
    let found = records(servers[1].address).await;
    let acked = check(&found, &outcomes);
    assert!(acked > 50, "only {acked} appends were acknowledged");
    eprintln!(
        "kill -9 of one of three: {acked} acknowledged appends, {} records stored, all present once",
        found.len()
    );
}
