//! The service in a plain hyper server (no framework), mounted at `/v1/stream`
//! with `base_path`, serving HTTP/1.1 and HTTP/2 (h2c) with hyper-util.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example hyper
//! curl -X PUT -H 'content-type: text/plain' --data hi localhost:4439/v1/stream/demo
//! ```
//!
//! Requests outside the prefix get 404 from the host, not from the service.

use std::convert::Infallible;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tower::ServiceExt;
use tower_durable_streams::{BoxError, DurableStreamsService};

const BASE: &str = "/v1/stream";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let streams = DurableStreamsService::builder().base_path(BASE).build()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 4439)).await?;
    println!("hyper host on http://127.0.0.1:4439{BASE}/");
    loop {
        let (socket, _) = listener.accept().await?;
        let streams = streams.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let streams = streams.clone();
            async move {
                let path = request.uri().path();
                if path
                    .strip_prefix(BASE)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                {
                    let response = streams.oneshot(request).await?;
                    Ok::<_, Infallible>(response.map(|b| b.boxed()))
                } else {
                    let mut response = Response::new(Empty::new().map_err(|e| match e {}).boxed());
                    *response.status_mut() = StatusCode::NOT_FOUND;
                    Ok(response)
                }
            }
        });
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
