//! Export and import: a round trip memory → file → acid keeps every stream and
//! its state; conflicts are skipped, refused or replaced as asked.

mod common;

use common::*;
use http::{Method, StatusCode};
use tower_durable_streams::storage::backup::{export, import, BackupError, OnConflict};
use tower_durable_streams::storage::{Durability, FileStorage};
use tower_durable_streams::{DurableStreamsService, MemoryStorage, Storage};

fn service<S: Storage + Clone>(storage: &S) -> DurableStreamsService {
    DurableStreamsService::builder()
        .storage(storage.clone())
        .build()
        .expect("service")
}

async fn populate(svc: &DurableStreamsService) {
    send(
        svc,
        Method::PUT,
        "/t",
        &[("content-type", "text/plain"), ("stream-ttl", "3600")],
        b"hello",
    )
    .await;
    let p = [
        ("content-type", "application/json"),
        ("producer-id", "p"),
        ("producer-epoch", "3"),
        ("producer-seq", "0"),
        ("stream-closed", "true"),
    ];
    put(svc, "/j", "application/json", b"[1]").await;
    assert_eq!(
        send(svc, Method::POST, "/j", &p, b"[2,3]").await.status,
        StatusCode::OK
    );
    put(svc, "/src", "application/octet-stream", &[0, 1, 2, 255]).await;
    send(
        svc,
        Method::PUT,
        "/fork",
        &[("stream-forked-from", "/src")],
        b"",
    )
    .await;
    post(svc, "/fork", "application/octet-stream", &[9]).await;
    send(svc, Method::DELETE, "/src", &[], b"").await;
    let big = vec![7u8; 3 * 1024 * 1024 + 5];
    put(svc, "/big", "application/octet-stream", &big).await;
}

async fn check(svc: &DurableStreamsService) {
    assert_eq!(get(svc, "/t").await.text(), "hello");
    assert_eq!(
        send(svc, Method::HEAD, "/t", &[], b"")
            .await
            .header("stream-ttl"),
        Some("3600")
    );
    let j = get(svc, "/j").await;
    assert_eq!(
        (j.json(), j.header("stream-closed")),
        (serde_json::json!([1, 2, 3]), Some("true"))
    );
    let retry = [
        ("content-type", "application/json"),
        ("producer-id", "p"),
        ("producer-epoch", "3"),
        ("producer-seq", "0"),
        ("stream-closed", "true"),
    ];
    assert_eq!(
        send(svc, Method::POST, "/j", &retry, b"[2,3]").await.status,
        StatusCode::NO_CONTENT,
        "closing producer request deduplicated"
    );
    assert_eq!(
        send(svc, Method::HEAD, "/src", &[], b"").await.status,
        StatusCode::GONE
    );
    let mut fork = Vec::new();
    let mut offset = "-1".to_owned();
    loop {
        let r = get(svc, &format!("/fork?offset={offset}")).await;
        fork.extend_from_slice(&r.body);
        offset = r.next_offset();
        if r.header("stream-up-to-date").is_some() {
            break;
        }
    }
    assert_eq!(fork, vec![0, 1, 2, 255, 9]);
    assert_eq!(
        send(svc, Method::HEAD, "/big", &[], b"")
            .await
            .next_offset(),
        "0000000000000000_0000000003145733"
    );
}

#[tokio::test]
async fn round_trip_across_backends() {
    let memory = MemoryStorage::new();
    let svc = service(&memory);
    populate(&svc).await;
    let etag_before = get(&svc, "/t").await.header("etag").map(str::to_owned);

    let mut file_export = Vec::new();
    let summary = export(&memory, &mut file_export).await.expect("export");
    assert_eq!(summary.streams, 5);

    let dir = tempfile::tempdir().expect("dir");
    let file = FileStorage::open(dir.path(), Durability::Fsync).expect("open");
    import(&file, &file_export[..], OnConflict::Fail)
        .await
        .expect("import into file");
    let svc = service(&file);
    check(&svc).await;
    assert_eq!(
        get(&svc, "/t").await.header("etag").map(str::to_owned),
        etag_before,
        "stream identity kept"
    );

    #[cfg(feature = "redb")]
    {
        let mut second = Vec::new();
        export(&file, &mut second).await.expect("export from file");
        let dir = tempfile::tempdir().expect("dir");
        let acid = tower_durable_streams::storage::RedbStorage::open(dir.path(), 2).expect("redb");
        import(&acid, &second[..], OnConflict::Fail)
            .await
            .expect("import into redb");
        check(&service(&acid)).await;
    }
}

#[tokio::test]
async fn conflicts_follow_the_policy() {
    let memory = MemoryStorage::new();
    put(&service(&memory), "/a", "text/plain", b"exported").await;
    let mut dump = Vec::new();
    export(&memory, &mut dump).await.expect("export");

    let target = MemoryStorage::new();
    let svc = service(&target);
    put(&svc, "/a", "text/plain", b"existing").await;
    let failed = import(&target, &dump[..], OnConflict::Fail).await;
    assert!(matches!(failed, Err(BackupError::Conflict(path)) if path == "/a"));
    let skipped = import(&target, &dump[..], OnConflict::Skip)
        .await
        .expect("skip");
    assert_eq!((skipped.streams, skipped.skipped), (0, 1));
    assert_eq!(get(&service(&target), "/a").await.text(), "existing");
    import(&target, &dump[..], OnConflict::Replace)
        .await
        .expect("replace");
    assert_eq!(get(&service(&target), "/a").await.text(), "exported");

    let broken = import(
        &MemoryStorage::new(),
        &b"{\"format\":\"other\",\"version\":1}\n"[..],
        OnConflict::Fail,
    )
    .await;
    assert!(matches!(broken, Err(BackupError::Format { line: 1, .. })));
}
