//! Several example-server processes over one PostgreSQL schema, under
//! concurrent appends, while one is killed with SIGKILL. Writers are
//! idempotent producers that retry what they do not know the outcome of, on
//! another instance if theirs is gone; every acknowledged append must be there
//! exactly once. (PostgreSQL restarting is `postgres_restart.rs`, a binary of
//! its own so that no other test runs meanwhile.)
#![cfg(feature = "postgres")]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{check, create, records, start, writer};
use common::postgres::schema;
use common::process::{server_binary, wait_ready, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_instances_loses_and_duplicates_nothing() {
    let Some(schema) = schema().await else { return };
    let binary = server_binary();
    let mut servers: Vec<Server> = (0..3).map(|_| start(&binary, &schema)).collect();
    for server in &servers {
        wait_ready(server.address).await;
    }
    create(servers[0].address).await;
    let instances = Arc::new(Mutex::new(
        servers.iter().map(|s| s.address).collect::<Vec<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..6)
        .map(|w| tokio::spawn(writer(w, instances.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The first instance dies mid-flight; its writers move on.
    let victim = servers.remove(0);
    instances.lock().expect("lock").remove(0);
    victim.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for writer in writers {
        outcomes.push(writer.await.expect("writer"));
    }
    let found = records(servers[1].address).await;
    let acked = check(&found, &outcomes);
    assert!(acked > 50, "only {acked} appends were acknowledged");
    eprintln!(
        "kill -9 of one of three: {acked} acknowledged appends, {} records stored, all present once",
        found.len()
    );
}
