//! Engine and storage micro-benchmarks: append and read on memory storage, and
//! group commit on fsynced file storage.
//!
//! Run with `cargo bench --bench engine`.

use std::sync::Arc;

use bytes::Bytes;
use divan::Bencher;
use tower_durable_streams::engine::{AppendRequest, CreateRequest, Engine};
use tower_durable_streams::protocol::ReadFrom;
use tower_durable_streams::storage::{Durability, FileStorage};
use tower_durable_streams::{MemoryStorage, Storage};

fn main() {
    divan::main();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn engine(storage: impl Storage) -> Engine {
    Engine::new(Arc::new(storage), 1024 * 1024)
}

fn create(rt: &tokio::runtime::Runtime, engine: &Engine, key: &str) {
    rt.block_on(engine.create(
        key,
        CreateRequest {
            content_type: Some("application/octet-stream".into()),
            ..CreateRequest::default()
        },
    ))
    .expect("create");
}

fn append_request(size: usize) -> AppendRequest {
    AppendRequest {
        content_type: Some("application/octet-stream".into()),
        body: Bytes::from(vec![b'x'; size]),
        ..AppendRequest::default()
    }
}

#[divan::bench(args = [64, 1024])]
fn append_memory(bencher: Bencher, size: usize) {
    let rt = runtime();
    let engine = engine(MemoryStorage::new());
    create(&rt, &engine, "/s");
    let request = append_request(size);
    bencher
        .counter(divan::counter::BytesCount::new(size))
        .bench_local(|| {
            rt.block_on(engine.append("/s", request.clone()))
                .expect("append")
        });
}

#[divan::bench(args = [1024, 65536])]
fn read_memory_1mib(bencher: Bencher, append_size: usize) {
    let rt = runtime();
    let engine = engine(MemoryStorage::new());
    create(&rt, &engine, "/s");
    let request = append_request(append_size);
    for _ in 0..(1024 * 1024 / append_size) {
        rt.block_on(engine.append("/s", request.clone()))
            .expect("append");
    }
    bencher
        .counter(divan::counter::BytesCount::new(1024 * 1024usize))
        .bench_local(|| {
            rt.block_on(engine.read("/s", ReadFrom::Start))
                .expect("read")
        });
}

/// 64 concurrent appends (to 64 streams) into fsynced file storage: with group
/// commit they share a handful of fdatasync calls.
#[divan::bench(sample_count = 20)]
fn group_commit_64_appends(bencher: Bencher) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let storage = FileStorage::open(dir.path(), Durability::Fsync).expect("open");
    let engine = Arc::new(engine(storage));
    for i in 0..64 {
        create(&rt, &engine, &format!("/s{i}"));
    }
    let request = append_request(1024);
    bencher.counter(64u32).bench_local(|| {
        rt.block_on(async {
            let tasks: Vec<_> = (0..64)
                .map(|i| {
                    let (engine, request) = (engine.clone(), request.clone());
                    tokio::spawn(async move { engine.append(&format!("/s{i}"), request).await })
                })
                .collect();
            for task in tasks {
                task.await.expect("task").expect("append");
            }
        })
    });
}
