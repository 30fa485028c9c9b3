//! Space comes back: the file log's compactor gives back the space of deleted
//! streams whose records share segments with live ones (live streams read the
//! same before, during and after, and a reopened store replays the rewritten
//! segments), and `RedbStorage::compact` shrinks redb files.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use http::{Method, StatusCode};
use tower_durable_streams::storage::{Compaction, Durability, FileStorage};
use tower_durable_streams::DurableStreamsService;

fn service(storage: FileStorage) -> DurableStreamsService {
    DurableStreamsService::builder()
        .storage(storage)
        .build()
        .expect("service")
}

/// Ten streams written in turns (so every segment holds all of them), then
/// nine deleted.
async fn interleaved(svc: &DurableStreamsService) -> Vec<u8> {
    for s in 0..10 {
        put(svc, &format!("/s{s}"), "application/octet-stream", b"").await;
    }
    let mut kept = Vec::new();
    for round in 0..200u32 {
        for s in 0..10u8 {
            let mut chunk = vec![s; 500];
            chunk[..4].copy_from_slice(&round.to_be_bytes());
            let reply = post(svc, &format!("/s{s}"), "application/octet-stream", &chunk).await;
            assert_eq!(reply.status, StatusCode::NO_CONTENT);
            if s == 0 {
                kept.extend_from_slice(&chunk);
            }
        }
    }
    for s in 1..10 {
        let reply = send(svc, Method::DELETE, &format!("/s{s}"), &[], b"").await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
    }
    kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_gives_back_the_space_of_deleted_streams() {
    for durability in [Durability::Fsync, Durability::Buffered] {
        let dir = tempfile::tempdir().expect("dir");
        let storage = FileStorage::open_with(dir.path(), durability, 64 * 1024)
            .expect("open")
            .with_compaction(Compaction::off());
        let svc = service(storage.clone());
        let kept = interleaved(&svc).await;
        let before = log_bytes(dir.path());
        // Every segment holds a live record: deleting frees nothing by itself.
        assert!(before > 900_000, "{before}");

        // Readers of the live stream run the whole time.
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (svc, stop, kept) = (svc.clone(), stop.clone(), kept.clone());
                tokio::spawn(async move {
                    let mut reads = 0;
                    while !stop.load(Ordering::Relaxed) || reads == 0 {
                        assert_eq!(read_all(&svc, "/s0").await, kept);
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let compacting = storage.clone();
        let report = tokio::task::spawn_blocking(move || compacting.compact_now())
            .await
            .expect("task")
            .expect("compact");
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            assert!(reader.await.expect("reader") > 0);
        }
        let after = log_bytes(dir.path());
        assert!(report.segments > 10, "{report:?}");
        assert!(after < before / 5, "{after} of {before} bytes left");
        assert_eq!(report.bytes_freed, before - after);
        assert_eq!(storage.stats().compactions, report.segments);
        assert_eq!(read_all(&svc, "/s0").await, kept);

        // Writes go on; a second pass finds nothing to do.
        assert_eq!(
            post(&svc, "/s0", "application/octet-stream", b"more")
                .await
                .status,
            StatusCode::NO_CONTENT
        );
        let again = storage.compact_now().expect("compact again");
        assert_eq!(again.segments, 0, "{again:?}");

        // Reopened: the rewritten segments replay to the same streams.
        drop(svc);
        drop(storage);
        let svc =
            service(FileStorage::open_with(dir.path(), durability, 64 * 1024).expect("reopen"));
        svc.start().await.expect("load");
        let mut expected = kept.clone();
        expected.extend_from_slice(b"more");
        assert_eq!(read_all(&svc, "/s0").await, expected);
        for s in 1..10 {
            assert_eq!(
                get(&svc, &format!("/s{s}")).await.status,
                StatusCode::NOT_FOUND,
                "deleted streams stay deleted"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_compactor_runs_by_itself() {
    let dir = tempfile::tempdir().expect("dir");
    let storage = FileStorage::open_with(dir.path(), Durability::Fsync, 64 * 1024)
        .expect("open")
        .with_compaction(
            Compaction::default()
                .interval(std::time::Duration::from_millis(20))
                .rate(64 * 1024 * 1024),
        );
    let svc = service(storage.clone());
    let kept = interleaved(&svc).await;
    let before = log_bytes(dir.path());
    let mut after = before;
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        after = log_bytes(dir.path());
        if after < before / 5 {
            break;
        }
    }
    assert!(
        after < before / 5,
        "{after} of {before} bytes left after 10 s"
    );
    assert_eq!(read_all(&svc, "/s0").await, kept);
}

#[tokio::test]
async fn a_stray_copy_from_a_crash_is_removed_on_open() {
    let dir = tempfile::tempdir().expect("dir");
    let storage = FileStorage::open_with(dir.path(), Durability::Fsync, 64 * 1024)
        .expect("open")
        .with_compaction(Compaction::off());
    let svc = service(storage);
    let kept = interleaved(&svc).await;
    drop(svc);
    // What a crash in the middle of a copy leaves: a partial copy.
    let stray = dir.path().join("log").join("0000000001.log.compacting");
    fs::write(&stray, b"half a copy").expect("stray");
    let svc =
        service(FileStorage::open_with(dir.path(), Durability::Fsync, 64 * 1024).expect("reopen"));
    svc.start().await.expect("load");
    assert!(!stray.exists());
    assert_eq!(read_all(&svc, "/s0").await, kept);
}

#[tokio::test]
async fn redb_files_shrink_when_compacted() {
    use tower_durable_streams::storage::RedbStorage;
    let dir = tempfile::tempdir().expect("dir");
    let svc = DurableStreamsService::builder()
        .storage(RedbStorage::open(dir.path(), 1).expect("open"))
        .build()
        .expect("service");
    let kept = interleaved(&svc).await;
    drop(svc);
    let file = dir.path().join("redb").join("shard-000.redb");
    let before = fs::metadata(&file).expect("meta").len();
    let report = RedbStorage::compact(dir.path(), 1).expect("compact");
    let after = fs::metadata(&file).expect("meta").len();
    assert_eq!(report.segments, 1);
    assert_eq!(report.bytes_freed, before - after);
    assert!(after < before / 2, "{after} of {before} bytes left");
    let svc = DurableStreamsService::builder()
        .storage(RedbStorage::open(dir.path(), 1).expect("reopen"))
        .build()
        .expect("service");
    svc.start().await.expect("load");
    assert_eq!(read_all(&svc, "/s0").await, kept);
    assert_eq!(get(&svc, "/s1").await.status, StatusCode::NOT_FOUND);
}
