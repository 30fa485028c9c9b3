//! Engine and storage micro-benchmarks through the in-process `Streams`
//! handle: append and read on memory storage, and group commit on fsynced file
//! storage.
//!
//! Run with `cargo bench --bench engine`.

use bytes::Bytes;
use divan::Bencher;
use tower_durable_streams::storage::{Durability, FileStorage};
use tower_durable_streams::streams::CreateOptions;
use tower_durable_streams::{DurableStreamsService, MemoryStorage, Offset, Storage, Streams};

fn main() {
    divan::main();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn streams(storage: impl Storage) -> Streams {
    DurableStreamsService::builder()
        .storage(storage)
        .build()
        .expect("service")
        .streams()
}

fn create(rt: &tokio::runtime::Runtime, streams: &Streams, path: &str) {
    rt.block_on(streams.create(path, CreateOptions::new()))
        .expect("create");
}

#[divan::bench(args = [64, 1024])]
fn append_memory(bencher: Bencher, size: usize) {
    let rt = runtime();
    let streams = streams(MemoryStorage::new());
    create(&rt, &streams, "/s");
    let data = Bytes::from(vec![b'x'; size]);
    bencher
        .counter(divan::counter::BytesCount::new(size))
        .bench_local(|| {
            rt.block_on(streams.append("/s", data.clone()))
                .expect("append")
        });
}

#[divan::bench(args = [1024, 65536])]
fn read_memory_1mib(bencher: Bencher, append_size: usize) {
    let rt = runtime();
    let streams = streams(MemoryStorage::new());
    create(&rt, &streams, "/s");
    let data = Bytes::from(vec![b'x'; append_size]);
    for _ in 0..(1024 * 1024 / append_size) {
        rt.block_on(streams.append("/s", data.clone()))
            .expect("append");
    }
    bencher
        .counter(divan::counter::BytesCount::new(1024 * 1024usize))
        .bench_local(|| {
            rt.block_on(streams.read("/s", Offset::START))
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
    let streams = streams(storage);
    for i in 0..64 {
        create(&rt, &streams, &format!("/s{i}"));
    }
    let data = Bytes::from(vec![b'x'; 1024]);
    bencher.counter(64u32).bench_local(|| {
        rt.block_on(async {
            let tasks: Vec<_> = (0..64)
                .map(|i| {
                    let (streams, data) = (streams.clone(), data.clone());
                    tokio::spawn(async move { streams.append(&format!("/s{i}"), data).await })
                })
                .collect();
            for task in tasks {
                task.await.expect("task").expect("append");
            }
        })
    });
}
