//! The ceilings of this stack (hyper on tokio) for `benches/compare.sh`:
//!
//! - request rate: every request is answered 204 (201 for `PUT`) after its body
//!   is read, with no other work;
//! - SSE fan-out: `GET ?live=sse` subscribes to a broadcast of every `POST`
//!   body, sent as a `data` event and a `control` event, the least a Durable
//!   Streams server must write per delivery. There is no storage: a subscriber
//!   sees the bodies posted after it connected, on any path.
//! - catch-up: a stream whose name contains `catchup` keeps its `POST` bodies
//!   in memory, and a `GET` without `live` answers all of them as one `Bytes`
//!   (joined once, then shared), the cheapest answer hyper can send. Other
//!   paths keep nothing, so the request-rate ceiling stays bare.
//!
//! Connections get the example server's send buffer setting
//! (`DS_SERVER__SEND_BUFFER_BYTES`; 0, the default, for the kernel's
//! autotuning; `benches/compare.sh` sets 256 KiB for both) and hyper's
//! vectored writes, so the ceiling is tuned as the server is.
//!
//! ```text
//! cargo run --release --example bare_hyper -- 4450
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::broadcast;

type Body = BoxBody<Bytes, Infallible>;

/// The bodies posted to each `catchup` stream, and their join once made.
#[derive(Default)]
struct Kept {
    parts: Vec<Bytes>,
    joined: Option<Bytes>,
}

type Store = Arc<Mutex<HashMap<String, Kept>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(4450);
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    // The example server's socket tuning, so the ceiling is measured alike.
    let send_buffer = std::env::var("DS_SERVER__SEND_BUFFER_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if send_buffer > 0 {
        socket.set_send_buffer_size(send_buffer)?;
    }
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))?;
    let listener = socket.listen(1024)?;
    println!("listening on http://{}/v1/stream/", listener.local_addr()?);
    let (hub, _) = broadcast::channel::<Bytes>(4096);
    let hub = Arc::new(hub);
    let store = Store::default();
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        let (hub, store) = (hub.clone(), store.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (hub, store) = (hub.clone(), store.clone());
                    async move { Ok::<_, Infallible>(answer(&hub, &store, request).await) }
                });
            let mut server = auto::Builder::new(TokioExecutor::new());
            server.http1().writev(true);
            let _ = server.serve_connection(TokioIo::new(socket), service).await;
        });
    }
}

async fn answer(
    hub: &broadcast::Sender<Bytes>,
    store: &Store,
    request: http::Request<hyper::body::Incoming>,
) -> Response<Body> {
    let live = request
        .uri()
        .query()
        .is_some_and(|q| q.contains("live=sse"));
    if request.method() == Method::GET && live {
        return sse(hub.subscribe());
    }
    let path = request.uri().path().to_owned();
    let kept = path.contains("catchup");
    let method = request.method().clone();
    if method == Method::GET && kept {
        return catch_up(store, &path);
    }
    // Read the body, as a real server must, then answer.
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if method == Method::POST && hub.receiver_count() > 0 {
        let _ = hub.send(body.clone());
    }
    if kept && matches!(method, Method::PUT | Method::POST) {
        let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
        let entry = store.entry(path).or_default();
        entry.parts.push(body);
        entry.joined = None;
    }
    let mut response = Response::new(Empty::new().boxed());
    *response.status_mut() = match method {
        Method::PUT => StatusCode::CREATED,
        _ => StatusCode::NO_CONTENT,
    };
    response
}

/// Everything posted to `path`, as one `Bytes`, marked up to date.
fn catch_up(store: &Store, path: &str) -> Response<Body> {
    let body = {
        let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
        let kept = store.entry(path.to_owned()).or_default();
        let parts = &kept.parts;
        kept.joined
            .get_or_insert_with(|| Bytes::from(parts.concat()))
            .clone()
    };
    let tail = format!("{:033}", body.len());
    let mut response = Response::new(Full::new(body).boxed());
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert("stream-up-to-date", http::HeaderValue::from_static("true"));
    if let Ok(tail) = http::HeaderValue::from_str(&tail) {
        headers.insert("stream-next-offset", tail);
    }
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
