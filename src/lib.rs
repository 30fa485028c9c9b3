//! The [Durable Streams protocol] as a [tower] `Service`: durable, append-only HTTP
//! byte streams with catch-up, long-poll and SSE reads, forks and idempotent
//! producers, that drop into any axum, hyper or warp application.
//!
//! ```
//! use tower_durable_streams::{DurableStreamsService, MemoryStorage};
//!
//! let streams = DurableStreamsService::builder()
//!     .storage(MemoryStorage::new())
//!     .base_path("/v1/stream")
//!     .build()
//!     .expect("valid settings");
//! let app: axum::Router = axum::Router::new().nest_service("/v1/stream", streams);
//! # let _ = app;
//! ```
//!
//! The crate is layered: [`service`](DurableStreamsService) maps HTTP to
//! operations, [`engine`] holds every protocol rule once, [`storage`] persists
//! what the engine decided behind a small object-safe trait, and [`protocol`] has
//! the pure parsers and encoders. See `docs/architecture.md`.
//!
//! [Durable Streams protocol]: https://github.com/durable-streams/durable-streams/blob/main/PROTOCOL.md
//! [tower]: https://docs.rs/tower

pub mod engine;
pub mod protocol;
mod service;
pub mod storage;

pub use service::{
    BoxError, BuildError, Builder, CachePolicy, DurableStreamsService, ResponseBody, ResponseFuture,
};
pub use storage::{MemoryStorage, Storage, StorageError};
