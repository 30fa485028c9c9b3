//! The in-process `Streams` handle: the same rules as HTTP, on the same engine.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use tower_durable_streams::streams::{AppendOptions, CreateOptions, Producer};
use tower_durable_streams::{DurableStreamsService, Offset, StreamError};

fn service() -> DurableStreamsService {
    DurableStreamsService::builder()
        .long_poll_timeout(Duration::from_secs(30))
        .build()
        .expect("service")
}

#[tokio::test]
async fn create_append_close_read() {
    let service = service();
    let streams = service.streams();
    let created = streams
        .create(
            "/log",
            CreateOptions::new().content_type("text/plain").data("a"),
        )
        .await
        .expect("create");
    assert!(created.created);
    let again = streams
        .create("/log", CreateOptions::new().content_type("text/plain"))
        .await
        .expect("idempotent create");
    assert!(!again.created);
    let appended = streams.append("/log", "b").await.expect("append");
    assert!(!appended.duplicate() && !appended.closed);
    let closed = streams.close("/log").await.expect("close");
    assert!(closed.closed);
    assert!(streams
        .close("/log")
        .await
        .expect("close again")
        .duplicate());

    let chunk = streams.read("/log", Offset::START).await.expect("read");
    assert_eq!(chunk.to_bytes(), "ab");
    assert!(chunk.up_to_date() && chunk.closed());
    assert_eq!(chunk.next_offset(), appended.next_offset);
    let head = streams.head("/log").await.expect("head");
    assert_eq!(
        (head.content_type.as_str(), head.closed),
        ("text/plain", true)
    );

    // HTTP readers see what host code wrote, at the same offsets.
    let reply = get(&service, "/log").await;
    assert_eq!(reply.text(), "ab");
    assert_eq!(reply.next_offset(), chunk.next_offset().to_string());
    streams.delete("/log").await.expect("delete");
    assert!(matches!(
        streams.read("/log", Offset::START).await,
        Err(StreamError::NotFound)
    ));
}

#[tokio::test]
async fn the_same_rules_as_http() {
    let service = service();
    let streams = service.streams();
    streams
        .create("/j", CreateOptions::new().content_type("application/json"))
        .await
        .expect("create");
    // Each refusal, in process and over HTTP: the same error and status.
    let cases: [(Result<_, StreamError>, Reply); 4] = [
        (
            streams.append("/j", "{not json").await,
            post(&service, "/j", "application/json", b"{not json").await,
        ),
        (
            streams
                .append_with("/j", AppendOptions::new("1").content_type("text/plain"))
                .await,
            post(&service, "/j", "text/plain", b"1").await,
        ),
        (
            streams.append("/j", "").await,
            post(&service, "/j", "application/json", b"").await,
        ),
        (
            streams.append("/__ds/x", "1").await,
            post(&service, "/__ds/x", "application/json", b"1").await,
        ),
    ];
    for (i, (local, http)) in cases.into_iter().enumerate() {
        let error = local.expect_err("refused");
        assert_eq!(error.status(), http.status, "case {i}: {error}");
        assert_eq!(error.code(), http.json()["code"], "case {i}");
    }
    assert!(matches!(
        streams.create("/a b", CreateOptions::new()).await,
        Err(StreamError::Invalid(_))
    ));
    let past = std::time::SystemTime::now() - Duration::from_secs(1);
    assert!(matches!(
        streams
            .create("/old", CreateOptions::new().expires_at(past))
            .await,
        Err(StreamError::Invalid(_))
    ));
}

#[tokio::test]
async fn producers_dedupe_fence_and_find_gaps() {
    let service = service();
    let streams = service.streams();
    streams
        .create("/p", CreateOptions::new().content_type("text/plain"))
        .await
        .expect("create");
    let write = |epoch, seq| AppendOptions::new("x").producer(Producer::new("w", epoch, seq));
    streams.append_with("/p", write(0, 0)).await.expect("first");
    assert!(streams
        .append_with("/p", write(0, 0))
        .await
        .expect("retry")
        .duplicate());
    assert!(matches!(
        streams.append_with("/p", write(0, 2)).await,
        Err(StreamError::SequenceGap { .. })
    ));
    streams
        .append_with("/p", write(1, 0))
        .await
        .expect("new epoch");
    assert!(matches!(
        streams.append_with("/p", write(0, 1)).await,
        Err(StreamError::StaleEpoch { .. })
    ));
    // The HTTP side knows the producer's state too.
    let headers = [
        ("content-type", "text/plain"),
        ("producer-id", "w"),
        ("producer-epoch", "1"),
        ("producer-seq", "0"),
    ];
    let retry = send(&service, Method::POST, "/p", &headers, b"x").await;
    assert_eq!(
        retry.status,
        StatusCode::NO_CONTENT,
        "a duplicate over HTTP"
    );
    assert_eq!(
        streams
            .read("/p", Offset::START)
            .await
            .expect("read")
            .to_bytes(),
        "xx"
    );
}

#[tokio::test]
async fn appends_wake_http_long_polls_and_local_waits() {
    let service = service();
    let streams = service.streams();
    let created = streams
        .create("/live", CreateOptions::new().content_type("text/plain"))
        .await
        .expect("create");
    let tail = created.next_offset.to_string();
    let poll = tokio::spawn({
        let service = service.clone();
        async move { get(&service, &format!("/live?offset={tail}&live=long-poll")).await }
    });
    let wait = tokio::spawn({
        let streams = streams.clone();
        let from = created.next_offset;
        async move { streams.wait("/live", from, Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    streams.append("/live", "news").await.expect("append");
    let poll = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the long-poll was woken")
        .expect("task");
    assert_eq!((poll.status, poll.text()), (StatusCode::OK, "news"));
    let chunk = tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("the wait was woken")
        .expect("task")
        .expect("wait");
    assert_eq!(chunk.to_bytes(), "news");

    // Nothing new: the wait ends at its timeout with an empty, up-to-date chunk.
    let idle = streams
        .wait("/live", chunk.next_offset(), Duration::from_millis(20))
        .await
        .expect("wait");
    assert!(idle.is_empty() && idle.up_to_date() && !idle.closed());
}

#[tokio::test]
async fn forks_from_host_code() {
    let streams = service().streams();
    streams
        .create(
            "/src",
            CreateOptions::new().content_type("text/plain").data("abc"),
        )
        .await
        .expect("create");
    let at_one: Offset = streams
        .read("/src", Offset::START)
        .await
        .expect("read")
        .next_offset();
    streams
        .create("/fork", CreateOptions::new().fork_of("/src"))
        .await
        .expect("fork at the tail");
    streams.append("/fork", "d").await.expect("append to fork");
    assert_eq!(
        streams
            .read("/fork", Offset::START)
            .await
            .expect("read")
            .to_bytes(),
        "abcd"
    );
    assert_eq!(
        streams
            .read("/src", Offset::START)
            .await
            .expect("read")
            .to_bytes(),
        "abc",
        "the source is untouched"
    );
    assert!(at_one > Offset::START);
}
