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
//! // Mount it: the stream /greetings is at /v1/stream/greetings.
//! let app: axum::Router = axum::Router::new().nest_service("/v1/stream", streams.clone());
//! # let _ = app;
//!
//! // Or drive it directly, as tests do, with paths below the mount.
//! let create = Request::put("/greetings")
//!     .header("content-type", "text/plain")
//!     .body(Full::new(Bytes::from("hello")))
//!     .unwrap();
//! assert_eq!(streams.clone().oneshot(create).await.unwrap().status(), 201);
//! let read = Request::get("/greetings?offset=-1")
//!     .body(Full::new(Bytes::new()))
//!     .unwrap();
//! let response = streams.oneshot(read).await.unwrap();
//! assert_eq!(response.headers()["stream-up-to-date"], "true");
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(&body[..], b"hello");
//! # }
//! ```
//!
//! # What is here
//!
//! - [`DurableStreamsService`] and its [`Builder`]: the HTTP side, for axum's
//!   `nest_service`, or [`fallback`](DurableStreamsService::fallback) for hosts
//!   that pass full paths (plain hyper, warp).
//! - [`Streams`] ([`DurableStreamsService::streams`]): the same streams from
//!   host code, without HTTP, waking the HTTP readers.
//! - [`storage`]: the [`Storage`] trait and its backends, [`MemoryStorage`],
//!   [`storage::FileStorage`] (buffered or fsynced, with group commit),
//!   `storage::RedbStorage` (feature `redb`), or your own, checked with
//!   [`storage::testkit`].
//! - [`auth`]: the per-stream authorization hook. [`headers`]: the protocol's
//!   header names, for CORS and clients. [`metrics`]: Prometheus counters
//!   (feature `metrics`).
//! - The [`guide`]: embedding in axum, hyper and warp, host layers, TLS,
//!   shutdown and in-process use.
//!
//! Inside, the crate is layered: the service maps HTTP to operations, the
//! engine holds every protocol rule once, storage persists what the engine
//! decided, and pure protocol helpers parse and encode. See
//! `docs/architecture.md`.
//!
//! [Durable Streams protocol]: https://github.com/durable-streams/durable-streams/blob/main/PROTOCOL.md
//! [tower]: https://docs.rs/tower

pub mod auth;
mod engine;
#[doc = include_str!("../docs/embedding.md")]
pub mod guide {}
pub mod headers;
#[cfg(feature = "metrics")]
pub mod metrics;
mod protocol;
mod service;
pub mod storage;
pub mod streams;
#[cfg(feature = "subscriptions")]
mod subscriptions;

pub use engine::StreamError;
pub use protocol::{Offset, OffsetParseError};
pub use service::{
    BoxError, BuildError, Builder, CachePolicy, DurableStreamsService, ResponseBody,
    ResponseFuture, WithFallback, WithFallbackFuture,
};
pub use storage::{MemoryStorage, Storage, StorageError};
pub use streams::Streams;
#[cfg(feature = "subscriptions")]
pub use subscriptions::SubscriptionOptions;

/// The crate's pure protocol helpers, for its own micro-benchmarks only: not
/// part of the public API, and may change in any release.
#[cfg(feature = "unstable-bench")]
#[doc(hidden)]
pub mod __bench {
    pub use crate::protocol::*;
}

/// The crate's parsers and encoders, for its own fuzz targets (`fuzz/`) only:
/// not part of the public API, and may change in any release.
#[cfg(feature = "unstable-fuzz")]
#[doc(hidden)]
#[path = "fuzzing.rs"]
pub mod __fuzz;
