//! When storage fails, every request still gets an answer: none waits forever,
//! not even a producer's retry waiting on the write it repeats while that
//! write fails and reloading the stream fails too.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use tokio::sync::Notify;
use tower_durable_streams::storage::testkit::{FailingStorage, Failure, Method as StorageMethod};
use tower_durable_streams::storage::{
    Append, AppendFuture, CreateOutcome, Cut, ReadChunk, StorageError, StorageFuture, StreamRecord,
};
use tower_durable_streams::{DurableStreamsService, MemoryStorage, Storage};

/// Answers within 5 s, or the test fails.
async fn answered(reply: impl std::future::Future<Output = Reply>) -> Reply {
    tokio::time::timeout(Duration::from_secs(5), reply)
        .await
        .expect("the request was answered")
}

#[tokio::test]
async fn every_request_gets_an_answer_when_every_storage_call_fails() {
    let memory = MemoryStorage::new();
    let storage = FailingStorage::new(memory.clone());
    let switch = storage.switch();
    let service = DurableStreamsService::builder()
        .storage(storage)
        .long_poll_timeout(Duration::from_secs(30))
        .build()
        .expect("service");
    put(&service, "/s", "text/plain", b"a").await;
    switch.fail_all(Failure::Io);
    let requests: [(Method, &str, &[u8]); 6] = [
        (Method::POST, "/s", b"b"),
        (Method::PUT, "/t", b""),
        (Method::GET, "/s?offset=-1", b""),
        (Method::HEAD, "/s", b""),
        (Method::DELETE, "/s", b""),
        (Method::PUT, "/s", b""),
    ];
    for (method, path, body) in requests {
        let reply = answered(send(&service, method.clone(), path, &TEXT, body)).await;
        assert!(
            reply.status.is_server_error() || reply.status == StatusCode::OK,
            "{method} {path}: {}",
            reply.status
        );
    }
    switch.heal();
    switch.fail(StorageMethod::Append, Failure::Full);
    let full = answered(post(&service, "/s", "text/plain", b"c")).await;
    assert_eq!(full.status, StatusCode::INSUFFICIENT_STORAGE);
    switch.heal();
    assert_eq!(
        post(&service, "/s", "text/plain", b"d").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get(&service, "/s").await.text(),
        "ad",
        "no failed append was stored"
    );
}

const TEXT: [(&str, &str); 1] = [("content-type", "text/plain")];

/// Memory storage whose appends wait for a gate and then fail, and whose
/// record reloads fail on demand.
#[derive(Debug, Clone)]
struct Gated {
    inner: MemoryStorage,
    gate: Arc<Notify>,
    gated: Arc<AtomicBool>,
    fail_get: Arc<AtomicBool>,
}

impl Storage for Gated {
    fn load(&self) -> StorageFuture<'_, Vec<(String, StreamRecord)>> {
        self.inner.load()
    }

    fn get<'a>(&'a self, key: &'a str) -> StorageFuture<'a, Option<StreamRecord>> {
        if self.fail_get.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(StorageError::Io(std::io::Error::other("reload failed")))
            });
        }
        self.inner.get(key)
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        record: StreamRecord,
        initial: Bytes,
    ) -> StorageFuture<'a, CreateOutcome> {
        self.inner.create(key, record, initial)
    }

    fn append(&self, key: &str, append: Append) -> AppendFuture {
        if !self.gated.load(Ordering::SeqCst) {
            return self.inner.append(key, append);
        }
        let gate = self.gate.clone();
        Box::pin(async move {
            gate.notified().await;
            Err(StorageError::Io(std::io::Error::other("write failed")))
        })
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        from: u64,
        to: u64,
        max_bytes: usize,
        cut: Cut,
    ) -> StorageFuture<'a, ReadChunk> {
        self.inner.read(key, from, to, max_bytes, cut)
    }

    fn soft_delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()> {
        self.inner.soft_delete(key)
    }

    fn delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()> {
        self.inner.delete(key)
    }
}

/// A gated store (open) and a service over it with the stream `/s`.
async fn gated() -> (Gated, DurableStreamsService) {
    gated_with(|builder| builder).await
}

/// `gated`, with more settings.
async fn gated_with(
    settings: impl FnOnce(tower_durable_streams::Builder) -> tower_durable_streams::Builder,
) -> (Gated, DurableStreamsService) {
    let storage = Gated {
        inner: MemoryStorage::new(),
        gate: Arc::new(Notify::new()),
        gated: Arc::new(AtomicBool::new(false)),
        fail_get: Arc::new(AtomicBool::new(false)),
    };
    let service = settings(DurableStreamsService::builder().storage(storage.clone()))
        .build()
        .expect("service");
    put(&service, "/s", "text/plain", b"").await;
    (storage, service)
}

fn producer(seq: &'static str) -> [(&'static str, &'static str); 4] {
    [
        ("content-type", "text/plain"),
        ("producer-id", "p"),
        ("producer-epoch", "0"),
        ("producer-seq", seq),
    ]
}

#[tokio::test]
async fn a_retry_waiting_on_a_write_that_fails_is_answered_even_if_the_reload_fails() {
    let (storage, service) = gated().await;
    storage.gated.store(true, Ordering::SeqCst);
    storage.fail_get.store(true, Ordering::SeqCst);

    // The original: ordered, then stuck in storage.
    let original = tokio::spawn({
        let service = service.clone();
        async move { send(&service, Method::POST, "/s", &producer("0"), b"x").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Its retry: a duplicate, waiting for the original to be durable.
    let retry = tokio::spawn({
        let service = service.clone();
        async move { send(&service, Method::POST, "/s", &producer("0"), b"x").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The original fails, and so does reloading the stream's record.
    storage.gate.notify_waiters();
    let original = tokio::time::timeout(Duration::from_secs(5), original)
        .await
        .expect("the original was answered")
        .expect("task");
    let retry = tokio::time::timeout(Duration::from_secs(5), retry)
        .await
        .expect("the retry was answered, not left waiting")
        .expect("task");
    assert_eq!(original.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(retry.status, StatusCode::INTERNAL_SERVER_ERROR);

    // Storage recovers: the stale cache is reloaded before the next decision.
    storage.gated.store(false, Ordering::SeqCst);
    storage.fail_get.store(false, Ordering::SeqCst);
    let again = send(&service, Method::POST, "/s", &producer("0"), b"x").await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "seq 0 was never stored: a new write"
    );
    assert_eq!(get(&service, "/s").await.text(), "x");
}

#[tokio::test]
async fn an_idempotent_create_waits_for_the_writes_it_reports() {
    let (storage, service) = gated().await;
    storage.gated.store(true, Ordering::SeqCst);
    let append = tokio::spawn({
        let service = service.clone();
        async move { post(&service, "/s", "text/plain", b"not durable").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let create = tokio::spawn({
        let service = service.clone();
        async move { put(&service, "/s", "text/plain", b"").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !create.is_finished(),
        "it does not report an offset that is not durable"
    );
    storage.gate.notify_waiters();
    let create = tokio::time::timeout(Duration::from_secs(5), create)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(
        create.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "the write it covers failed"
    );
    let _ = append.await;
    storage.gated.store(false, Ordering::SeqCst);
    let create = put(&service, "/s", "text/plain", b"").await;
    assert_eq!(
        (create.status, create.next_offset().as_str()),
        (StatusCode::OK, "0000000000000000_0000000000000000")
    );
}

#[tokio::test]
async fn writes_in_progress_are_capped_with_503() {
    let (storage, service) = gated_with(|b| b.max_inflight_writes(1)).await;
    storage.gated.store(true, Ordering::SeqCst);
    // A write stuck in storage holds the only slot.
    let stuck = tokio::spawn({
        let service = service.clone();
        async move { post(&service, "/s", "text/plain", b"x").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = answered(post(&service, "/s", "text/plain", b"y")).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.json()["code"], "TOO_MANY_WRITES");
    assert_eq!(refused.header("retry-after"), Some("1"));
    storage.gated.store(false, Ordering::SeqCst);
    storage.gate.notify_waiters();
    let failed = answered(async { stuck.await.expect("task") }).await;
    assert!(failed.status.is_server_error(), "{}", failed.status);
    assert_eq!(
        answered(post(&service, "/s", "text/plain", b"z"))
            .await
            .status,
        StatusCode::NO_CONTENT,
        "the slot is free again"
    );
}
