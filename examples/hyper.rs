//! The service in a plain hyper server (no framework), mounted at `/v1/stream`
//! with `base_path` and `fallback`, serving HTTP/1.1 and HTTP/2 (h2c) with
//! hyper-util.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example hyper
//! curl -X PUT -H 'content-type: text/plain' --data hi localhost:4439/v1/stream/demo
//! curl localhost:4439/v1/stream/demo
//! ```
//!
//! `fallback` sends requests under `/v1/stream` to the streams (the stream
//! `/demo` above) and every other request to the host's own service, here a
//! 404.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower_durable_streams::{BoxError, DurableStreamsService};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let not_found = tower::service_fn(|_: Request<Incoming>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        Ok::<_, Infallible>(response)
    });
    let app = DurableStreamsService::builder()
        .base_path("/v1/stream")
        .build()?
        .fallback(not_found);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 4439)).await?;
    println!("hyper host on http://127.0.0.1:4439/v1/stream/");
    loop {
        let (socket, _) = listener.accept().await?;
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let served = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), service)
                .await;
            if let Err(e) = served {
                eprintln!("connection error: {e}");
            }
        });
    }
}
