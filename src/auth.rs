//! Per-stream authorization: an optional async hook that sees each request's
//! parts and the protocol operation it asks for, and allows or refuses it.
//!
//! Identity is the host's business: its own middleware (sessions, JWTs, mTLS)
//! puts whatever it learned into the request extensions, and the hook reads it
//! from [`AuthorizeRequest::extensions`]. A refusal becomes a `401` or `403`
//! problem response and nothing is written.
//!
//! ```
//! use tower_durable_streams::auth::{AuthorizeRequest, Operation, Refusal};
//! use tower_durable_streams::DurableStreamsService;
//!
//! #[derive(Clone)]
//! struct User { name: String }
//!
//! let service = DurableStreamsService::builder()
//!     .authorize(|request: AuthorizeRequest| async move {
//!         let Some(user) = request.extensions().get::<User>() else {
//!             return Err(Refusal::unauthorized("sign in first"));
//!         };
//!         // Each user owns the streams under /users/<name>/; everyone may read.
//!         let own = request.path().starts_with(&format!("/users/{}/", user.name));
//!         match request.operation() {
//!             Operation::Read { .. } | Operation::Head { .. } => Ok(()),
//!             _ if own => Ok(()),
//!             _ => Err(Refusal::forbidden("you may only write your own streams")),
//!         }
//!     })
//!     .build()
//!     .unwrap();
//! # let _ = service;
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::request::Parts;
use http::{Extensions, HeaderMap, StatusCode};

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadMode {
    /// A catch-up `GET`.
    CatchUp,
    /// `live=long-poll`.
    LongPoll,
    /// `live=sse`.
    Sse,
    /// Reading the source of a fork being created (the data is inherited).
    ForkSource,
}

/// The protocol operation a request asks for, on which stream.
///
/// Stream paths are relative to the mount point, start with `/` and are still
/// percent-encoded, exactly as the stream is keyed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// `PUT`: create a stream (or re-confirm an existing one).
    Create {
        /// The stream.
        path: String,
    },
    /// `PUT` with `Stream-Forked-From`: create a fork of `source`. The hook is
    /// also asked for [`Operation::Read`] on `source` (mode
    /// [`ReadMode::ForkSource`]) first: a fork needs both.
    Fork {
        /// The new stream.
        path: String,
        /// The stream it forks.
        source: String,
    },
    /// `POST` with a body: append (and, with `Stream-Closed: true`, close).
    Append {
        /// The stream.
        path: String,
        /// The append also closes the stream.
        closes: bool,
    },
    /// `POST` with `Stream-Closed: true` and no body: close.
    Close {
        /// The stream.
        path: String,
    },
    /// `GET`.
    Read {
        /// The stream.
        path: String,
        /// How it is read.
        mode: ReadMode,
    },
    /// `HEAD`.
    Head {
        /// The stream.
        path: String,
    },
    /// `DELETE`.
    Delete {
        /// The stream.
        path: String,
    },
    /// A subscription API (feature `subscriptions`). The key set
    /// (`__ds/jwks.json`) is public, and callbacks, acks and releases carry
    /// the wake's own token, so none of those ask the hook.
    #[cfg(feature = "subscriptions")]
    Subscription {
        /// The request's path below the mount (`/__ds/subscriptions/<id>...`).
        path: String,
        /// The subscription.
        id: String,
        /// What is asked.
        action: SubscriptionAction,
    },
}

/// What a subscription request asks (feature `subscriptions`).
#[cfg(feature = "subscriptions")]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionAction {
    /// `PUT`: create or re-confirm it, with what it would see and where it
    /// would write.
    Create {
        /// The pattern of streams it follows.
        pattern: Option<String>,
        /// The streams it names.
        streams: Vec<String>,
        /// A pull-wake subscription's wake stream, which the server appends
        /// wake events to.
        wake_stream: Option<String>,
        /// A webhook subscription's URL.
        webhook_url: Option<String>,
    },
    /// `GET`.
    Read,
    /// `DELETE`.
    Delete,
    /// `POST .../streams`: link these streams.
    AddStreams(Vec<String>),
    /// `DELETE .../streams/<stream>`: unlink one.
    RemoveStream(String),
    /// `POST .../claim`: take a pull-wake subscription's wake.
    Claim,
}

impl Operation {
    /// The stream the operation acts on.
    pub fn path(&self) -> &str {
        match self {
            Operation::Create { path }
            | Operation::Fork { path, .. }
            | Operation::Append { path, .. }
            | Operation::Close { path }
            | Operation::Read { path, .. }
            | Operation::Head { path }
            | Operation::Delete { path } => path,
            #[cfg(feature = "subscriptions")]
            Operation::Subscription { path, .. } => path,
        }
    }

    /// Whether the operation changes anything.
    pub fn writes(&self) -> bool {
        match self {
            Operation::Read { .. } | Operation::Head { .. } => false,
            #[cfg(feature = "subscriptions")]
            Operation::Subscription {
                action: SubscriptionAction::Read,
                ..
            } => false,
            _ => true,
        }
    }
}

/// What the hook is asked about: the request's parts and the operation.
#[derive(Clone)]
pub struct AuthorizeRequest {
    parts: Arc<Parts>,
    operation: Operation,
}

impl AuthorizeRequest {
    pub(crate) fn new(parts: Arc<Parts>, operation: Operation) -> Self {
        AuthorizeRequest { parts, operation }
    }

    /// The operation asked for.
    pub fn operation(&self) -> &Operation {
        &self.operation
    }

    /// The stream the operation acts on.
    pub fn path(&self) -> &str {
        self.operation.path()
    }

    /// The request's method, URI, headers and extensions.
    pub fn parts(&self) -> &Parts {
        &self.parts
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// The request extensions, where host middleware leaves identities.
    pub fn extensions(&self) -> &Extensions {
        &self.parts.extensions
    }
}

impl fmt::Debug for AuthorizeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizeRequest")
            .field("method", &self.parts.method)
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

/// A refusal: `401` (who are you?) or `403` (not you), with a detail for the
/// problem body. Never put secrets in the detail: it is sent to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    status: StatusCode,
    detail: String,
    challenge: Option<String>,
}

impl Refusal {
    /// `401 Unauthorized`: no or invalid credentials.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            detail: detail.into(),
            challenge: None,
        }
    }

    /// `403 Forbidden`: valid credentials that do not allow this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::FORBIDDEN,
            detail: detail.into(),
            challenge: None,
        }
    }

    /// Adds a `WWW-Authenticate` challenge (for 401), such as `Bearer`.
    pub fn with_challenge(mut self, challenge: impl Into<String>) -> Self {
        self.challenge = Some(challenge.into());
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The detail sent in the problem body.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The `WWW-Authenticate` challenge, if any.
    pub fn challenge(&self) -> Option<&str> {
        self.challenge.as_deref()
    }
}

/// The boxed future an [`Authorizer`] returns.
pub type AuthorizeFuture = Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send>>;

/// Decides whether a request may perform its operation.
///
/// Implemented for every `Fn(AuthorizeRequest) -> impl Future<Output =
/// Result<(), Refusal>>` that is `Send + Sync + 'static`.
pub trait Authorizer: Send + Sync + 'static {
    /// Allows (`Ok`) or refuses the request.
    fn authorize(&self, request: AuthorizeRequest) -> AuthorizeFuture;
}

impl<F, Fut> Authorizer for F
where
    F: Fn(AuthorizeRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Refusal>> + Send + 'static,
{
    fn authorize(&self, request: AuthorizeRequest) -> AuthorizeFuture {
        Box::pin(self(request))
    }
}
