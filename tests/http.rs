//! HTTP behaviour through `tower::ServiceExt::oneshot`, run over every backend.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use tower_durable_streams::storage::{Durability, FileStorage};
use tower_durable_streams::{DurableStreamsService, MemoryStorage, Storage};

fn service_over(storage: impl Storage) -> DurableStreamsService {
    DurableStreamsService::builder()
        .storage(storage)
        .base_path("/v1/stream")
        .long_poll_timeout(Duration::from_secs(30))
        .sse_reconnect_interval(Duration::from_secs(60))
        .max_append_bytes(1024)
        .max_read_bytes(16)
        .max_response_bytes(16)
        .build()
        .expect("valid settings")
}

/// Like `service_over`, but a catch-up answer may be far longer than one
/// storage read (16 bytes), so it is streamed read by read.
fn streaming_service_over(storage: impl Storage) -> DurableStreamsService {
    DurableStreamsService::builder()
        .storage(storage)
        .max_read_bytes(16)
        .build()
        .expect("valid settings")
}

/// Runs every case in `cases` against the service that `$make` builds. Cases
/// that need paused time run only for backends marked `with paused time`: a
/// backend that waits on its own threads would let paused time jump ahead.
macro_rules! protocol_tests {
    ($backend:ident => $make:expr, with paused time) => {
        protocol_tests!($backend => $make);
        mod paused {
            use super::*;
            protocol_tests!(@paused $make;
                long_poll_times_out_with_204,
                long_poll_wakes_on_append,
                sse_frames,
                sse_holds_back_split_characters
            );
        }
    };
    ($backend:ident => $make:expr) => {
        mod $backend {
            use super::*;
            protocol_tests!(@cases $make;
                create_append_read,
                idempotent_create_and_conflicts,
                create_validation,
                append_validation,
                stream_seq_ordering,
                json_mode,
                reads_are_chunked,
                etags_and_not_modified,
                head_and_delete,
                offset_now,
                closure,
                producers,
                producers_and_closure,
                forks,
                fork_soft_delete_and_cascade,
                ttl_expiry,
                reserved_and_bad_paths,
                method_not_allowed,
                payload_too_large,
                security_headers_on_errors,
                recreating_an_expired_fork,
                long_poll_wakes_on_append,
                closed_stream_dedups_only_the_closing_request
            );

            #[tokio::test]
            async fn long_answers_stream_read_by_read() {
                super::cases::long_answers_stream_read_by_read(streaming_service_over($make))
                    .await;
            }
        }
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test]
            async fn $case() {
                super::cases::$case(service_over($make)).await;
            }
        )*
    };
    (@paused $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(start_paused = true)]
            async fn $case() {
                super::cases::$case(service_over($make)).await;
            }
        )*
    };
}

protocol_tests!(memory => MemoryStorage::new(), with paused time);
protocol_tests!(file_fast => file_storage(Durability::Buffered));
protocol_tests!(file_durable => file_storage(Durability::Fsync));

#[cfg(feature = "redb")]
protocol_tests!(acid => tower_durable_streams::storage::RedbStorage::open(
    tempfile::tempdir().expect("temp dir").keep(),
    4
)
.expect("open redb storage"));

fn file_storage(durability: Durability) -> FileStorage {
    let dir = tempfile::tempdir().expect("temp dir").keep();
    FileStorage::open(dir, durability).expect("open file storage")
}

mod cases {
    use super::*;

    const S: &str = "/s";

    pub async fn create_append_read(svc: DurableStreamsService) {
        let created = put(&svc, S, "text/plain", b"hello").await;
        assert_eq!(created.status, StatusCode::CREATED);
        assert_eq!(
            created.header("location"),
            Some("http://example.test/v1/stream/s")
        );
        assert_eq!(created.header("content-type"), Some("text/plain"));
        let first = created.next_offset();
        let appended = post(&svc, S, "text/plain", b" world").await;
        assert_eq!(appended.status, StatusCode::NO_CONTENT);
        assert!(appended.next_offset() > first);
        let read = get(&svc, S).await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(read.text(), "hello world");
        assert_eq!(read.header("stream-up-to-date"), Some("true"));
        assert_eq!(read.next_offset(), appended.next_offset());
        let tail = get(&svc, &format!("{S}?offset={first}")).await;
        assert_eq!(tail.text(), " world");
        // The same stream addressed without the mount prefix (axum nest_service strips it).
        assert_eq!(get(&svc, "/s").await.text(), "hello world");
    }

    pub async fn idempotent_create_and_conflicts(svc: DurableStreamsService) {
        let ttl = [("content-type", "text/plain"), ("stream-ttl", "60")];
        assert_eq!(
            send(&svc, Method::PUT, S, &ttl, b"").await.status,
            StatusCode::CREATED
        );
        let again = send(
            &svc,
            Method::PUT,
            S,
            &[("content-type", "TEXT/PLAIN"), ("stream-ttl", "60")],
            b"",
        )
        .await;
        assert_eq!(again.status, StatusCode::OK);
        assert!(again.header("location").is_none());
        for conflicting in [
            vec![("content-type", "application/json"), ("stream-ttl", "60")],
            vec![("content-type", "text/plain"), ("stream-ttl", "61")],
            vec![("content-type", "text/plain")],
            vec![
                ("content-type", "text/plain"),
                ("stream-ttl", "60"),
                ("stream-closed", "true"),
            ],
        ] {
            let reply = send(&svc, Method::PUT, S, &conflicting, b"").await;
            assert_eq!(reply.status, StatusCode::CONFLICT, "{conflicting:?}");
            assert_eq!(
                reply.header("content-type"),
                Some("application/problem+json")
            );
        }
    }

    pub async fn create_validation(svc: DurableStreamsService) {
        for headers in [
            vec![("stream-ttl", "abc")],
            vec![("stream-ttl", "01")],
            vec![
                ("stream-ttl", "1"),
                ("stream-expires-at", "2099-01-01T00:00:00Z"),
            ],
            vec![("stream-expires-at", "tomorrow")],
            vec![("stream-expires-at", "2001-01-01T00:00:00Z")],
            vec![("content-type", "nonsense")],
            vec![("stream-fork-offset", "0000000000000000_0000000000000000")],
            vec![("stream-fork-sub-offset", "0")],
        ] {
            let reply = send(&svc, Method::PUT, "/bad", &headers, b"").await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{headers:?}");
            let problem = reply.json();
            assert_eq!(problem["status"], 400);
            assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
        }
        let default = send(&svc, Method::PUT, "/untyped", &[], b"").await;
        assert_eq!(
            default.header("content-type"),
            Some("application/octet-stream")
        );
        let expires = send(
            &svc,
            Method::PUT,
            "/exp",
            &[("stream-expires-at", "2099-01-01T00:00:00+02:00")],
            b"",
        )
        .await;
        assert_eq!(expires.status, StatusCode::CREATED);
        let head = send(&svc, Method::HEAD, "/exp", &[], b"").await;
        assert_eq!(
            head.header("stream-expires-at"),
            Some("2098-12-31T22:00:00Z")
        );
    }

    pub async fn append_validation(svc: DurableStreamsService) {
        assert_eq!(
            post(&svc, S, "text/plain", b"x").await.status,
            StatusCode::NOT_FOUND
        );
        put(&svc, S, "text/plain", b"").await;
        assert_eq!(
            post(&svc, S, "text/plain", b"").await.status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            send(&svc, Method::POST, S, &[], b"x").await.status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post(&svc, S, "application/json", b"{}").await.status,
            StatusCode::CONFLICT
        );
        assert_eq!(
            post(&svc, S, "text/plain; charset=utf-8", b"ok")
                .await
                .status,
            StatusCode::NO_CONTENT
        );
        let partial = send(
            &svc,
            Method::POST,
            S,
            &[("content-type", "text/plain"), ("producer-id", "p")],
            b"x",
        )
        .await;
        assert_eq!(partial.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            get(&svc, S).await.text(),
            "ok",
            "refused appends write nothing"
        );
    }

    pub async fn stream_seq_ordering(svc: DurableStreamsService) {
        put(&svc, S, "text/plain", b"").await;
        let seq = |s: &'static str| [("content-type", "text/plain"), ("stream-seq", s)];
        assert_eq!(
            send(&svc, Method::POST, S, &seq("09"), b"a").await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            send(&svc, Method::POST, S, &seq("10"), b"b").await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            send(&svc, Method::POST, S, &seq("10"), b"c").await.status,
            StatusCode::CONFLICT
        );
        assert_eq!(
            send(&svc, Method::POST, S, &seq("1"), b"d").await.status,
            StatusCode::CONFLICT
        );
        assert_eq!(
            send(&svc, Method::POST, S, &seq("2"), b"e").await.status,
            StatusCode::NO_CONTENT,
            "\"2\" > \"10\" byte-wise"
        );
        assert_eq!(get(&svc, S).await.text(), "abe");
    }

    pub async fn json_mode(svc: DurableStreamsService) {
        let created = put(&svc, S, "application/json", b"[]").await;
        assert_eq!(created.status, StatusCode::CREATED);
        assert_eq!(get(&svc, S).await.text(), "[]");
        assert_eq!(
            post(&svc, S, "application/json", b"[]").await.status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post(&svc, S, "application/json", b"{ bad").await.status,
            StatusCode::BAD_REQUEST
        );
        post(&svc, S, "application/json", br#"{"a":1}"#).await;
        post(&svc, S, "application/json", br#"[{"b":2}, [3]]"#).await;
        post(&svc, S, "application/json", b"[[[4]]]").await;
        // Reads are capped at 16 bytes here and end on append boundaries.
        let first = get(&svc, S).await;
        assert_eq!(first.json(), serde_json::json!([{"a":1}]));
        let rest = get(&svc, &format!("{S}?offset={}", first.next_offset())).await;
        assert_eq!(rest.json(), serde_json::json!([{"b":2},[3]]));
        let last = get(&svc, &format!("{S}?offset={}", rest.next_offset())).await;
        assert_eq!(last.json(), serde_json::json!([[[4]]]));
        assert_eq!(last.header("stream-up-to-date"), Some("true"));
    }

    pub async fn reads_are_chunked(svc: DurableStreamsService) {
        // max_read_bytes is 16 in these tests.
        put(&svc, S, "application/octet-stream", &[7u8; 40]).await;
        let first = get(&svc, S).await;
        assert_eq!(first.body.len(), 16);
        assert!(first.header("stream-up-to-date").is_none());
        let mut all = first.body.to_vec();
        let mut offset = first.next_offset();
        loop {
            let next = get(&svc, &format!("{S}?offset={offset}")).await;
            all.extend_from_slice(&next.body);
            offset = next.next_offset();
            if next.header("stream-up-to-date").is_some() {
                break;
            }
        }
        assert_eq!(all, vec![7u8; 40]);
        // JSON reads never split an append, even one longer than the cap.
        put(
            &svc,
            "/j",
            "application/json",
            br#"["aaaaaaaaaaaaaaaaaaaaaaaa","b"]"#,
        )
        .await;
        post(&svc, "/j", "application/json", br#""c""#).await;
        let read = get(&svc, "/j").await;
        assert_eq!(
            read.json(),
            serde_json::json!(["aaaaaaaaaaaaaaaaaaaaaaaa", "b"])
        );
        assert!(read.header("stream-up-to-date").is_none());
    }

    pub async fn long_answers_stream_read_by_read(svc: DurableStreamsService) {
        use http_body::Body as _;
        use http_body_util::BodyExt as _;
        let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let at_40 = put(&svc, "/b", "application/octet-stream", &bytes[..40])
            .await
            .next_offset();
        for piece in bytes[40..].chunks(7) {
            post(&svc, "/b", "application/octet-stream", piece).await;
        }
        // One answer of 1,000 bytes, read 16 bytes at a time behind it.
        let response = open(&svc, "/b").await;
        assert_eq!(response.body().size_hint().exact(), Some(1000));
        let whole = get(&svc, "/b").await;
        assert_eq!(whole.body, bytes);
        assert_eq!(whole.header("stream-up-to-date"), Some("true"));
        assert_eq!(
            whole.next_offset(),
            get(&svc, "/b?offset=now").await.next_offset()
        );
        let etag = whole.header("etag").expect("etag").to_owned();
        let again = send(&svc, Method::GET, "/b", &[("if-none-match", &etag)], b"").await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED);
        let from_middle = get(&svc, &format!("/b?offset={at_40}")).await;
        assert_eq!(from_middle.body, bytes[40..]);

        // A JSON answer is one array, whatever the reads in between cut.
        put(
            &svc,
            "/j",
            "application/json",
            br#"["aaaaaaaaaaaaaaaaaaaaaaaa","b"]"#,
        )
        .await;
        let mut expected = vec![
            serde_json::json!("aaaaaaaaaaaaaaaaaaaaaaaa"),
            serde_json::json!("b"),
        ];
        for i in 0..50 {
            post(
                &svc,
                "/j",
                "application/json",
                format!("{{\"n\":{i}}}").as_bytes(),
            )
            .await;
            expected.push(serde_json::json!({ "n": i }));
        }
        let json = get(&svc, "/j").await;
        assert_eq!(json.json(), serde_json::Value::Array(expected));
        assert_eq!(json.header("stream-up-to-date"), Some("true"));
        assert_eq!(json.body.len() as u64, {
            let response = open(&svc, "/j").await;
            response.body().size_hint().exact().expect("exact length")
        });

        // A stream deleted while its answer is read cuts the answer short.
        let mut response = open(&svc, "/b").await;
        let first = response
            .body_mut()
            .frame()
            .await
            .expect("a frame")
            .expect("data");
        assert_eq!(first.into_data().expect("data").len(), 16);
        assert_eq!(
            send(&svc, Method::DELETE, "/b", &[], b"").await.status,
            StatusCode::NO_CONTENT
        );
        put(&svc, "/b", "application/octet-stream", &[0u8; 2000]).await;
        let rest = response.into_body().collect().await;
        assert!(
            rest.is_err(),
            "the answer of a deleted stream ended cleanly"
        );
    }

    pub async fn etags_and_not_modified(svc: DurableStreamsService) {
        put(&svc, S, "text/plain", b"data").await;
        let read = get(&svc, S).await;
        let etag = read.header("etag").expect("etag").to_owned();
        let again = send(&svc, Method::GET, S, &[("if-none-match", &etag)], b"").await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED);
        assert!(again.body.is_empty());
        send(&svc, Method::POST, S, &[("stream-closed", "true")], b"").await;
        let after_close = send(&svc, Method::GET, S, &[("if-none-match", &etag)], b"").await;
        assert_eq!(
            after_close.status,
            StatusCode::OK,
            "closure changes the ETag"
        );
        assert_eq!(after_close.header("stream-closed"), Some("true"));
    }

    pub async fn head_and_delete(svc: DurableStreamsService) {
        assert_eq!(
            send(&svc, Method::HEAD, S, &[], b"").await.status,
            StatusCode::NOT_FOUND
        );
        send(
            &svc,
            Method::PUT,
            S,
            &[("content-type", "text/plain"), ("stream-ttl", "3600")],
            b"abc",
        )
        .await;
        let head = send(&svc, Method::HEAD, S, &[], b"").await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.header("stream-ttl"), Some("3600"));
        assert_eq!(head.header("cache-control"), Some("no-store"));
        assert!(head.header("stream-closed").is_none());
        assert!(head.body.is_empty());
        assert_eq!(
            send(&svc, Method::DELETE, S, &[], b"").await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(get(&svc, S).await.status, StatusCode::NOT_FOUND);
        assert_eq!(
            send(&svc, Method::DELETE, S, &[], b"").await.status,
            StatusCode::NOT_FOUND
        );
        let recreated = put(&svc, S, "text/plain", b"new").await;
        assert_eq!(recreated.status, StatusCode::CREATED);
        assert_eq!(get(&svc, S).await.text(), "new");
    }

    pub async fn offset_now(svc: DurableStreamsService) {
        put(&svc, S, "application/json", br#"[1,2]"#).await;
        let now = get(&svc, &format!("{S}?offset=now")).await;
        assert_eq!(now.status, StatusCode::OK);
        assert_eq!(now.text(), "[]");
        assert_eq!(now.header("cache-control"), Some("no-store"));
        assert!(now.header("etag").is_none());
        assert_eq!(now.next_offset(), get(&svc, S).await.next_offset());
        for bad in ["", "0,1", "abc", "-2", "0000000000000000_9999999999999999"] {
            let reply = get(&svc, &format!("{S}?offset={bad}")).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "offset {bad:?}");
        }
        assert_eq!(
            get(&svc, &format!("{S}?offset=a&offset=b")).await.status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            get(&svc, &format!("{S}?live=long-poll")).await.status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            get(&svc, &format!("{S}?offset=-1&live=poll")).await.status,
            StatusCode::BAD_REQUEST
        );
    }

    pub async fn closure(svc: DurableStreamsService) {
        put(&svc, S, "text/plain", b"a").await;
        let close = send(
            &svc,
            Method::POST,
            S,
            &[("content-type", "text/plain"), ("stream-closed", "true")],
            b"z",
        )
        .await;
        assert_eq!(close.status, StatusCode::NO_CONTENT);
        assert_eq!(close.header("stream-closed"), Some("true"));
        let again = send(&svc, Method::POST, S, &[("stream-closed", "true")], b"").await;
        assert_eq!(again.status, StatusCode::NO_CONTENT);
        let refused = post(&svc, S, "text/plain", b"late").await;
        assert_eq!(refused.status, StatusCode::CONFLICT);
        assert_eq!(refused.header("stream-closed"), Some("true"));
        assert_eq!(refused.next_offset(), close.next_offset());
        let read = get(&svc, S).await;
        assert_eq!(
            (read.text(), read.header("stream-closed")),
            ("az", Some("true"))
        );
        let eof = get(&svc, &format!("{S}?offset={}", close.next_offset())).await;
        assert_eq!(
            (eof.text(), eof.header("stream-closed")),
            ("", Some("true"))
        );
        // "false" or anything but "true" is not a close.
        put(&svc, "/o", "text/plain", b"").await;
        let not_close = send(&svc, Method::POST, "/o", &[("stream-closed", "yes")], b"").await;
        assert_eq!(not_close.status, StatusCode::BAD_REQUEST);
        // Created closed.
        let closed = send(
            &svc,
            Method::PUT,
            "/c",
            &[("content-type", "text/plain"), ("stream-closed", "true")],
            b"x",
        )
        .await;
        assert_eq!(
            (closed.status, closed.header("stream-closed")),
            (StatusCode::CREATED, Some("true"))
        );
    }

    pub async fn producers(svc: DurableStreamsService) {
        put(&svc, S, "text/plain", b"").await;
        let p = |epoch: &'static str, seq: &'static str| {
            [
                ("content-type", "text/plain"),
                ("producer-id", "p"),
                ("producer-epoch", epoch),
                ("producer-seq", seq),
            ]
        };
        let first = send(&svc, Method::POST, S, &p("0", "0"), b"a").await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(
            (first.header("producer-epoch"), first.header("producer-seq")),
            (Some("0"), Some("0"))
        );
        assert_eq!(
            send(&svc, Method::POST, S, &p("0", "1"), b"b").await.status,
            StatusCode::OK
        );
        let dup = send(&svc, Method::POST, S, &p("0", "0"), b"a").await;
        assert_eq!(
            (dup.status, dup.header("producer-seq")),
            (StatusCode::NO_CONTENT, Some("1"))
        );
        let gap = send(&svc, Method::POST, S, &p("0", "3"), b"x").await;
        assert_eq!(gap.status, StatusCode::CONFLICT);
        assert_eq!(
            (
                gap.header("producer-expected-seq"),
                gap.header("producer-received-seq")
            ),
            (Some("2"), Some("3"))
        );
        assert_eq!(
            send(&svc, Method::POST, S, &p("1", "1"), b"x").await.status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            send(&svc, Method::POST, S, &p("1", "0"), b"c").await.status,
            StatusCode::OK
        );
        let zombie = send(&svc, Method::POST, S, &p("0", "2"), b"x").await;
        assert_eq!(
            (zombie.status, zombie.header("producer-epoch")),
            (StatusCode::FORBIDDEN, Some("1"))
        );
        assert_eq!(
            send(&svc, Method::POST, S, &p("0", "1e3"), b"x")
                .await
                .status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(get(&svc, S).await.text(), "abc");
    }

    pub async fn producers_and_closure(svc: DurableStreamsService) {
        put(&svc, S, "text/plain", b"").await;
        let p = |seq: &'static str| {
            [
                ("content-type", "text/plain"),
                ("producer-id", "p"),
                ("producer-epoch", "0"),
                ("producer-seq", seq),
                ("stream-closed", "true"),
            ]
        };
        assert_eq!(
            send(&svc, Method::POST, S, &p("0"), b"end").await.status,
            StatusCode::OK
        );
        let retry = send(&svc, Method::POST, S, &p("0"), b"other").await;
        assert_eq!(
            (retry.status, retry.header("stream-closed")),
            (StatusCode::NO_CONTENT, Some("true"))
        );
        let next = send(&svc, Method::POST, S, &p("1"), b"more").await;
        assert_eq!(
            (next.status, next.header("stream-closed")),
            (StatusCode::CONFLICT, Some("true"))
        );
        assert_eq!(get(&svc, S).await.text(), "end");
    }

    pub async fn forks(svc: DurableStreamsService) {
        let src = put(&svc, "/src", "text/plain", b"hello").await;
        async fn fork_of_src(
            svc: &DurableStreamsService,
            path: &str,
            extra: &[(&str, &str)],
        ) -> Reply {
            let mut headers = vec![("stream-forked-from", "/v1/stream/src")];
            headers.extend_from_slice(extra);
            send(svc, Method::PUT, path, &headers, b"").await
        }
        let whole = fork_of_src(&svc, "/f1", &[]).await;
        assert_eq!(
            (whole.status, whole.header("content-type")),
            (StatusCode::CREATED, Some("text/plain"))
        );
        assert!(whole.header("stream-forked-from").is_none());
        assert_eq!(fork_of_src(&svc, "/f1", &[]).await.status, StatusCode::OK);
        post(&svc, "/f1", "text/plain", b"!").await;
        post(&svc, "/src", "text/plain", b"?").await;
        assert_eq!(get(&svc, "/f1").await.text(), "hello!");
        assert_eq!(get(&svc, "/src").await.text(), "hello?");
        let zero = "0000000000000000_0000000000000000";
        let sub = fork_of_src(
            &svc,
            "/f2",
            &[
                ("stream-fork-offset", zero),
                ("stream-fork-sub-offset", "3"),
            ],
        )
        .await;
        assert_eq!(sub.status, StatusCode::CREATED);
        assert_eq!(get(&svc, "/f2").await.text(), "hel");
        let over = fork_of_src(
            &svc,
            "/f3",
            &[
                ("stream-fork-offset", zero),
                ("stream-fork-sub-offset", "6"),
            ],
        )
        .await;
        assert_eq!(over.status, StatusCode::BAD_REQUEST);
        let beyond = fork_of_src(
            &svc,
            "/f3",
            &[("stream-fork-offset", "0000000000000000_0000000000000099")],
        )
        .await;
        assert_eq!(beyond.status, StatusCode::BAD_REQUEST);
        let mismatch = fork_of_src(&svc, "/f3", &[("content-type", "application/json")]).await;
        assert_eq!(mismatch.status, StatusCode::CONFLICT);
        let missing = send(
            &svc,
            Method::PUT,
            "/f3",
            &[("stream-forked-from", "/v1/stream/nope")],
            b"",
        )
        .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        // A fork of a fork at a mid-point of inherited data.
        let nested = send(
            &svc,
            Method::PUT,
            "/f4",
            &[
                ("stream-forked-from", "/v1/stream/f1"),
                ("stream-fork-offset", &src.next_offset()),
            ],
            b"",
        )
        .await;
        assert_eq!(nested.status, StatusCode::CREATED);
        assert_eq!(get(&svc, "/f4").await.text(), "hello");
    }

    pub async fn fork_soft_delete_and_cascade(svc: DurableStreamsService) {
        put(&svc, "/a", "text/plain", b"A").await;
        send(
            &svc,
            Method::PUT,
            "/b",
            &[("stream-forked-from", "/v1/stream/a")],
            b"",
        )
        .await;
        post(&svc, "/b", "text/plain", b"B").await;
        send(
            &svc,
            Method::PUT,
            "/c",
            &[("stream-forked-from", "/v1/stream/b")],
            b"",
        )
        .await;
        assert_eq!(
            send(&svc, Method::DELETE, "/a", &[], b"").await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            send(&svc, Method::DELETE, "/b", &[], b"").await.status,
            StatusCode::NO_CONTENT
        );
        for gone in [Method::GET, Method::HEAD, Method::DELETE] {
            assert_eq!(
                send(&svc, gone, "/a", &[], b"").await.status,
                StatusCode::GONE
            );
        }
        assert_eq!(
            post(&svc, "/b", "text/plain", b"x").await.status,
            StatusCode::GONE
        );
        assert_eq!(
            put(&svc, "/a", "text/plain", b"").await.status,
            StatusCode::CONFLICT
        );
        let refork = send(
            &svc,
            Method::PUT,
            "/d",
            &[("stream-forked-from", "/v1/stream/a")],
            b"",
        )
        .await;
        assert_eq!(refork.status, StatusCode::CONFLICT);
        assert_eq!(get(&svc, "/c").await.text(), "AB");
        assert_eq!(
            send(&svc, Method::DELETE, "/c", &[], b"").await.status,
            StatusCode::NO_CONTENT
        );
        for path in ["/a", "/b", "/c"] {
            assert_eq!(
                send(&svc, Method::HEAD, path, &[], b"").await.status,
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
    }

    pub async fn ttl_expiry(svc: DurableStreamsService) {
        send(
            &svc,
            Method::PUT,
            S,
            &[("content-type", "text/plain"), ("stream-ttl", "0")],
            b"x",
        )
        .await;
        assert_eq!(
            send(&svc, Method::HEAD, S, &[], b"").await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            put(&svc, S, "text/plain", b"again").await.status,
            StatusCode::CREATED
        );
    }

    pub async fn reserved_and_bad_paths(svc: DurableStreamsService) {
        let reserved = put(&svc, "/__ds/subscriptions/x", "application/json", b"{}").await;
        assert_eq!(reserved.status, StatusCode::NOT_FOUND);
        assert_eq!(reserved.json()["code"], "RESERVED_PATH");
        for bad in ["/a/../b", "/a//b", "/%2e%2e"] {
            assert_eq!(
                put(&svc, bad, "text/plain", b"").await.status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        assert_eq!(get(&svc, "/").await.status, StatusCode::NOT_FOUND);
    }

    pub async fn method_not_allowed(svc: DurableStreamsService) {
        let reply = send(&svc, Method::PATCH, S, &[], b"").await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(reply.header("allow").is_some_and(|a| a.contains("POST")));
    }

    pub async fn payload_too_large(svc: DurableStreamsService) {
        put(&svc, S, "application/octet-stream", b"").await;
        let big = vec![0u8; 2048];
        let reply = post(&svc, S, "application/octet-stream", &big).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(get(&svc, S).await.body.is_empty(), "nothing written");
    }

    pub async fn security_headers_on_errors(svc: DurableStreamsService) {
        let reply = get(&svc, "/missing").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(
            reply.header("cross-origin-resource-policy"),
            Some("cross-origin")
        );
    }

    pub async fn recreating_an_expired_fork(svc: DurableStreamsService) {
        put(&svc, "/src", "text/plain", b"x").await;
        let fork = [
            ("stream-forked-from", "/v1/stream/src"),
            ("stream-ttl", "0"),
        ];
        assert_eq!(
            send(&svc, Method::PUT, "/f", &fork, b"").await.status,
            StatusCode::CREATED
        );
        // The fork has expired; creating it again must neither hang nor leak a reference.
        let again = tokio::time::timeout(
            Duration::from_secs(5),
            send(&svc, Method::PUT, "/f", &fork, b""),
        )
        .await;
        assert_eq!(again.expect("no deadlock").status, StatusCode::CREATED);
        assert_eq!(
            send(&svc, Method::DELETE, "/src", &[], b"").await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            send(&svc, Method::HEAD, "/src", &[], b"").await.status,
            StatusCode::GONE
        );
    }

    pub async fn closed_stream_dedups_only_the_closing_request(svc: DurableStreamsService) {
        put(&svc, S, "text/plain", b"").await;
        let p = |seq: &'static str| {
            [
                ("content-type", "text/plain"),
                ("producer-id", "p"),
                ("producer-epoch", "0"),
                ("producer-seq", seq),
            ]
        };
        assert_eq!(
            send(&svc, Method::POST, S, &p("0"), b"a").await.status,
            StatusCode::OK
        );
        let mut closing = p("1").to_vec();
        closing.push(("stream-closed", "true"));
        assert_eq!(
            send(&svc, Method::POST, S, &closing, b"b").await.status,
            StatusCode::OK
        );
        let earlier = send(&svc, Method::POST, S, &p("0"), b"a").await;
        assert_eq!(
            (earlier.status, earlier.header("stream-closed")),
            (StatusCode::CONFLICT, Some("true"))
        );
        let retry = send(&svc, Method::POST, S, &closing, b"b").await;
        assert_eq!(
            (retry.status, retry.header("producer-seq")),
            (StatusCode::NO_CONTENT, Some("1"))
        );
    }

    pub async fn sse_holds_back_split_characters(svc: DurableStreamsService) {
        let euro = "€".as_bytes();
        put(&svc, S, "text/plain", &euro[..2]).await;
        let response = open(&svc, &format!("{S}?offset=-1&live=sse")).await;
        let mut body = response.into_body();
        let first = next_frame(&mut body).await.expect("control");
        assert!(
            first.starts_with("event: control"),
            "only a control event yet: {first}"
        );
        assert!(first.contains("0000000000000000_0000000000000000"));
        post(&svc, S, "text/plain", &euro[2..]).await;
        let second = next_frame(&mut body).await.expect("data");
        assert!(second.starts_with("event: data\ndata:€\n"), "{second}");
    }

    pub async fn long_poll_times_out_with_204(svc: DurableStreamsService) {
        let created = put(&svc, S, "text/plain", b"x").await;
        let started = tokio::time::Instant::now();
        let reply = get(
            &svc,
            &format!("{S}?offset={}&live=long-poll", created.next_offset()),
        )
        .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        assert!(started.elapsed() >= Duration::from_secs(30));
        assert_eq!(reply.header("stream-up-to-date"), Some("true"));
        assert_eq!(reply.next_offset(), created.next_offset());
        assert!(reply
            .header("stream-cursor")
            .is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit())));
        // A closed stream answers at once.
        send(&svc, Method::POST, S, &[("stream-closed", "true")], b"").await;
        let started = tokio::time::Instant::now();
        let closed = get(&svc, &format!("{S}?offset=now&live=long-poll")).await;
        assert_eq!(
            (closed.status, closed.header("stream-closed")),
            (StatusCode::NO_CONTENT, Some("true"))
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    pub async fn long_poll_wakes_on_append(svc: DurableStreamsService) {
        put(&svc, S, "text/plain", b"old").await;
        let waiting = tokio::spawn({
            let svc = svc.clone();
            async move { get(&svc, &format!("{S}?offset=now&live=long-poll&cursor=1")).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        post(&svc, S, "text/plain", b"new").await;
        let reply = waiting.await.expect("task");
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "new"));
        assert!(reply.header("stream-cursor").is_some());
    }

    pub async fn sse_frames(svc: DurableStreamsService) {
        put(&svc, S, "text/plain", b"one\ntwo").await;
        let response = open(&svc, &format!("{S}?offset=-1&live=sse")).await;
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert!(response.headers().get("stream-sse-data-encoding").is_none());
        let mut body = response.into_body();
        let first = next_frame(&mut body).await.expect("first frame");
        assert!(
            first.starts_with("event: data\ndata:one\ndata:two\n\nevent: control\ndata:{"),
            "{first}"
        );
        assert!(first.contains("\"upToDate\":true"));
        post(&svc, S, "text/plain", b"three").await;
        let second = next_frame(&mut body).await.expect("second frame");
        assert!(
            second.starts_with("event: data\ndata:three\n\n"),
            "{second}"
        );
        send(&svc, Method::POST, S, &[("stream-closed", "true")], b"").await;
        let last = next_frame(&mut body).await.expect("closing control");
        assert!(
            last.contains("\"streamClosed\":true") && !last.contains("streamCursor"),
            "{last}"
        );
        assert_eq!(
            next_frame(&mut body).await,
            None,
            "the response ends after closure"
        );

        // Binary streams are base64, and the reconnect interval ends idle responses.
        put(&svc, "/bin", "application/octet-stream", &[0, 255]).await;
        let response = open(&svc, "/bin?offset=-1&live=sse").await;
        assert_eq!(response.headers()["stream-sse-data-encoding"], "base64");
        let mut body = response.into_body();
        assert!(next_frame(&mut body)
            .await
            .expect("data")
            .starts_with("event: data\ndata:AP8=\n"));
        let started = tokio::time::Instant::now();
        assert_eq!(next_frame(&mut body).await, None);
        assert!(started.elapsed() >= Duration::from_secs(59));
    }
}
