//! The service next to a warp 0.4 application: `/v1/stream/…` goes to Durable
//! Streams (with the prefix removed by `fallback`), everything else to the
//! warp filters.
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

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower_durable_streams::{BoxError, DurableStreamsService};
use warp::Filter;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let filters = warp::path("hello").map(|| String::from("hello from warp\n"));
    let app = DurableStreamsService::builder()
        .base_path("/v1/stream")
        .build()?
        .fallback(warp::service(filters));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 4440)).await?;
    println!("warp host on http://127.0.0.1:4440 (streams at /v1/stream/)");
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
