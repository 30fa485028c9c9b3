//! The gatekeeper pattern: a host application that hands out short-lived
//! signed tokens scoped to a stream-path prefix and a set of operations, checks
//! them in its own middleware, and lets the Durable Streams authorization hook
//! enforce them per stream.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example gatekeeper
//! ```
//!
//! Then ask for a token (the demo API key stands in for the host's own login):
//!
//! ```text
//! TOKEN=$(curl -s -X POST localhost:4438/tokens -H 'x-api-key: dev-key' \
//!   -H 'content-type: application/json' \
//!   -d '{"subject":"alice","prefix":"/chats/42/","operations":["create","append","read"],"ttl_secs":300}')
//! curl -X PUT -H "authorization: Bearer $TOKEN" -H 'content-type: text/plain' \
//!   localhost:4438/v1/stream/chats/42/messages
//! ```
//!
//! Settings: `GATEKEEPER_PORT` (4438), `GATEKEEPER_SECRET` (the HMAC key; a
//! random one per run if unset), `GATEKEEPER_API_KEY` (`dev-key`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use jsonwebtoken::{decode, encode, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tower_durable_streams::auth::{AuthorizeRequest, Operation, Refusal};
use tower_durable_streams::DurableStreamsService;

/// What a token allows: operations on streams under one path prefix.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    /// Who the token was issued to.
    sub: String,
    /// Stream paths (below the mount point) the token covers.
    prefix: String,
    /// Allowed operations: `create`, `append`, `close`, `read`, `delete`.
    ops: HashSet<String>,
    /// Expiry, seconds since the Unix epoch.
    exp: u64,
}

/// A token request, made after the host has authenticated the caller.
#[derive(Debug, Deserialize)]
struct TokenRequest {
    subject: String,
    prefix: String,
    operations: Vec<String>,
    ttl_secs: u64,
}

#[derive(Clone)]
struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    api_key: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// `POST /tokens`: issues a signed token. The API key check stands in for the
/// host's real authentication of its users.
async fn issue(
    State(keys): State<Arc<Keys>>,
    headers: HeaderMap,
    Json(request): Json<TokenRequest>,
) -> Response {
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(keys.api_key.as_str()) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong x-api-key").into_response();
    }
    let valid_prefix = request.prefix.starts_with('/') && request.prefix.ends_with('/');
    if !valid_prefix || request.ttl_secs == 0 || request.ttl_secs > 3600 {
        return (
            StatusCode::BAD_REQUEST,
            "prefix must be /…/ and ttl_secs 1..=3600",
        )
            .into_response();
    }
    let claims = Claims {
        sub: request.subject,
        prefix: request.prefix,
        ops: request.operations.into_iter().collect(),
        exp: now() + request.ttl_secs,
    };
    match encode(&Header::default(), &claims, &keys.encoding) {
        Ok(token) => token.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Host middleware: verifies a bearer token and leaves its claims in the
/// request extensions for the authorization hook. Requests without a token go
/// on without claims (the hook answers 401); a bad or expired token is 401 here.
async fn verify(State(keys): State<Arc<Keys>>, mut request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    if let Some(token) = bearer {
        let validation = Validation {
            leeway: 0,
            ..Validation::default()
        };
        match decode::<Claims>(&token, &keys.decoding, &validation) {
            Ok(data) => {
                request.extensions_mut().insert(data.claims);
            }
            Err(e) => {
                // Never log or echo the token itself.
                tracing::info!(error = %e, "refused a bearer token");
                return (
                    StatusCode::UNAUTHORIZED,
                    [("www-authenticate", "Bearer error=\"invalid_token\"")],
                    "invalid or expired token",
                )
                    .into_response();
            }
        }
    }
    next.run(request).await
}

/// The per-stream decision: the path must be under the token's prefix and the
/// operation among its operations.
async fn authorize(request: AuthorizeRequest) -> Result<(), Refusal> {
    let Some(claims) = request.extensions().get::<Claims>() else {
        return Err(Refusal::unauthorized("a bearer token is required").with_challenge("Bearer"));
    };
    let needed: &[&str] = match request.operation() {
        Operation::Create { .. } | Operation::Fork { .. } => &["create"],
        Operation::Append { closes: false, .. } => &["append"],
        Operation::Append { closes: true, .. } => &["append", "close"],
        Operation::Close { .. } => &["close"],
        Operation::Read { .. } | Operation::Head { .. } => &["read"],
        Operation::Delete { .. } => &["delete"],
        _ => return Err(Refusal::forbidden("unknown operation")),
    };
    if !request.path().starts_with(&claims.prefix) {
        return Err(Refusal::forbidden(format!(
            "the token covers {} only",
            claims.prefix
        )));
    }
    match needed.iter().find(|op| !claims.ops.contains(**op)) {
        Some(missing) => Err(Refusal::forbidden(format!(
            "the token does not allow {missing}"
        ))),
        None => Ok(()),
    }
}

/// The whole host application.
fn app(secret: &[u8], api_key: &str) -> Router {
    let keys = Arc::new(Keys {
        encoding: EncodingKey::from_secret(secret),
        decoding: DecodingKey::from_secret(secret),
        api_key: api_key.to_owned(),
    });
    let streams = DurableStreamsService::builder()
        .base_path("/v1/stream")
        .authorize(authorize)
        .build()
        .expect("valid settings");
    Router::new()
        .route("/tokens", post(issue))
        .nest_service("/v1/stream", streams)
        .layer(axum::middleware::from_fn_with_state(keys.clone(), verify))
        .with_state(keys)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let port: u16 = std::env::var("GATEKEEPER_PORT")
        .ok()
        .map(|p| p.parse().expect("GATEKEEPER_PORT: expected a port number"))
        .unwrap_or(4438);
    let secret = std::env::var("GATEKEEPER_SECRET")
        .map(String::into_bytes)
        .unwrap_or_else(|_| (0..32).map(|_| fastrand::u8(..)).collect());
    let api_key = std::env::var("GATEKEEPER_API_KEY").unwrap_or_else(|_| "dev-key".into());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind GATEKEEPER_PORT");
    println!("gatekeeper on http://127.0.0.1:{port} (tokens at /tokens, streams at /v1/stream/)");
    axum::serve(listener, app(&secret, &api_key))
        .await
        .expect("serve");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const SECRET: &[u8] = b"test-secret-test-secret-test-sec";

    fn token(prefix: &str, ops: &[&str], exp: u64) -> String {
        let claims = Claims {
            sub: "alice".into(),
            prefix: prefix.into(),
            ops: ops.iter().map(|s| s.to_string()).collect(),
            exp,
        };
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("token")
    }

    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, String) {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "h");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = app
            .clone()
            .oneshot(
                request
                    .body(axum::body::Body::from(body.to_owned()))
                    .expect("request"),
            )
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    const TEXT: [(&str, &str); 1] = [("content-type", "text/plain")];

    #[tokio::test]
    async fn issued_tokens_work_end_to_end() {
        let app = app(SECRET, "k");
        let (status, token) = call(&app, "POST", "/tokens", None, &[("x-api-key", "k"), ("content-type", "application/json")],
            r#"{"subject":"alice","prefix":"/chats/1/","operations":["create","append","read"],"ttl_secs":60}"#).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            call(
                &app,
                "PUT",
                "/v1/stream/chats/1/m",
                Some(&token),
                &TEXT,
                "hi"
            )
            .await
            .0,
            StatusCode::CREATED
        );
        assert_eq!(
            call(
                &app,
                "POST",
                "/v1/stream/chats/1/m",
                Some(&token),
                &TEXT,
                "!"
            )
            .await
            .0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            call(&app, "GET", "/v1/stream/chats/1/m", Some(&token), &[], "").await,
            (StatusCode::OK, "hi!".into())
        );
        assert_eq!(
            call(
                &app,
                "POST",
                "/tokens",
                None,
                &[("x-api-key", "wrong"), ("content-type", "application/json")],
                r#"{"subject":"x","prefix":"/","operations":[],"ttl_secs":60}"#
            )
            .await
            .0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn no_token_is_401() {
        let app = app(SECRET, "k");
        assert_eq!(
            call(&app, "PUT", "/v1/stream/chats/1/m", None, &TEXT, "")
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn a_token_for_another_prefix_is_403() {
        let app = app(SECRET, "k");
        let other = token("/chats/2/", &["create", "read"], now() + 60);
        assert_eq!(
            call(&app, "PUT", "/v1/stream/chats/1/m", Some(&other), &TEXT, "")
                .await
                .0,
            StatusCode::FORBIDDEN
        );
    }

    #[tokio::test]
    async fn a_read_only_token_cannot_append_or_create() {
        let app = app(SECRET, "k");
        let admin = token("/", &["create", "append", "read"], now() + 60);
        call(
            &app,
            "PUT",
            "/v1/stream/chats/1/m",
            Some(&admin),
            &TEXT,
            "x",
        )
        .await;
        let reader = token("/chats/1/", &["read"], now() + 60);
        assert_eq!(
            call(&app, "GET", "/v1/stream/chats/1/m", Some(&reader), &[], "").await,
            (StatusCode::OK, "x".into())
        );
        assert_eq!(
            call(
                &app,
                "POST",
                "/v1/stream/chats/1/m",
                Some(&reader),
                &TEXT,
                "y"
            )
            .await
            .0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(
                &app,
                "PUT",
                "/v1/stream/chats/1/n",
                Some(&reader),
                &TEXT,
                ""
            )
            .await
            .0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(&app, "GET", "/v1/stream/chats/1/m", Some(&reader), &[], "")
                .await
                .1,
            "x",
            "nothing was written"
        );
    }

    #[tokio::test]
    async fn an_expired_token_is_401() {
        let app = app(SECRET, "k");
        let expired = token("/chats/1/", &["create"], now() - 10);
        assert_eq!(
            call(
                &app,
                "PUT",
                "/v1/stream/chats/1/m",
                Some(&expired),
                &TEXT,
                ""
            )
            .await
            .0,
            StatusCode::UNAUTHORIZED
        );
        let forged = token("/chats/1/", &["create"], now() + 60).replace('a', "b");
        assert_eq!(
            call(
                &app,
                "PUT",
                "/v1/stream/chats/1/m",
                Some(&forged),
                &TEXT,
                ""
            )
            .await
            .0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn a_fork_needs_read_rights_on_its_source() {
        let app = app(SECRET, "k");
        let admin = token("/", &["create", "read"], now() + 60);
        call(
            &app,
            "PUT",
            "/v1/stream/private/src",
            Some(&admin),
            &TEXT,
            "secret",
        )
        .await;
        let mine = token("/chats/1/", &["create", "read"], now() + 60);
        let fork = [("stream-forked-from", "/v1/stream/private/src")];
        assert_eq!(
            call(
                &app,
                "PUT",
                "/v1/stream/chats/1/copy",
                Some(&mine),
                &fork,
                ""
            )
            .await
            .0,
            StatusCode::FORBIDDEN
        );
        call(
            &app,
            "PUT",
            "/v1/stream/chats/1/src",
            Some(&mine),
            &TEXT,
            "mine",
        )
        .await;
        let own = [("stream-forked-from", "/v1/stream/chats/1/src")];
        assert_eq!(
            call(
                &app,
                "PUT",
                "/v1/stream/chats/1/copy",
                Some(&mine),
                &own,
                ""
            )
            .await
            .0,
            StatusCode::CREATED
        );
    }
}
