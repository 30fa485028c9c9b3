//! The service next to a warp 0.4 application, dispatched on the path prefix at
//! the hyper level: `/v1/stream/…` goes to Durable Streams, everything else to
//! the warp filters.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example warp
//! curl localhost:4440/hello
//! curl -X PUT -H 'content-type: text/plain' --data hi localhost:4440/v1/stream/demo
//! ```
//!
//! warp 0.3 is not supported: it is built on hyper 0.14 and http 0.2, whose
//! request and response types are not the `http` 1.x types this crate (and
//! hyper 1, axum 0.7+, tower-http 0.5+) use. Upgrade to warp 0.4.

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tower::ServiceExt;
use tower_durable_streams::{BoxError, DurableStreamsService};
use warp::Filter;

type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

const BASE: &str = "/v1/stream";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let streams = DurableStreamsService::builder().base_path(BASE).build()?;
    let app = warp::service(warp::path("hello").map(|| String::from("hello from warp\n")));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 4440)).await?;
    println!("warp host on http://127.0.0.1:4440 (streams at {BASE}/)");
    loop {
        let (socket, _) = listener.accept().await?;
        let (streams, app) = (streams.clone(), app);
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let (streams, app) = (streams.clone(), app);
            async move {
                let path = request.uri().path();
                let response: http::Response<Body> = if path
                    .strip_prefix(BASE)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                {
                    streams.oneshot(request).await?.map(|b| b.boxed())
                } else {
                    app.oneshot(request)
                        .await?
                        .map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed())
                };
                Ok::<_, std::convert::Infallible>(response)
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
