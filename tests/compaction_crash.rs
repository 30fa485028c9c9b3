//! kill -9 while the file log's compactor rewrites segments: the example
//! server runs file-durable and file-fast with tiny segments and a compactor
//! that looks every 20 ms, writers create streams, append and delete most of
//! them again, and the process is killed at a random moment, several times.
//! After every restart each live stream holds exactly its acknowledged
//! appends (plus at most the one that was in flight), each acknowledged delete
//! stayed deleted, and at the end the deleted streams' space has come back.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::log_bytes;
use common::process::{server_binary, start_with, wait_ready, Client, Server};
use http::{Method, StatusCode};

const ROUNDS: usize = 4;
const WRITERS: usize = 3;

#[derive(Default, Clone)]
struct Ledger {
    /// Acknowledged appends per live stream, and the one in flight if any.
    live: HashMap<String, (Vec<u8>, Option<Vec<u8>>)>,
    /// Streams whose delete was acknowledged.
    deleted: Vec<String>,
    /// Streams whose delete was in flight.
    deleting: Vec<String>,
}

fn start(binary: &Path, mode: &str, dir: &Path) -> Server {
    let dir = dir.display().to_string();
    start_with(
        binary,
        &[
            ("DS_STORAGE__MODE", mode),
            ("DS_STORAGE__DATA_DIR", &dir),
            ("DS_STORAGE__FILE_SEGMENT_BYTES", "16384"),
            ("DS_STORAGE__FILE_COMPACTION_INTERVAL_MS", "20"),
            ("DS_STORAGE__FILE_COMPACTION_RATE", "268435456"),
        ],
    )
}

async fn verify(address: SocketAddr, ledger: &mut Ledger) {
    let mut client = Client::connect(address).await.expect("connect");
    for (path, (acked, in_flight)) in ledger.live.iter_mut() {
        let found = client.read_all(path).await.map(|(data, _)| data.to_vec());
        let found = found.unwrap_or_else(|| panic!("{path} lost"));
        match in_flight.take() {
            Some(extra) if found.len() > acked.len() => {
                let mut with = acked.clone();
                with.extend_from_slice(&extra);
                assert_eq!(
                    found, with,
                    "{path}: acknowledged bytes and the one in flight"
                );
                *acked = with;
            }
            _ => assert_eq!(&found, acked, "{path}: exactly the acknowledged bytes"),
        }
    }
    for path in &ledger.deleted {
        assert!(client.read_all(path).await.is_none(), "{path} came back");
    }
    for path in std::mem::take(&mut ledger.deleting) {
        if client.read_all(&path).await.is_none() {
            ledger.deleted.push(path);
        }
        // Still there: a delete in flight that did not happen; left alone.
    }
}

/// Creates, appends to and deletes streams until the process dies.
async fn churn(address: SocketAddr, writer: usize, round: usize, ledger: Arc<Mutex<Ledger>>) {
    let Some(mut client) = Client::connect(address).await else {
        return;
    };
    let ct = [("content-type", "application/octet-stream".to_owned())];
    for i in 0.. {
        let path = format!("/w{writer}r{round}s{i}");
        let Some((status, _, _)) = client.send(Method::PUT, &path, &ct, Bytes::new()).await else {
            return;
        };
        assert_eq!(status, StatusCode::CREATED);
        ledger
            .lock()
            .unwrap()
            .live
            .insert(path.clone(), (Vec::new(), None));
        for a in 0..6u8 {
            let chunk: Vec<u8> = std::iter::repeat_n(b'a' + a, 700)
                .chain(path.bytes())
                .collect();
            ledger.lock().unwrap().live.get_mut(&path).unwrap().1 = Some(chunk.clone());
            let Some((status, _, _)) = client
                .send(Method::POST, &path, &ct, Bytes::from(chunk.clone()))
                .await
            else {
                return;
            };
            assert_eq!(status, StatusCode::NO_CONTENT);
            let mut l = ledger.lock().unwrap();
            let entry = l.live.get_mut(&path).unwrap();
            entry.0.extend_from_slice(&chunk);
            entry.1 = None;
        }
        // Four streams in five are deleted again.
        if i % 5 != 0 {
            {
                let mut l = ledger.lock().unwrap();
                l.live.remove(&path);
                l.deleting.push(path.clone());
            }
            let Some((status, _, _)) = client.send(Method::DELETE, &path, &[], Bytes::new()).await
            else {
                return;
            };
            assert_eq!(status, StatusCode::NO_CONTENT);
            let mut l = ledger.lock().unwrap();
            l.deleting.retain(|p| p != &path);
            l.deleted.push(path);
        }
    }
}

async fn run_mode(mode: &str) {
    let binary = server_binary();
    let dir = tempfile::tempdir().expect("dir");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut written = 0u64;
    for round in 0..ROUNDS {
        let server = start(&binary, mode, dir.path());
        wait_ready(server.address).await;
        {
            let mut snapshot = ledger.lock().unwrap().clone();
            verify(server.address, &mut snapshot).await;
            *ledger.lock().unwrap() = snapshot;
        }
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(churn(server.address, w, round, ledger.clone())))
            .collect();
        // Kill at a moment that varies from round to round and run to run.
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_micros() as u64 % 700)
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(600 + jitter)).await;
        written = written.max(log_bytes(dir.path()));
        server.kill();
        for task in tasks {
            task.await.expect("writer");
        }
    }
    // A last start: everything checked once more, then the compactor gives
    // the deleted streams' space back.
    let server = start(&binary, mode, dir.path());
    wait_ready(server.address).await;
    let mut snapshot = ledger.lock().unwrap().clone();
    verify(server.address, &mut snapshot).await;
    let live: u64 = snapshot
        .live
        .values()
        .map(|(acked, _)| acked.len() as u64)
        .sum();
    assert!(!snapshot.deleted.is_empty() && live > 0);
    let mut size = log_bytes(dir.path());
    for _ in 0..100 {
        if size < live * 3 + 64 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        size = log_bytes(dir.path());
    }
    assert!(
        size < live * 3 + 64 * 1024,
        "log holds {size} bytes for {live} live bytes (at most {written} seen before)"
    );
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_durable_compaction_survives_kill_9() {
    run_mode("file-durable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_fast_compaction_survives_kill_9() {
    run_mode("file-fast").await;
}
