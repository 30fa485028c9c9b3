//! One URL per stream under any mount point, in each host: axum's
//! `nest_service`, and `fallback` for plain hyper and for warp.

mod common;

use std::convert::Infallible;

use axum::response::IntoResponse;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_durable_streams::{DurableStreamsService, MemoryStorage};
use warp::Filter;

const BASE: &str = "/api/v2/streams";

fn streams() -> DurableStreamsService {
    DurableStreamsService::builder()
        .storage(MemoryStorage::new())
        .base_path(BASE)
        .build()
        .expect("service")
}

struct Reply {
    status: StatusCode,
    location: Option<String>,
    body: Bytes,
}

async fn call<S, B>(
    app: &S,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "example.test")
        .header("content-type", "text/plain");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Reply {
        status,
        location,
        body,
    }
}

/// What every host must show: one URL per stream, every name usable, forks by
/// full path, `__ds` reserved at the mount only.
async fn one_url_per_stream<S, B>(app: S)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let created = call(&app, Method::PUT, "/api/v2/streams/a/b", &[], "x").await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(
        created.location.as_deref(),
        Some("http://example.test/api/v2/streams/a/b")
    );
    let read = call(&app, Method::GET, "/api/v2/streams/a/b", &[], "").await;
    assert_eq!((read.status, &read.body[..]), (StatusCode::OK, &b"x"[..]));

    // The prefix is removed once: a doubled prefix names another stream, which
    // does not exist, and which can be created like any other name.
    let doubled = "/api/v2/streams/api/v2/streams/a/b";
    let alias = call(&app, Method::GET, doubled, &[], "").await;
    assert_eq!(
        alias.status,
        StatusCode::NOT_FOUND,
        "no second URL for /a/b"
    );
    let own = call(&app, Method::PUT, doubled, &[], "other").await;
    assert_eq!(
        own.status,
        StatusCode::CREATED,
        "a name starting with the prefix"
    );
    let read = call(&app, Method::GET, doubled, &[], "").await;
    assert_eq!(&read.body[..], b"other");
    let read = call(&app, Method::GET, "/api/v2/streams/a/b", &[], "").await;
    assert_eq!(&read.body[..], b"x", "the first stream is untouched");

    // A second spelling of the same name is refused, not aliased.
    let encoded = call(&app, Method::GET, "/api/v2/streams/%61/b", &[], "").await;
    assert_eq!(encoded.status, StatusCode::BAD_REQUEST);

    let fork_of = [("stream-forked-from", "/api/v2/streams/a/b")];
    let fork = call(&app, Method::PUT, "/api/v2/streams/f", &fork_of, "").await;
    assert_eq!(fork.status, StatusCode::CREATED);
    let outside = [("stream-forked-from", "/a/b")];
    let fork = call(&app, Method::PUT, "/api/v2/streams/g", &outside, "").await;
    assert_eq!(
        fork.status,
        StatusCode::NOT_FOUND,
        "a fork source outside the mount is no stream of this service"
    );

    let reserved = call(&app, Method::PUT, "/api/v2/streams/__ds/x", &[], "").await;
    assert_eq!(reserved.status, StatusCode::NOT_FOUND);
    let nested = call(&app, Method::PUT, "/api/v2/streams/x/__ds", &[], "").await;
    assert_eq!(
        nested.status,
        StatusCode::CREATED,
        "__ds is reserved only as the first segment below the mount"
    );
}

#[tokio::test]
async fn axum_nest_service() {
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "home" }))
        .nest_service(BASE, streams());
    one_url_per_stream(app.clone()).await;
    let home = call(&app, Method::GET, "/", &[], "").await;
    assert_eq!(&home.body[..], b"home");
}

#[tokio::test]
async fn hyper_fallback() {
    let not_found = tower::service_fn(|_: Request<Full<Bytes>>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(b"host 404")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        Ok::<_, Infallible>(response)
    });
    let app = streams().fallback(not_found);
    one_url_per_stream(app.clone()).await;
    for path in ["/index.html", "/api/v2/streamsx/a", "/api/v2"] {
        let other = call(&app, Method::GET, path, &[], "").await;
        assert_eq!(
            (other.status, &other.body[..]),
            (StatusCode::NOT_FOUND, &b"host 404"[..]),
            "{path} goes to the host"
        );
    }
}

#[tokio::test]
async fn warp_fallback() {
    let hello = warp::path("hello").map(|| "hello from warp");
    let app = streams().fallback(warp::service(hello));
    one_url_per_stream(app.clone()).await;
    let other = call(&app, Method::GET, "/hello", &[], "").await;
    assert_eq!(
        (other.status, &other.body[..]),
        (StatusCode::OK, &b"hello from warp"[..])
    );
}

#[tokio::test]
async fn a_host_guard_on_url_prefixes_cannot_be_bypassed() {
    // The host refuses every URL under /api/v2/streams/private/ in its own
    // middleware; no other URL reaches the stream /private/x.
    let guard = axum::middleware::from_fn(
        |request: axum::extract::Request, next: axum::middleware::Next| async move {
            if request.uri().path().starts_with("/api/v2/streams/private/") {
                return StatusCode::FORBIDDEN.into_response();
            }
            next.run(request).await
        },
    );
    let streams = streams();
    streams
        .streams()
        .create("/private/x", Default::default())
        .await
        .expect("create");
    let app = axum::Router::new().nest_service(BASE, streams).layer(guard);
    for path in [
        "/api/v2/streams/private/x",
        "/api/v2/streams/api/v2/streams/private/x",
        "/api/v2/streams/%70rivate/x",
    ] {
        let reply = call(&app, Method::GET, path, &[], "").await;
        assert_ne!(
            reply.status,
            StatusCode::OK,
            "{path} must not read /private/x"
        );
    }
}
