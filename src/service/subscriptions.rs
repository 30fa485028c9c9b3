//! The subscription APIs under `__ds` (feature `subscriptions`).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::operations::absolute_url;
use super::problem::Problem;
use super::responses::empty;
use super::upload::receive;
use super::{BoxError, Inner, ResponseBody};
use crate::protocol::Offset;
use crate::subscriptions::hub::{offset, Hub, HubError};
use crate::subscriptions::state::{Config, Delivery, Refusal, Report, Subscription};
use crate::subscriptions::token::TokenError;

/// Whether `path` (below the mount) is a subscription API's.
pub(super) fn is_control(path: &str) -> bool {
    path == "/__ds" || path.starts_with("/__ds/")
}

pub(super) async fn handle<B>(
    inner: Arc<Inner>,
    hub: Arc<Hub>,
    parts: Parts,
    body: B,
) -> Result<Response<ResponseBody>, Problem>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let path = parts.uri.path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches("/__ds/").split('/').collect();
    let method = parts.method.clone();
    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["jwks.json"]) => {
            let body = hub.jwks().await.map_err(|e| problem(HubError::Stream(e)))?;
            Ok(jwks(body))
        }
        (_, ["subscriptions", id, rest @ ..]) => {
            let id = subscription_id(id)?;
            let body = if matches!(method, Method::PUT | Method::POST) {
                receive(&inner, &parts.headers, body).await?.0
            } else {
                Bytes::new()
            };
            if body.len() > MAX_CONTROL_BODY {
                return Err(invalid(format!(
                    "a subscription request's body is at most {MAX_CONTROL_BODY} bytes"
                )));
            }
            let parts = authorize(&inner, parts, &id, &method, rest, &body).await?;
            let parts = &*parts;
            match (method, rest) {
                (Method::PUT, []) => put(&inner, &hub, parts, &id, &body).await,
                (Method::GET, []) => {
                    let sub = hub.get(&id).await.map_err(problem)?;
                    Ok(json_response(
                        StatusCode::OK,
                        view(&inner, &hub, parts, &sub),
                    ))
                }
                (Method::DELETE, []) => {
                    hub.delete(&id).await.map_err(problem)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                (Method::POST, ["streams"]) => {
                    #[derive(Deserialize)]
                    struct Streams {
                        streams: Vec<String>,
                    }
                    let streams: Streams = parse(&body)?;
                    hub.add_streams(&id, &streams.streams)
                        .await
                        .map_err(problem)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                (Method::DELETE, ["streams", stream @ ..]) if !stream.is_empty() => {
                    let joined = stream.join("/");
                    let name = percent_decode_str(&joined)
                        .decode_utf8()
                        .map_err(|_| invalid("the stream name is not valid UTF-8"))?;
                    hub.remove_stream(&id, &name).await.map_err(problem)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                (Method::POST, ["claim"]) => claim(&hub, &id, &body).await,
                (Method::POST, ["callback" | "ack"]) => {
                    let generation = hub
                        .check_token(&id, header(parts, AUTHORIZATION))
                        .await
                        .map_err(problem)?;
                    let report = report(&body, generation, true)?;
                    let next_wake = hub.report(&id, &report).await.map_err(problem)?;
                    Ok(json_response(
                        StatusCode::OK,
                        json!({ "ok": true, "next_wake": next_wake }),
                    ))
                }
                (Method::POST, ["release"]) => {
                    let generation = hub
                        .check_token(&id, header(parts, AUTHORIZATION))
                        .await
                        .map_err(problem)?;
                    let report = report(&body, generation, false)?;
                    hub.release(&id, &report).await.map_err(problem)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Err(Problem::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "METHOD_NOT_ALLOWED",
                    format!("{} {path} is not a subscription API", parts.method),
                )
                .nested(Map::new())),
            }
        }
        _ => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "SUBSCRIPTION_NOT_FOUND",
            format!("{path} is not a subscription API"),
        )
        .nested(Map::new())),
    }
}

/// Asks the host's authorize hook, if there is one, about the control
/// routes and claims (callbacks, acks and releases carry the wake's token
/// instead). Returns the parts, shared with the hook.
async fn authorize(
    inner: &Inner,
    parts: Parts,
    id: &str,
    method: &Method,
    rest: &[&str],
    body: &[u8],
) -> Result<Arc<Parts>, Problem> {
    use crate::auth::{AuthorizeRequest, Operation, SubscriptionAction};
    let parts = Arc::new(parts);
    let Some(authorizer) = &inner.authorizer else {
        return Ok(parts);
    };
    let action = match (method, rest) {
        (&Method::PUT, []) => {
            let body: PutBody = parse(body)?;
            SubscriptionAction::Create {
                pattern: body.pattern,
                streams: body.streams,
                wake_stream: body.wake_stream,
                webhook_url: body.webhook.map(|w| w.url),
            }
        }
        (&Method::GET, []) => SubscriptionAction::Read,
        (&Method::DELETE, []) => SubscriptionAction::Delete,
        (&Method::POST, ["streams"]) => {
            #[derive(Deserialize)]
            struct Streams {
                streams: Vec<String>,
            }
            let streams: Streams = parse(body)?;
            SubscriptionAction::AddStreams(streams.streams)
        }
        (&Method::DELETE, ["streams", stream @ ..]) => {
            let joined = stream.join("/");
            let name = percent_decode_str(&joined)
                .decode_utf8()
                .map_err(|_| invalid("the stream name is not valid UTF-8"))?;
            SubscriptionAction::RemoveStream(name.into_owned())
        }
        (&Method::POST, ["claim"]) => SubscriptionAction::Claim,
        // Token-authorized, or not a route (answered below).
        _ => return Ok(parts),
    };
    let operation = Operation::Subscription {
        path: parts.uri.path().to_owned(),
        id: id.to_owned(),
        action,
    };
    authorizer
        .authorize(AuthorizeRequest::new(parts.clone(), operation))
        .await
        .map_err(Problem::refused)?;
    Ok(parts)
}

fn header(parts: &Parts, name: http::HeaderName) -> Option<&str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The largest body a subscription request may have.
const MAX_CONTROL_BODY: usize = 256 * 1024;

/// The longest subscription id accepted.
const MAX_ID_BYTES: usize = 256;

fn subscription_id(raw: &str) -> Result<String, Problem> {
    let fine = !raw.is_empty()
        && raw.len() <= MAX_ID_BYTES
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
    if fine {
        Ok(raw.to_owned())
    } else {
        Err(invalid(
            "a subscription id is 1 to 256 of A-Z a-z 0-9 - _ . ~",
        ))
    }
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", detail).nested(Map::new())
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Problem> {
    serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the body is not what was expected: {e}")))
}

fn problem(error: HubError) -> Problem {
    let conflict = |code, detail: &str| Problem::new(StatusCode::CONFLICT, code, detail);
    let (problem, extra) = match error {
        HubError::Refused(refusal) => match refusal {
            Refusal::Invalid(detail) => (
                Problem::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", detail),
                Map::new(),
            ),
            Refusal::NotFound => (
                Problem::new(
                    StatusCode::NOT_FOUND,
                    "SUBSCRIPTION_NOT_FOUND",
                    "no such subscription",
                ),
                Map::new(),
            ),
            Refusal::Conflict => (
                conflict(
                    "SUBSCRIPTION_ALREADY_EXISTS",
                    "a subscription with this id exists with another configuration",
                ),
                Map::new(),
            ),
            Refusal::AlreadyClaimed { holder, generation } => {
                let mut extra = Map::new();
                extra.insert("current_holder".into(), holder.into());
                extra.insert("generation".into(), generation.into());
                (
                    conflict("ALREADY_CLAIMED", "another worker holds this wake"),
                    extra,
                )
            }
            Refusal::NoPendingWork => (
                conflict("NO_PENDING_WORK", "no linked stream has unprocessed data"),
                Map::new(),
            ),
            Refusal::Fenced => (
                conflict(
                    "FENCED",
                    "this wake is over (a newer generation or wake id holds it)",
                ),
                Map::new(),
            ),
            Refusal::InvalidOffset(detail) => (
                Problem::new(StatusCode::CONFLICT, "INVALID_OFFSET", detail),
                Map::new(),
            ),
        },
        HubError::Rejected(why) => (
            Problem::new(
                StatusCode::BAD_REQUEST,
                "WEBHOOK_URL_REJECTED",
                why.to_string(),
            ),
            Map::new(),
        ),
        HubError::Token(TokenError::Invalid) => (
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "TOKEN_INVALID",
                "a valid Authorization: Bearer token of this subscription is needed",
            ),
            Map::new(),
        ),
        HubError::Token(TokenError::Expired) => (
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "TOKEN_EXPIRED",
                "the token has expired",
            ),
            Map::new(),
        ),
        HubError::Stream(e) => (Problem::from(e), Map::new()),
    };
    problem.nested(extra)
}

fn json_response(status: StatusCode, body: Value) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn jwks(body: Vec<u8>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::from(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// The body of `PUT`.
#[derive(Deserialize)]
struct PutBody {
    #[serde(rename = "type")]
    kind: String,
    pattern: Option<String>,
    #[serde(default)]
    streams: Vec<String>,
    webhook: Option<WebhookBody>,
    wake_stream: Option<String>,
    lease_ttl_ms: Option<u64>,
    description: Option<String>,
}

#[derive(Deserialize)]
struct WebhookBody {
    url: String,
}

async fn put(
    inner: &Inner,
    hub: &Hub,
    parts: &Parts,
    id: &str,
    body: &[u8],
) -> Result<Response<ResponseBody>, Problem> {
    let body: PutBody = parse(body)?;
    let delivery = match (body.kind.as_str(), body.webhook, body.wake_stream) {
        ("webhook", Some(webhook), None) => Delivery::Webhook { url: webhook.url },
        ("pull-wake", None, Some(wake_stream)) => Delivery::PullWake { wake_stream },
        ("webhook", ..) => {
            return Err(invalid(
                "a webhook subscription needs webhook.url (and no wake_stream)",
            ))
        }
        ("pull-wake", ..) => {
            return Err(invalid(
                "a pull-wake subscription needs wake_stream (and no webhook)",
            ))
        }
        (other, ..) => {
            return Err(invalid(format!(
                "type {other:?} is neither webhook nor pull-wake"
            )))
        }
    };
    let config = Config::new(
        delivery,
        body.pattern,
        body.streams,
        body.lease_ttl_ms,
        body.description,
    )
    .map_err(|r| problem(HubError::Refused(r)))?;
    let base = absolute_url(inner, parts, "");
    let (created, sub) = hub.put(id, config, base).await.map_err(problem)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, view(inner, hub, parts, &sub)))
}

/// A subscription as clients see it.
fn view(inner: &Inner, hub: &Hub, parts: &Parts, sub: &Subscription) -> Value {
    let streams: Vec<Value> = sub
        .links
        .iter()
        .map(|(path, link)| {
            json!({
                "path": path,
                "link_type": if link.explicit { "explicit" } else { "glob" },
                "acked_offset": offset(link.acked),
            })
        })
        .collect();
    let (kind, webhook, wake_stream) = match &sub.config.delivery {
        Delivery::Webhook { url } => (
            "webhook",
            json!({
                "url": url,
                "signing": {
                    "alg": "ed25519",
                    "kid": hub.kid(),
                    "jwks_url": absolute_url(inner, parts, "/__ds/jwks.json"),
                },
            }),
            Value::Null,
        ),
        Delivery::PullWake { wake_stream } => ("pull-wake", Value::Null, json!(wake_stream)),
    };
    let created_at =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(sub.created_at_ms) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            });
    json!({
        "id": sub.id,
        "subscription_id": sub.id,
        "type": kind,
        "pattern": sub.config.pattern,
        "streams": streams,
        "webhook": webhook,
        "wake_stream": wake_stream,
        "lease_ttl_ms": sub.config.lease_ttl_ms,
        "created_at": created_at,
        "status": if sub.retry.is_some() { "failed" } else { "active" },
        "description": sub.config.description,
    })
}

async fn claim(hub: &Hub, id: &str, body: &[u8]) -> Result<Response<ResponseBody>, Problem> {
    #[derive(Deserialize)]
    struct ClaimBody {
        worker: String,
    }
    let body: ClaimBody = parse(body)?;
    let (sub, token, tails) = hub.claim(id, &body.worker).await.map_err(problem)?;
    let wake_id = sub.wake.as_ref().map(|w| w.id.clone());
    Ok(json_response(
        StatusCode::OK,
        json!({
            "wake_id": wake_id,
            "generation": sub.generation,
            "token": token,
            "streams": Hub::streams_json(&sub, &tails),
            "lease_ttl_ms": sub.config.lease_ttl_ms,
        }),
    ))
}

/// The body of a callback, an ack or a release.
fn report(body: &[u8], token_generation: u64, with_acks: bool) -> Result<Report, Problem> {
    #[derive(Deserialize)]
    struct Ack {
        #[serde(alias = "path")]
        stream: String,
        offset: String,
    }
    #[derive(Deserialize)]
    struct Body {
        wake_id: String,
        generation: u64,
        #[serde(default)]
        acks: Vec<Ack>,
        #[serde(default)]
        done: bool,
    }
    let body: Body = parse(body)?;
    let mut acks = Vec::new();
    if with_acks {
        for ack in body.acks {
            let at: Offset = ack.offset.parse().map_err(|_| {
                problem(HubError::Refused(Refusal::InvalidOffset(format!(
                    "{:?} is not an offset this server gave",
                    ack.offset
                ))))
            })?;
            acks.push((ack.stream, at.position()));
        }
    }
    Ok(Report {
        token_generation,
        wake_id: body.wake_id,
        generation: body.generation,
        acks,
        done: body.done,
    })
}
