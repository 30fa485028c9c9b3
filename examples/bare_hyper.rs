//! The ceilings of this stack (hyper on tokio) for `benches/compare.sh`:
//!
//! - request rate: every request is answered 204 (201 for `PUT`) after its body
//!   is read, with no other work;
//! - SSE fan-out: `GET ?live=sse` subscribes to a broadcast of every `POST`
//!   body, sent as a `data` event and a `control` event, the least a Durable
//!   Streams server must write per delivery. There is no storage: a subscriber
//!   sees the bodies posted after it connected, on any path.
//!
//! ```text
//! cargo run --release --example bare_hyper -- 4450
//! ```

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::broadcast;

type Body = BoxBody<Bytes, Infallible>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(4450);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}/v1/stream/", listener.local_addr()?);
    let (hub, _) = broadcast::channel::<Bytes>(4096);
    let hub = Arc::new(hub);
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        let hub = hub.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let hub = hub.clone();
                    async move { Ok::<_, Infallible>(answer(&hub, request).await) }
                });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}

async fn answer(
    hub: &broadcast::Sender<Bytes>,
    request: http::Request<hyper::body::Incoming>,
) -> Response<Body> {
    let live = request
        .uri()
        .query()
        .is_some_and(|q| q.contains("live=sse"));
    if request.method() == Method::GET && live {
        return sse(hub.subscribe());
    }
    let method = request.method().clone();
    // Read the body, as a real server must, then answer.
    let body = request.into_body().collect().await.map(|b| b.to_bytes());
    if method == Method::POST && hub.receiver_count() > 0 {
        let _ = hub.send(body.unwrap_or_default());
    }
    let mut response = Response::new(Empty::new().boxed());
    *response.status_mut() = match method {
        Method::PUT => StatusCode::CREATED,
        _ => StatusCode::NO_CONTENT,
    };
    response
}

/// An SSE response carrying every broadcast body from now on.
fn sse(rx: broadcast::Receiver<Bytes>) -> Response<Body> {
    let events = futures_util::stream::unfold((rx, 0u64), |(mut rx, mut offset)| async move {
        let payload = loop {
            match rx.recv().await {
                Ok(payload) => break payload,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        };
        offset += payload.len() as u64;
        let mut frame = Vec::with_capacity(payload.len() + 128);
        frame.extend_from_slice(b"event: data\ndata:");
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(b"\n\nevent: control\ndata:{\"streamNextOffset\":\"");
        frame.extend_from_slice(format!("{offset:033}").as_bytes());
        frame.extend_from_slice(b"\",\"upToDate\":true}\n\n");
        let frame = Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(frame)));
        Some((frame, (rx, offset)))
    });
    let mut response = Response::new(StreamBody::new(events).boxed());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    response
}
