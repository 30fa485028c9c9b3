//! Limits that protect the process: each refusal has its status code, and
//! nothing is written.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use tower::ServiceExt;
use tower_durable_streams::{DurableStreamsService, MemoryStorage};

#[tokio::test]
async fn max_stream_bytes_refuses_the_crossing_append() {
    let svc = DurableStreamsService::builder()
        .max_stream_bytes(10)
        .build()
        .expect("service");
    assert_eq!(
        put(&svc, "/big", "text/plain", b"0123456789AB")
            .await
            .status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        send(&svc, Method::HEAD, "/big", &[], b"").await.status,
        StatusCode::NOT_FOUND
    );
    put(&svc, "/s", "text/plain", b"012345").await;
    let refused = post(&svc, "/s", "text/plain", b"6789A").await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(refused.json()["code"], "STREAM_TOO_LARGE");
    assert_eq!(get(&svc, "/s").await.text(), "012345");
    assert_eq!(
        post(&svc, "/s", "text/plain", b"6789").await.status,
        StatusCode::NO_CONTENT,
        "up to the limit is fine"
    );
}

#[tokio::test]
async fn a_full_memory_store_answers_507() {
    let svc = DurableStreamsService::builder()
        .storage(MemoryStorage::new().with_max_bytes(8))
        .build()
        .expect("service");
    put(&svc, "/a", "text/plain", b"12345").await;
    let full = post(&svc, "/a", "text/plain", b"6789").await;
    assert_eq!(full.status, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(full.json()["code"], "STORAGE_FULL");
    assert_eq!(get(&svc, "/a").await.text(), "12345");
    // Deleting frees room.
    send(&svc, Method::DELETE, "/a", &[], b"").await;
    assert_eq!(
        put(&svc, "/b", "text/plain", b"12345678").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn live_readers_are_capped_with_429() {
    let svc = DurableStreamsService::builder()
        .max_live_readers(1)
        .build()
        .expect("service");
    put(&svc, "/s", "text/plain", b"x").await;
    let first = open(&svc, "/s?offset=-1&live=sse").await;
    assert_eq!(first.status(), StatusCode::OK);
    let second = get(&svc, "/s?offset=-1&live=long-poll").await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.header("retry-after"), Some("1"));
    drop(first);
    assert_eq!(
        get(&svc, "/s?offset=-1&live=long-poll").await.status,
        StatusCode::OK,
        "the slot is free again"
    );
}

#[tokio::test]
async fn writes_in_progress_are_capped_with_503() {
    let svc = DurableStreamsService::builder()
        .max_inflight_writes(1)
        .build()
        .expect("service");
    put(&svc, "/s", "text/plain", b"").await;
    // A write whose body never finishes holds the only slot.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(1);
    let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
    let request = http::Request::post("/s")
        .header("content-type", "text/plain")
        .body(body)
        .expect("request");
    let stuck = tokio::spawn(svc.clone().oneshot(request));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = post(&svc, "/s", "text/plain", b"y").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.header("retry-after"), Some("1"));
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"x"))))
        .await
        .expect("send");
    drop(tx);
    let done = stuck.await.expect("task").expect("infallible");
    assert_eq!(done.status(), StatusCode::NO_CONTENT);
    assert_eq!(get(&svc, "/s").await.text(), "x");
}

/// A stream over an mpsc receiver.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A body of several frames (and trailers), as a chunked upload arrives.
fn framed(pieces: &[&'static [u8]]) -> impl http_body::Body<Data = Bytes, Error = std::io::Error> {
    let mut frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = pieces
        .iter()
        .map(|p| Ok(http_body::Frame::data(Bytes::from_static(p))))
        .collect();
    frames.push(Ok(http_body::Frame::trailers(http::HeaderMap::new())));
    http_body_util::StreamBody::new(futures_util::stream::iter(frames))
}

#[tokio::test]
async fn a_body_in_many_frames_is_appended_whole_and_limited_whole() {
    let svc = DurableStreamsService::builder()
        .max_append_bytes(8)
        .build()
        .expect("service");
    put(&svc, "/s", "text/plain", b"").await;
    let request = |pieces: &[&'static [u8]]| {
        http::Request::post("/s")
            .header("content-type", "text/plain")
            .body(framed(pieces))
            .expect("request")
    };
    let done = svc
        .clone()
        .oneshot(request(&[b"ab", b"cd", b"ef"]))
        .await
        .expect("infallible");
    assert_eq!(done.status(), StatusCode::NO_CONTENT);
    let too_large = svc
        .clone()
        .oneshot(request(&[b"1234", b"5678", b"9"]))
        .await
        .expect("infallible");
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        get(&svc, "/s").await.text(),
        "abcdef",
        "nothing of the refused body"
    );
}
