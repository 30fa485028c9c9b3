//! In-process use: an axum handler that generates tokens (a stand-in for a
//! model's output) and appends them to a stream through the `Streams` handle,
//! while browsers and other clients read that stream over SSE from the same
//! service, woken as each token is appended. No HTTP round trip from the
//! handler to the streams.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example tokens
//! curl -s -X POST localhost:4441/generate -d 'tell me a story'
//! # {"stream":"/v1/stream/generations/1a2b…"}
//! curl -N 'localhost:4441/v1/stream/generations/1a2b…?offset=-1&live=sse'
//! ```
//!
//! The generator writes as an idempotent producer (`Producer-Id` =
//! generation id, epoch 0, one sequence number per token): had it to retry an
//! append after a failure, the retry would not duplicate the token. It closes
//! the stream at the end, so SSE readers get `streamClosed` and stop.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use tower_durable_streams::streams::{AppendOptions, CreateOptions, Producer};
use tower_durable_streams::{DurableStreamsService, Streams};

/// Where the streams are mounted.
const MOUNT: &str = "/v1/stream";

/// The app: `POST /generate` starts a generation; its tokens stream at
/// `/v1/stream/generations/<id>`.
fn app(pause: Duration) -> Router {
    let service = DurableStreamsService::builder()
        .base_path(MOUNT)
        .build()
        .expect("valid settings");
    let generator = Generator {
        streams: service.streams(),
        pause,
    };
    Router::new()
        .route("/generate", post(generate))
        .with_state(generator)
        .nest_service(MOUNT, service)
}

#[derive(Clone)]
struct Generator {
    streams: Streams,
    /// Time between tokens, as a model would take.
    pause: Duration,
}

/// Creates the generation's stream, answers with its URL at once, and appends
/// tokens in the background.
async fn generate(State(generator): State<Generator>, prompt: String) -> impl IntoResponse {
    let id = format!("{:016x}", fastrand::u64(..));
    let path = format!("/generations/{id}");
    let created = generator
        .streams
        .create(
            &path,
            CreateOptions::new()
                .content_type("text/plain; charset=utf-8")
                .ttl(Duration::from_secs(3600)),
        )
        .await;
    if let Err(e) = created {
        return (e.status(), e.to_string()).into_response();
    }
    tokio::spawn(run(generator, path.clone(), id, prompt));
    let url = format!("{MOUNT}{path}");
    (
        StatusCode::CREATED,
        Json(serde_json::json!({ "stream": url })),
    )
        .into_response()
}

/// Appends one token per word of a made-up answer, then closes the stream.
async fn run(generator: Generator, path: String, id: String, prompt: String) {
    let answer = format!("You asked: {prompt}. Here is an answer, one token at a time.");
    let tokens: Vec<String> = answer.split_inclusive(' ').map(str::to_owned).collect();
    for (seq, token) in tokens.into_iter().enumerate() {
        tokio::time::sleep(generator.pause).await;
        let append = AppendOptions::new(token).producer(Producer::new(id.clone(), 0, seq as u64));
        if let Err(e) = generator.streams.append_with(&path, append).await {
            tracing::warn!(stream = %path, error = %e, "generation stopped");
            return;
        }
    }
    if let Err(e) = generator.streams.close(&path).await {
        tracing::warn!(stream = %path, error = %e, "could not close the generation");
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 4441))
        .await
        .expect("bind 127.0.0.1:4441");
    println!("tokens on http://127.0.0.1:4441 (POST /generate, streams at {MOUNT}/)");
    axum::serve(listener, app(Duration::from_millis(150)))
        .await
        .expect("serve");
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::Request;
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    /// The SSE events of a response body, read frame by frame until the
    /// stream closes: (data payloads, closed).
    async fn read_sse(body: axum::body::Body) -> (String, bool) {
        let mut body = body;
        let (mut text, mut seen) = (String::new(), String::new());
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.expect("frame").into_data() else {
                continue;
            };
            seen.push_str(std::str::from_utf8(&data).expect("utf-8"));
            // Events end with an empty line.
            while let Some(end) = seen.find("\n\n") {
                let event: String = seen.drain(..end + 2).collect();
                if event.starts_with("event: data") {
                    for line in event.lines().filter_map(|l| l.strip_prefix("data:")) {
                        text.push_str(line);
                    }
                } else if event.contains("\"streamClosed\":true") {
                    return (text, true);
                }
            }
        }
        (text, false)
    }

    #[tokio::test]
    async fn sse_readers_see_every_token_as_it_is_generated() {
        let app = app(Duration::from_millis(5));
        let post = Request::post("/generate")
            .body(axum::body::Body::from("why is the sky blue"))
            .unwrap();
        let response = app.clone().oneshot(post).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let url = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["stream"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(url.starts_with("/v1/stream/generations/"));

        // A reader that joins while tokens are still being generated.
        let sse = Request::get(format!("{url}?offset=-1&live=sse"))
            .body(axum::body::Body::empty())
            .unwrap();
        let response = app.clone().oneshot(sse).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let read = tokio::time::timeout(Duration::from_secs(10), read_sse(response.into_body()));
        let (text, closed) = read.await.expect("the generation ends");
        assert!(closed, "the reader learns that the stream is closed");
        assert_eq!(
            text,
            "You asked: why is the sky blue. Here is an answer, one token at a time."
        );

        // A catch-up read afterwards gets the same bytes, once each.
        let get = Request::get(url.as_str())
            .body(axum::body::Body::empty())
            .unwrap();
        let response = app.oneshot(get).await.unwrap();
        assert_eq!(response.headers()["stream-closed"], "true");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, Bytes::from(text));
    }

    #[tokio::test]
    async fn a_retried_token_is_not_written_twice() {
        let service = DurableStreamsService::builder().build().unwrap();
        let streams = service.streams();
        streams
            .create("/g", CreateOptions::new().content_type("text/plain"))
            .await
            .unwrap();
        let token = AppendOptions::new("hello ").producer(Producer::new("g", 0, 0));
        streams.append_with("/g", token.clone()).await.unwrap();
        let retry = streams.append_with("/g", token).await.unwrap();
        assert!(retry.duplicate());
        let read = Request::get("/g").body(Full::new(Bytes::new())).unwrap();
        let body = service.oneshot(read).await.unwrap().into_body();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello ");
    }
}
