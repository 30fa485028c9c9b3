//! The [Durable Streams protocol] as a [tower] `Service`: durable, append-only HTTP
//! byte streams with catch-up, long-poll and SSE reads, forks and idempotent
//! producers, that drop into any axum, hyper or warp application.
//!
//! # Quick start
//!
//! ```
//! use bytes::Bytes;
//! use http::Request;
//! use http_body_util::{BodyExt, Full};
//! use tower::ServiceExt;
//! use tower_durable_streams::{DurableStreamsService, MemoryStorage};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let streams = DurableStreamsService::builder()
//!     .storage(MemoryStorage::new())
//!     .base_path("/v1/stream")
//!     .build()
//!     .expect("valid settings");
//!
//! // Mount it: axum::Router::new().nest_service("/v1/stream", streams.clone())
//! let app: axum::Router = axum::Router::new().nest_service("/v1/stream", streams.clone());
//! # let _ = app;
//!
//! // Or drive it directly, as tests do.
//! let create = Request::put("/v1/stream/greetings")
//!     .header("content-type", "text/plain")
//!     .body(Full::new(Bytes::from("hello")))
//!     .unwrap();
//! assert_eq!(streams.clone().oneshot(create).await.unwrap().status(), 201);
//! let read = Request::get("/v1/stream/greetings?offset=-1")
//!     .body(Full::new(Bytes::new()))
//!     .unwrap();
//! let response = streams.oneshot(read).await.unwrap();
//! assert_eq!(response.headers()["stream-up-to-date"], "true");
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(&body[..], b"hello");
//! # }
//! ```
//!
//! Storage: [`MemoryStorage`], [`storage::FileStorage`] (buffered or fsynced, with
//! group commit), `storage::RedbStorage` (feature `redb`), or your own
//! [`Storage`] checked with [`storage::testkit`]. Authorization: [`auth`].
//! Embedding in axum, hyper and warp, host layers, TLS and shutdown: the
//! [`guide`].
//!
//! The crate is layered: [`service`](DurableStreamsService) maps HTTP to
//! operations, [`engine`] holds every protocol rule once, [`storage`] persists
//! what the engine decided behind a small object-safe trait, and [`protocol`] has
//! the pure parsers and encoders. See `docs/architecture.md`.
//!
//! [Durable Streams protocol]: https://github.com/durable-streams/durable-streams/blob/main/PROTOCOL.md
//! [tower]: https://docs.rs/tower

pub mod auth;
#[doc = include_str!("../docs/embedding.md")]
pub mod guide {}
pub mod engine;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod protocol;
mod service;
pub mod storage;

pub use service::{
    BoxError, BuildError, Builder, CachePolicy, DurableStreamsService, ResponseBody, ResponseFuture,
};
pub use storage::{MemoryStorage, Storage, StorageError};
