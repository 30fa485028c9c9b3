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

/// A request body that delivers `first` and then nothing, ever.
struct Stalled(Option<Bytes>);

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(first) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(first)))),
            None => std::task::Poll::Pending,
        }
    }
}

/// Appends `first` and then stalls, on a task of its own.
fn stalled_append(
    svc: &DurableStreamsService,
    path: &str,
    first: &'static [u8],
) -> tokio::task::JoinHandle<http::Response<tower_durable_streams::ResponseBody>> {
    let request = http::Request::post(path)
        .header("content-type", "text/plain")
        .body(Stalled(Some(Bytes::from_static(first))))
        .expect("request");
    let svc = svc.clone();
    tokio::spawn(async move { svc.oneshot(request).await.expect("infallible") })
}

#[tokio::test(start_paused = true)]
async fn a_body_slower_than_the_minimum_rate_gets_408_and_writes_nothing() {
    let svc = DurableStreamsService::builder()
        .min_body_rate(1_000, Duration::from_secs(2))
        .build()
        .expect("service");
    put(&svc, "/s", "text/plain", b"a").await;
    let started = tokio::time::Instant::now();
    let slow = stalled_append(&svc, "/s", b"0123456789")
        .await
        .expect("task");
    assert_eq!(slow.status(), StatusCode::REQUEST_TIMEOUT);
    // Two seconds of grace: ten bytes at 1,000 bytes/s would earn 10 ms more
    // on average, but no pause may outlast the grace.
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(2_000), "{waited:?}");
    assert!(waited < Duration::from_millis(2_100), "{waited:?}");
    assert_eq!(get(&svc, "/s").await.text(), "a");
}

#[tokio::test(start_paused = true)]
async fn a_slow_upload_holds_no_write_slot() {
    let svc = DurableStreamsService::builder()
        .max_inflight_writes(1)
        .build()
        .expect("service");
    put(&svc, "/s", "text/plain", b"").await;
    let slow = stalled_append(&svc, "/s", b"slow");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        post(&svc, "/s", "text/plain", b"quick").await.status,
        StatusCode::NO_CONTENT,
        "the one write slot is free while the slow body trickles in"
    );
    assert_eq!(
        slow.await.expect("task").status(),
        StatusCode::REQUEST_TIMEOUT
    );
    assert_eq!(get(&svc, "/s").await.text(), "quick");
}

#[tokio::test(start_paused = true)]
async fn bodies_being_received_share_one_budget() {
    let svc = DurableStreamsService::builder()
        .max_append_bytes(100)
        .max_buffered_body_bytes(100)
        .min_body_rate(1, Duration::from_secs(5))
        .build()
        .expect("service");
    put(&svc, "/s", "text/plain", b"").await;
    let holder = stalled_append(&svc, "/s", &[b'x'; 90]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = post(&svc, "/s", "text/plain", &[b'y'; 20]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.json()["code"], "TOO_MANY_UPLOADS");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(
        holder.await.expect("task").status(),
        StatusCode::REQUEST_TIMEOUT
    );
    assert_eq!(
        post(&svc, "/s", "text/plain", &[b'y'; 20]).await.status,
        StatusCode::NO_CONTENT,
        "the budget came back with the refused body"
    );
    assert_eq!(
        DurableStreamsService::builder()
            .max_append_bytes(100)
            .max_buffered_body_bytes(99)
            .build()
            .err(),
        Some(tower_durable_streams::BuildError::BodyBudget {
            budget: 99,
            append: 100
        })
    );
}

#[test]
fn an_answer_must_hold_one_storage_read() {
    assert_eq!(
        DurableStreamsService::builder()
            .max_read_bytes(4096)
            .max_response_bytes(4095)
            .build()
            .err(),
        Some(tower_durable_streams::BuildError::ResponseSize {
            response: 4095,
            read: 4096
        })
    );
}

#[tokio::test]
async fn an_expiry_beyond_year_9999_in_utc_is_refused() {
    let svc = DurableStreamsService::builder().build().expect("service");
    let refused = send(
        &svc,
        Method::PUT,
        "/late",
        &[
            ("content-type", "text/plain"),
            ("stream-expires-at", "9999-12-31T23:59:59-01:00"),
        ],
        b"",
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        send(&svc, Method::HEAD, "/late", &[], b"").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(start_paused = true)]
async fn bytes_sent_early_buy_no_long_pause() {
    let svc = DurableStreamsService::builder()
        .min_body_rate(10, Duration::from_secs(2))
        .build()
        .expect("service");
    put(&svc, "/s", "text/plain", b"").await;
    let started = tokio::time::Instant::now();
    // 1,000 bytes at once would earn 100 s at 10 bytes/s; the pause after
    // them is still cut at the 2 s grace.
    let slow = stalled_append(&svc, "/s", &[b'x'; 1_000])
        .await
        .expect("task");
    assert_eq!(slow.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
