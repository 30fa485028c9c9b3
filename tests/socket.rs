//! One real-socket round trip: the service nested in axum, served over TCP on
//! loopback, driven by a hyper HTTP/1.1 client (including an SSE read).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tower_durable_streams::DurableStreamsService;

async fn client(
    address: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(address).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

fn request(
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: &'static [u8],
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    builder
        .body(Full::new(Bytes::from_static(body)))
        .expect("request")
}

#[tokio::test]
async fn axum_over_tcp() {
    let streams = DurableStreamsService::builder()
        .base_path("/v1/stream")
        .build()
        .expect("service");
    let app = axum::Router::new().nest_service("/v1/stream", streams);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut http = client(address).await;
    let created = http
        .send_request(request(
            Method::PUT,
            "/v1/stream/chat/1",
            Some("text/plain"),
            b"hi",
        ))
        .await
        .expect("put");
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        created.headers()["location"],
        "http://localhost/v1/stream/chat/1"
    );

    // A live SSE reader on its own connection sees an append made afterwards.
    let mut sse_http = client(address).await;
    let sse = sse_http
        .send_request(request(
            Method::GET,
            "/v1/stream/chat/1?offset=-1&live=sse",
            None,
            b"",
        ))
        .await
        .expect("sse");
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut events = sse.into_body();
    let first = events
        .frame()
        .await
        .expect("frame")
        .expect("ok")
        .into_data()
        .expect("data");
    assert!(std::str::from_utf8(&first)
        .expect("utf-8")
        .contains("data:hi"));

    let appended = http
        .send_request(request(
            Method::POST,
            "/v1/stream/chat/1",
            Some("text/plain"),
            b" there",
        ))
        .await
        .expect("post");
    assert_eq!(appended.status(), StatusCode::NO_CONTENT);
    let next = tokio::time::timeout(Duration::from_secs(10), events.frame())
        .await
        .expect("live frame in time")
        .expect("frame")
        .expect("ok")
        .into_data()
        .expect("data");
    assert!(std::str::from_utf8(&next)
        .expect("utf-8")
        .contains("data:  there"));

    let read = http
        .send_request(request(Method::GET, "/v1/stream/chat/1", None, b""))
        .await
        .expect("get");
    assert_eq!(read.headers()["stream-up-to-date"], "true");
    let body = read.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"hi there");
}
