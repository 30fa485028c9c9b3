//! Helpers for driving the service with `tower::ServiceExt::oneshot`, no socket.
#![allow(dead_code)]

#[cfg(feature = "postgres")]
pub mod cluster;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod process;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_durable_streams::{DurableStreamsService, ResponseBody};

/// A finished response: status, headers and the whole body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }

    pub fn next_offset(&self) -> String {
        self.header("stream-next-offset")
            .expect("Stream-Next-Offset")
            .to_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

/// Builds a request.
pub fn request(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "example.test");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("valid request")
}

/// Sends a request and collects the whole response.
pub async fn send(
    service: &DurableStreamsService,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let response = service
        .clone()
        .oneshot(request(method, path, headers, body))
        .await
        .expect("infallible");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Sends a request and returns the response with its body still streaming.
pub async fn open(service: &DurableStreamsService, path: &str) -> http::Response<ResponseBody> {
    service
        .clone()
        .oneshot(request(Method::GET, path, &[], b""))
        .await
        .expect("infallible")
}

pub async fn put(
    service: &DurableStreamsService,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Reply {
    send(
        service,
        Method::PUT,
        path,
        &[("content-type", content_type)],
        body,
    )
    .await
}

pub async fn post(
    service: &DurableStreamsService,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Reply {
    send(
        service,
        Method::POST,
        path,
        &[("content-type", content_type)],
        body,
    )
    .await
}

pub async fn get(service: &DurableStreamsService, path: &str) -> Reply {
    send(service, Method::GET, path, &[], b"").await
}

/// Everything in a stream, read page by page following `Stream-Next-Offset`
/// until `Stream-Up-To-Date`; each page must be 200.
pub async fn read_all(service: &DurableStreamsService, path: &str) -> Vec<u8> {
    let mut all = Vec::new();
    let mut offset = "-1".to_owned();
    loop {
        let reply = get(service, &format!("{path}?offset={offset}")).await;
        assert_eq!(reply.status, StatusCode::OK, "read {path}");
        all.extend_from_slice(&reply.body);
        offset = reply.next_offset();
        if reply.header("stream-up-to-date").is_some() {
            return all;
        }
    }
}

/// The bytes in a file store's log segments.
pub fn log_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("log"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The next data frame of a streaming body, as text; `None` at the end.
pub async fn next_frame(body: &mut ResponseBody) -> Option<String> {
    loop {
        let frame = body.frame().await?.expect("body frame");
        if let Ok(data) = frame.into_data() {
            return Some(String::from_utf8(data.to_vec()).expect("utf-8 frame"));
        }
    }
}
