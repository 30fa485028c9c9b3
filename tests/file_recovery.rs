//! Damaged logs: a corrupt tail is cut off and never served, a corrupt record in
//! the middle makes its stream fail loudly, a damaged earlier segment stops the
//! open. Byte flips are made in the files between two opens of the store.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use http::StatusCode;
use tower_durable_streams::storage::{Durability, FileStorage};
use tower_durable_streams::DurableStreamsService;

fn service(dir: &Path) -> DurableStreamsService {
    service_with(FileStorage::open(dir, Durability::Fsync).expect("open"))
}

fn service_with(storage: FileStorage) -> DurableStreamsService {
    DurableStreamsService::builder()
        .storage(storage)
        .build()
        .expect("service")
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join("log"))
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

/// Flips one byte of the first occurrence of `needle` in `file`.
fn flip(file: &Path, needle: &[u8]) {
    let mut bytes = fs::read(file).expect("read segment");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in segment");
    bytes[at] ^= 0x55;
    fs::write(file, bytes).expect("write segment");
}

async fn populate(dir: &Path) {
    let svc = service(dir);
    put(&svc, "/t", "text/plain", b"other-stream").await;
    put(&svc, "/s", "text/plain", b"first-").await;
    post(&svc, "/s", "text/plain", b"second-").await;
    post(&svc, "/s", "text/plain", b"third").await;
    assert_eq!(get(&svc, "/s").await.text(), "first-second-third");
}

#[tokio::test]
async fn a_corrupt_tail_is_cut_off_and_never_served() {
    let dir = tempfile::tempdir().expect("dir");
    populate(dir.path()).await;
    let last = segments(dir.path()).pop().expect("segment");
    let before = fs::metadata(&last).expect("meta").len();
    flip(&last, b"third");

    let svc = service(dir.path());
    let read = get(&svc, "/s").await;
    assert_eq!(
        read.text(),
        "first-second-",
        "the damaged last append is gone"
    );
    assert_eq!(get(&svc, "/t").await.text(), "other-stream");
    assert!(
        fs::metadata(&last).expect("meta").len() < before,
        "the tail was truncated"
    );
    // The stream goes on from the recovered tail.
    post(&svc, "/s", "text/plain", b"again").await;
    assert_eq!(get(&svc, "/s").await.text(), "first-second-again");
}

#[tokio::test]
async fn a_corrupt_record_in_the_middle_fails_its_stream_loudly() {
    let dir = tempfile::tempdir().expect("dir");
    populate(dir.path()).await;
    let last = segments(dir.path()).pop().expect("segment");
    flip(&last, b"second-");

    let svc = service(dir.path());
    let read = get(&svc, "/s").await;
    assert_eq!(read.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !read.text().contains("first"),
        "no bytes of a damaged stream are served"
    );
    assert_eq!(
        get(&svc, "/t").await.text(),
        "other-stream",
        "other streams are unaffected"
    );
}

#[tokio::test]
async fn a_damaged_earlier_segment_stops_the_open() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let storage = FileStorage::open_with(dir.path(), Durability::Fsync, 256).expect("open");
        let svc = service_with(storage);
        put(&svc, "/s", "application/octet-stream", &[1u8; 100]).await;
        for _ in 0..5 {
            post(&svc, "/s", "application/octet-stream", &[2u8; 100]).await;
        }
    }
    let files = segments(dir.path());
    assert!(files.len() > 2, "several segments: {files:?}");
    // Damage the header of the first record of the first segment.
    let mut bytes = fs::read(&files[0]).expect("read");
    bytes[2] ^= 0xff;
    fs::write(&files[0], bytes).expect("write");
    let error = FileStorage::open(dir.path(), Durability::Fsync).expect_err("refused");
    assert!(error.to_string().contains("corrupt"), "{error}");
}

#[tokio::test]
async fn deleting_streams_frees_their_segments() {
    let dir = tempfile::tempdir().expect("dir");
    let storage = FileStorage::open_with(dir.path(), Durability::Fsync, 4096).expect("open");
    let svc = service_with(storage);
    for i in 0..20 {
        put(
            &svc,
            &format!("/s{i}"),
            "application/octet-stream",
            &[7u8; 1000],
        )
        .await;
    }
    let size = |dir: &Path| -> u64 {
        segments(dir)
            .iter()
            .map(|f| fs::metadata(f).expect("meta").len())
            .sum()
    };
    let full = size(dir.path());
    for i in 0..20 {
        send(&svc, http::Method::DELETE, &format!("/s{i}"), &[], b"").await;
    }
    // One more write rotates past the segments that held only deleted streams.
    put(&svc, "/keep", "application/octet-stream", &[1u8; 3000]).await;
    put(&svc, "/keep2", "application/octet-stream", &[1u8; 3000]).await;
    let after = size(dir.path());
    assert!(after < full / 2, "{after} bytes left of {full}");
    drop(svc);
    let svc = service(dir.path());
    assert_eq!(
        get(&svc, "/s3").await.status,
        StatusCode::NOT_FOUND,
        "deleted streams stay deleted"
    );
    assert_eq!(get(&svc, "/keep").await.body.len(), 3000);
}

#[tokio::test]
async fn a_damaged_header_before_intact_records_stops_the_open() {
    let dir = tempfile::tempdir().expect("dir");
    populate(dir.path()).await;
    let last = segments(dir.path()).pop().expect("segment");
    // An append record is a 24-byte header, 11 bytes of state (expected tail
    // and three absent fields), then the data: damage the header's stream id.
    let mut bytes = fs::read(&last).expect("read");
    let at = bytes
        .windows(7)
        .position(|w| w == b"second-")
        .expect("record");
    let header_start = at - 11 - 24;
    bytes[header_start + 8] ^= 0xff;
    fs::write(&last, bytes).expect("write");
    let opened = FileStorage::open(dir.path(), Durability::Fsync);
    assert!(
        opened.is_err(),
        "intact records after the damage must not be cut off"
    );
}
