//! Everything a stream is survives a clean restart of a durable backend:
//! bytes, content type, TTL and expiry, closure, `Stream-Seq`, producer state,
//! forks, soft-deleted sources and their reference counts.

mod common;

use std::path::Path;

use common::*;
use http::{Method, StatusCode};
use tower_durable_streams::storage::{Durability, FileStorage};
use tower_durable_streams::{DurableStreamsService, Storage};

fn service(storage: impl Storage) -> DurableStreamsService {
    DurableStreamsService::builder()
        .storage(storage)
        .base_path("/v1/stream")
        .build()
        .expect("service")
}

const PRODUCER: [(&str, &str); 4] = [
    ("content-type", "application/json"),
    ("producer-id", "p"),
    ("producer-epoch", "2"),
    ("producer-seq", "0"),
];

/// Writes one of everything; returns the tails to compare after the restart.
async fn write_everything(svc: &DurableStreamsService) -> Vec<String> {
    let ttl = [("content-type", "text/plain"), ("stream-ttl", "3600")];
    assert_eq!(
        send(svc, Method::PUT, "/a", &ttl, b"hello").await.status,
        StatusCode::CREATED
    );
    let seq = [("content-type", "text/plain"), ("stream-seq", "001")];
    let a = send(svc, Method::POST, "/a", &seq, b" world").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);

    let expires = [
        ("content-type", "application/json"),
        ("stream-expires-at", "2099-01-01T00:00:00Z"),
    ];
    send(svc, Method::PUT, "/j", &expires, b"").await;
    let j = send(svc, Method::POST, "/j", &PRODUCER, b"[1,2]").await;
    assert_eq!(j.status, StatusCode::OK);

    let closed = [("content-type", "text/plain"), ("stream-closed", "true")];
    let c = send(svc, Method::PUT, "/c", &closed, b"done").await;

    put(svc, "/src", "text/plain", b"base").await;
    send(
        svc,
        Method::PUT,
        "/fork",
        &[("stream-forked-from", "/v1/stream/src")],
        b"",
    )
    .await;
    let fork = post(svc, "/fork", "text/plain", b"+f").await;
    assert_eq!(
        send(svc, Method::DELETE, "/src", &[], b"").await.status,
        StatusCode::NO_CONTENT
    );

    put(svc, "/gone", "text/plain", b"x").await;
    send(svc, Method::DELETE, "/gone", &[], b"").await;
    vec![
        a.next_offset(),
        j.next_offset(),
        c.next_offset(),
        fork.next_offset(),
    ]
}

async fn check_everything(svc: &DurableStreamsService, tails: &[String]) {
    let a = get(svc, "/a").await;
    assert_eq!(
        (a.text(), a.next_offset()),
        ("hello world", tails[0].clone())
    );
    let head = send(svc, Method::HEAD, "/a", &[], b"").await;
    assert_eq!(
        (head.header("stream-ttl"), head.header("content-type")),
        (Some("3600"), Some("text/plain"))
    );
    let seq = [("content-type", "text/plain"), ("stream-seq", "001")];
    assert_eq!(
        send(svc, Method::POST, "/a", &seq, b"again").await.status,
        StatusCode::CONFLICT
    );

    let j = get(svc, "/j").await;
    assert_eq!(
        (j.json(), j.next_offset()),
        (serde_json::json!([1, 2]), tails[1].clone())
    );
    let head = send(svc, Method::HEAD, "/j", &[], b"").await;
    assert_eq!(
        head.header("stream-expires-at"),
        Some("2099-01-01T00:00:00Z")
    );
    let retry = send(svc, Method::POST, "/j", &PRODUCER, b"[1,2]").await;
    assert_eq!(
        retry.status,
        StatusCode::NO_CONTENT,
        "producer state survived"
    );
    let mut zombie = PRODUCER;
    zombie[2] = ("producer-epoch", "1");
    assert_eq!(
        send(svc, Method::POST, "/j", &zombie, b"[3]").await.status,
        StatusCode::FORBIDDEN
    );

    let c = get(svc, "/c").await;
    assert_eq!(
        (c.text(), c.header("stream-closed")),
        ("done", Some("true"))
    );
    assert_eq!(c.next_offset(), tails[2]);
    assert_eq!(
        post(svc, "/c", "text/plain", b"late").await.status,
        StatusCode::CONFLICT
    );

    assert_eq!(
        send(svc, Method::HEAD, "/src", &[], b"").await.status,
        StatusCode::GONE
    );
    let fork = get(svc, "/fork").await;
    assert_eq!(
        (fork.text(), fork.next_offset()),
        ("base+f", tails[3].clone())
    );
    assert_eq!(
        send(svc, Method::HEAD, "/gone", &[], b"").await.status,
        StatusCode::NOT_FOUND
    );

    // The reference count was rebuilt: deleting the last fork removes the source.
    assert_eq!(
        send(svc, Method::DELETE, "/fork", &[], b"").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(svc, Method::HEAD, "/src", &[], b"").await.status,
        StatusCode::NOT_FOUND
    );
}

async fn round_trip<S: Storage>(dir: &Path, open: impl Fn(&Path) -> S) {
    let svc = service(open(dir));
    let tails = write_everything(&svc).await;
    drop(svc);
    let svc = service(open(dir));
    check_everything(&svc, &tails).await;
    drop(svc);
    // And once more, after the deletes of the check were themselves replayed.
    let svc = service(open(dir));
    assert_eq!(get(&svc, "/a").await.text(), "hello world");
    assert_eq!(
        send(&svc, Method::HEAD, "/fork", &[], b"").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn file_fast_survives_restart() {
    let dir = tempfile::tempdir().expect("dir");
    round_trip(dir.path(), |d| {
        FileStorage::open(d, Durability::Buffered).expect("open")
    })
    .await;
}

#[tokio::test]
async fn file_durable_survives_restart() {
    let dir = tempfile::tempdir().expect("dir");
    round_trip(dir.path(), |d| {
        FileStorage::open(d, Durability::Fsync).expect("open")
    })
    .await;
}

#[cfg(feature = "redb")]
#[tokio::test]
async fn acid_survives_restart() {
    use tower_durable_streams::storage::RedbStorage;
    let dir = tempfile::tempdir().expect("dir");
    round_trip(dir.path(), |d| RedbStorage::open(d, 4).expect("open")).await;
}

#[tokio::test]
async fn a_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let first = FileStorage::open(dir.path(), Durability::Fsync).expect("open");
    let second = FileStorage::open(dir.path(), Durability::Fsync);
    assert!(second.is_err(), "two stores on one directory");
    drop(first);
    assert!(FileStorage::open(dir.path(), Durability::Fsync).is_ok());
}

#[tokio::test]
async fn an_unreferenced_deleted_source_is_cleaned_up_on_load() {
    use tower_durable_streams::storage::{Expiry, StreamConfig, StreamRecord};
    // What a crash between deleting a last fork and its source leaves behind.
    let storage = tower_durable_streams::MemoryStorage::new();
    let mut record = StreamRecord::new(StreamConfig::new(1, "text/plain", Expiry::Never), 0);
    record.soft_deleted = true;
    storage
        .create("/orphan", record, bytes::Bytes::from_static(b"x"))
        .await
        .expect("create");
    let svc = service(storage.clone());
    assert_eq!(
        send(&svc, Method::HEAD, "/orphan", &[], b"").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(
        storage.load().await.expect("load").is_empty(),
        "its data is gone"
    );
    assert_eq!(
        put(&svc, "/orphan", "text/plain", b"").await.status,
        StatusCode::CREATED
    );
}
