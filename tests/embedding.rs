//! Embedding: authorization outcomes, graceful shutdown of live readers, and
//! tower-http layers in front of the service. Mounting is in `mounting.rs`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use tokio_util::sync::CancellationToken;
use tower_durable_streams::auth::{AuthorizeRequest, Operation, ReadMode, Refusal};
use tower_durable_streams::DurableStreamsService;

#[derive(Clone)]
struct Identity(&'static str);

/// A hook that records every operation it is asked about and allows what the
/// identity's rules allow: "admin" everything, "reader" reads, "nobody" nothing.
fn recording_service(seen: Arc<Mutex<Vec<Operation>>>) -> DurableStreamsService {
    DurableStreamsService::builder()
        .base_path("/v1/stream")
        .authorize(move |request: AuthorizeRequest| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("lock").push(request.operation().clone());
                match request.extensions().get::<Identity>() {
                    None => Err(Refusal::unauthorized("no identity").with_challenge("Bearer")),
                    Some(Identity("admin")) => Ok(()),
                    Some(Identity("reader")) if !request.operation().writes() => Ok(()),
                    Some(_) => Err(Refusal::forbidden("not allowed")),
                }
            }
        })
        .build()
        .expect("service")
}

async fn as_user(
    svc: &DurableStreamsService,
    who: Option<&'static str>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut req = request(method, path, headers, body);
    if let Some(who) = who {
        req.extensions_mut().insert(Identity(who));
    }
    let response = svc.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

#[tokio::test]
async fn authorization_outcomes() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let svc = recording_service(seen.clone());
    let ct = [("content-type", "text/plain")];

    let anonymous = as_user(&svc, None, Method::PUT, "/a", &ct, b"x").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    assert_eq!(anonymous.json()["code"], "UNAUTHORIZED");

    let reader = as_user(&svc, Some("reader"), Method::PUT, "/a", &ct, b"x").await;
    assert_eq!(reader.status, StatusCode::FORBIDDEN);
    assert_eq!(
        as_user(&svc, Some("admin"), Method::HEAD, "/a", &[], b"")
            .await
            .status,
        StatusCode::NOT_FOUND,
        "refused creates wrote nothing"
    );

    assert_eq!(
        as_user(&svc, Some("admin"), Method::PUT, "/a", &ct, b"x")
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        as_user(&svc, Some("reader"), Method::GET, "/a", &[], b"")
            .await
            .text(),
        "x"
    );
    assert_eq!(
        as_user(&svc, Some("reader"), Method::POST, "/a", &ct, b"y")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        as_user(&svc, Some("reader"), Method::DELETE, "/a", &[], b"")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        as_user(&svc, Some("admin"), Method::GET, "/a", &[], b"")
            .await
            .text(),
        "x",
        "refused appends wrote nothing"
    );

    seen.lock().expect("lock").clear();
    let closing = [("content-type", "text/plain"), ("stream-closed", "true")];
    as_user(&svc, Some("admin"), Method::POST, "/a", &ct, b"y").await;
    as_user(
        &svc,
        Some("admin"),
        Method::GET,
        "/a?offset=-1&live=long-poll",
        &[],
        b"",
    )
    .await;
    as_user(&svc, Some("admin"), Method::HEAD, "/a", &[], b"").await;
    as_user(&svc, Some("admin"), Method::POST, "/a", &closing, b"").await;
    as_user(&svc, Some("admin"), Method::DELETE, "/a", &[], b"").await;
    let path = || "/a".to_owned();
    assert_eq!(
        *seen.lock().expect("lock"),
        vec![
            Operation::Append {
                path: path(),
                closes: false
            },
            Operation::Read {
                path: path(),
                mode: ReadMode::LongPoll
            },
            Operation::Head { path: path() },
            Operation::Close { path: path() },
            Operation::Delete { path: path() },
        ]
    );
}

#[tokio::test]
async fn a_fork_needs_read_on_its_source() {
    // "writer" may create anything under /mine/ but read nothing else.
    let svc = DurableStreamsService::builder()
        .base_path("/v1/stream")
        .authorize(|request: AuthorizeRequest| async move {
            let mine = request.path().starts_with("/mine/");
            if mine
                || request
                    .extensions()
                    .get::<Identity>()
                    .is_some_and(|i| i.0 == "admin")
            {
                Ok(())
            } else {
                Err(Refusal::forbidden("only your own streams"))
            }
        })
        .build()
        .expect("service");
    as_user(
        &svc,
        Some("admin"),
        Method::PUT,
        "/secret",
        &[("content-type", "text/plain")],
        b"s3cr3t",
    )
    .await;
    let fork = [("stream-forked-from", "/v1/stream/secret")];
    let refused = as_user(&svc, Some("writer"), Method::PUT, "/mine/copy", &fork, b"").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        as_user(&svc, Some("admin"), Method::HEAD, "/mine/copy", &[], b"")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    as_user(
        &svc,
        Some("writer"),
        Method::PUT,
        "/mine/src",
        &[("content-type", "text/plain")],
        b"ok",
    )
    .await;
    let own_fork = [("stream-forked-from", "/v1/stream/mine/src")];
    assert_eq!(
        as_user(&svc, Some("writer"), Method::PUT, "/mine/f", &own_fork, b"")
            .await
            .status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn shutdown_ends_live_readers_with_their_protocol_answers() {
    let token = CancellationToken::new();
    let svc = DurableStreamsService::builder()
        .shutdown(token.clone())
        .long_poll_timeout(Duration::from_secs(600))
        .sse_reconnect_interval(Duration::from_secs(600))
        .build()
        .expect("service");
    let created = put(&svc, "/s", "text/plain", b"x").await;
    let poll = tokio::spawn({
        let svc = svc.clone();
        let tail = created.next_offset();
        async move { get(&svc, &format!("/s?offset={tail}&live=long-poll")).await }
    });
    let response = open(&svc, "/s?offset=-1&live=sse").await;
    let mut body = response.into_body();
    let first = next_frame(&mut body).await.expect("first frame");
    assert!(first.contains("data:x"));
    tokio::time::sleep(Duration::from_millis(50)).await;

    token.cancel();
    let reply = tokio::time::timeout(Duration::from_secs(1), poll)
        .await
        .expect("long-poll ends")
        .expect("task");
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.header("stream-up-to-date"), Some("true"));
    let last = tokio::time::timeout(Duration::from_secs(1), next_frame(&mut body))
        .await
        .expect("sse ends");
    let last = last.expect("a final control event");
    assert!(
        last.starts_with("event: control") && last.contains("streamNextOffset"),
        "{last}"
    );
    assert_eq!(next_frame(&mut body).await, None);
}

mod host_layers {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_durable_streams::headers::{REQUEST_HEADERS, RESPONSE_HEADERS};
    use tower_http::compression::CompressionLayer;
    use tower_http::cors::{Any, CorsLayer};
    use tower_http::limit::RequestBodyLimitLayer;
    use tower_http::timeout::TimeoutLayer;
    use tower_http::trace::TraceLayer;

    fn app() -> axum::Router {
        let streams = DurableStreamsService::builder()
            .base_path("/v1/stream")
            .long_poll_timeout(Duration::from_secs(1))
            .build()
            .expect("service");
        axum::Router::new()
            .nest_service("/v1/stream", streams)
            .layer(RequestBodyLimitLayer::new(1024))
            .layer(CompressionLayer::new())
            // Must exceed the long-poll timeout, or long-polls end in 408.
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(5),
            ))
            .layer(
                CorsLayer::new()
                    .allow_origin(Any)
                    .allow_headers(REQUEST_HEADERS)
                    .expose_headers(RESPONSE_HEADERS),
            )
            .layer(TraceLayer::new_for_http())
    }

    async fn call(
        app: &axum::Router,
        request: http::Request<http_body_util::Full<bytes::Bytes>>,
    ) -> Reply {
        let response = app.clone().oneshot(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.expect("body").to_bytes(),
        }
    }

    #[tokio::test]
    async fn compose() {
        let app = app();
        let created = call(
            &app,
            request(
                Method::PUT,
                "/v1/stream/s",
                &[("content-type", "text/plain")],
                &[b'a'; 900],
            ),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED);

        let preflight = call(
            &app,
            request(
                Method::OPTIONS,
                "/v1/stream/s",
                &[
                    ("origin", "https://app.test"),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "producer-id,if-none-match",
                    ),
                ],
                b"",
            ),
        )
        .await;
        assert!(preflight.status.is_success());
        let allowed = preflight
            .header("access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            allowed.contains("producer-id") && allowed.contains("if-none-match"),
            "{allowed}"
        );

        let read = call(
            &app,
            request(
                Method::GET,
                "/v1/stream/s",
                &[("origin", "https://app.test"), ("accept-encoding", "gzip")],
                b"",
            ),
        )
        .await;
        assert_eq!(
            read.header("content-encoding"),
            Some("gzip"),
            "catch-up reads compress"
        );
        assert!(read.body.len() < 900);
        let exposed = read
            .header("access-control-expose-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            exposed.contains("stream-next-offset") && exposed.contains("producer-epoch"),
            "{exposed}"
        );

        let too_big = call(
            &app,
            request(
                Method::POST,
                "/v1/stream/s",
                &[("content-type", "text/plain")],
                &[b'b'; 2048],
            ),
        )
        .await;
        assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            call(&app, request(Method::GET, "/v1/stream/s", &[], b""))
                .await
                .body
                .len(),
            900,
            "nothing written"
        );

        let tail = read.next_offset();
        let poll = call(
            &app,
            request(
                Method::GET,
                &format!("/v1/stream/s?offset={tail}&live=long-poll"),
                &[],
                b"",
            ),
        )
        .await;
        assert_eq!(
            poll.status,
            StatusCode::NO_CONTENT,
            "the service's long-poll ends before the host timeout"
        );
    }

    #[tokio::test]
    async fn sse_is_not_compressed_and_streams() {
        let app = app();
        call(
            &app,
            request(
                Method::PUT,
                "/v1/stream/s",
                &[("content-type", "text/plain")],
                b"hello",
            ),
        )
        .await;
        let response = app
            .clone()
            .oneshot(request(
                Method::GET,
                "/v1/stream/s?offset=-1&live=sse",
                &[("accept-encoding", "gzip")],
                b"",
            ))
            .await
            .expect("infallible");
        assert!(response.headers().get("content-encoding").is_none());
        let mut body = response.into_body();
        let frame = body
            .frame()
            .await
            .expect("frame")
            .expect("ok")
            .into_data()
            .expect("data");
        assert!(std::str::from_utf8(&frame)
            .expect("utf-8")
            .contains("data:hello"));
    }
}

#[tokio::test]
async fn location_follows_the_connection_and_trusted_proxies() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let plain = DurableStreamsService::builder()
        .base_path("/v1/stream")
        .build()
        .expect("service");
    let proxied = DurableStreamsService::builder()
        .base_path("/v1/stream")
        .trust_forwarded_headers(true)
        .build()
        .expect("service");
    let location =
        |service: &DurableStreamsService, path: &str, tls: bool, headers: &[(&str, &str)]| {
            let mut request = request(Method::PUT, path, headers, b"");
            if tls {
                request.extensions_mut().insert(http::uri::Scheme::HTTPS);
            }
            let service = service.clone();
            async move {
                let response = service.oneshot(request).await.expect("infallible");
                let location = response
                    .headers()
                    .get("location")
                    .map(|v| v.to_str().unwrap().to_owned());
                let _ = response.into_body().collect().await;
                location
            }
        };
    assert_eq!(
        location(&plain, "/a", false, &[]).await.as_deref(),
        Some("http://example.test/v1/stream/a")
    );
    assert_eq!(
        location(&plain, "/b", true, &[]).await.as_deref(),
        Some("https://example.test/v1/stream/b"),
        "a host serving TLS says so with an http::uri::Scheme extension"
    );
    let spoofed = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
    ];
    assert_eq!(
        location(&plain, "/c", false, &spoofed).await.as_deref(),
        Some("http://example.test/v1/stream/c"),
        "forwarded headers are ignored unless trusted"
    );
    assert_eq!(
        location(&proxied, "/d", false, &spoofed).await.as_deref(),
        Some("https://evil.example/v1/stream/d")
    );
    let rfc = [("forwarded", "for=10.0.0.1;proto=https;host=streams.example")];
    assert_eq!(
        location(&proxied, "/e", false, &rfc).await.as_deref(),
        Some("https://streams.example/v1/stream/e")
    );
}
