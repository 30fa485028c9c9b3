//! The subscription APIs through the service (feature
//! `subscriptions`): webhook signatures checked against the
//! published key set, fencing, leases, URL refusals, and state that
//! survives a restart. Webhook receivers listen on 127.0.0.1 only.
#![cfg(feature = "subscriptions")]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use common::{get, post, put, send, Reply};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use tower_durable_streams::storage::{Durability, FileStorage};
use tower_durable_streams::{DurableStreamsService, SubscriptionOptions};

fn service(options: SubscriptionOptions) -> DurableStreamsService {
    DurableStreamsService::builder()
        .subscriptions(options)
        .build()
        .expect("valid settings")
}

fn dev() -> SubscriptionOptions {
    SubscriptionOptions::new().allow_development_webhooks(true)
}

async fn put_json(service: &DurableStreamsService, path: &str, body: serde_json::Value) -> Reply {
    put(
        service,
        path,
        "application/json",
        body.to_string().as_bytes(),
    )
    .await
}

async fn post_json(
    service: &DurableStreamsService,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    send(
        service,
        Method::POST,
        path,
        &headers,
        body.to_string().as_bytes(),
    )
    .await
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    signature: Option<String>,
    body: Bytes,
}

/// A webhook receiver on 127.0.0.1 answering every request with `answer`.
async fn receiver(answer: &'static str) -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    receive_with(answer, None).await
}

/// A receiver like [`receiver`] behind TLS, with a certificate for
/// `localhost` signed by itself: its address, what it got, and the
/// certificate (DER) for the server to trust.
async fn tls_receiver(answer: &'static str) -> (SocketAddr, Arc<Mutex<Vec<Received>>>, Vec<u8>) {
    use tokio_rustls::rustls;
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert = generated.cert.der().to_vec();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone().into()], key.into())
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (address, got) = receive_with(answer, Some(acceptor)).await;
    (address, got, cert)
}

async fn receive_with(
    answer: &'static str,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let signature = request
                                .headers()
                                .get("webhook-signature")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            seen.lock().unwrap().push(Received { signature, body });
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(answer.as_bytes()),
                            )))
                        }
                    },
                );
                let http1 = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(tls) => {
                        let Ok(socket) = tls.accept(socket).await else {
                            return;
                        };
                        let io = hyper_util::rt::TokioIo::new(socket);
                        let _ = http1.serve_connection(io, service).await;
                    }
                    None => {
                        let io = hyper_util::rt::TokioIo::new(socket);
                        let _ = http1.serve_connection(io, service).await;
                    }
                }
            });
        }
    });
    (address, got)
}

async fn first_request(got: &Arc<Mutex<Vec<Received>>>) -> Received {
    for _ in 0..500 {
        if let Some(r) = got.lock().unwrap().first().cloned() {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no webhook arrived within 5 s");
}

/// What a receiver does with a delivery: the key by `kid` from the set,
/// the time window, the signature over `<t>.<body>`.
fn verify(header: &str, body: &[u8], jwks: &serde_json::Value) -> bool {
    let mut fields = header.split(',');
    let (Some(t), Some(kid), Some(sig), None) = (
        fields.next().and_then(|f| f.strip_prefix("t=")),
        fields.next().and_then(|f| f.strip_prefix("kid=")),
        fields.next().and_then(|f| f.strip_prefix("ed25519=")),
        fields.next(),
    ) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if t.parse::<u64>().map_or(true, |t| now.abs_diff(t) > 300) {
        return false;
    }
    let Some(jwk) = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
    else {
        return false;
    };
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
    key.verify_strict(&[t.as_bytes(), b".", body].concat(), &sig)
        .is_ok()
}

#[tokio::test]
async fn a_webhook_is_signed_with_a_published_key_and_done_acknowledges_it() {
    let (address, got) = receiver(r#"{"done":true}"#).await;
    let service = service(dev());
    let url = format!("http://{address}/hook");
    let created = put_json(
        &service,
        "/__ds/subscriptions/s1",
        serde_json::json!({"type": "webhook", "pattern": "events/*", "webhook": {"url": url}}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let jwks = get(&service, "/__ds/jwks.json").await;
    assert_eq!(
        jwks.header("content-type"),
        Some("application/jwk-set+json")
    );
    let jwks = jwks.json();
    assert_eq!(
        created.json()["webhook"]["signing"]["kid"],
        jwks["keys"][0]["kid"]
    );
    // A create with data is an append the subscription hears of.
    put(&service, "/events/a", "application/json", br#"{"n":1}"#).await;
    let delivery = first_request(&got).await;
    let header = delivery.signature.expect("a signature header");
    assert!(verify(&header, &delivery.body, &jwks), "{header}");
    // Tampering breaks it.
    let mut tampered = delivery.body.to_vec();
    tampered.push(b' ');
    assert!(!verify(&header, &tampered, &jwks));
    let wake: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(wake["subscription_id"], "s1");
    let tail = wake["streams"][0]["tail_offset"].clone();
    // `{"done": true}` acknowledged the wake's snapshot.
    for _ in 0..300 {
        let sub = get(&service, "/__ds/subscriptions/s1").await.json();
        if sub["streams"][0]["acked_offset"] == tail {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the wake was not acknowledged");
}

#[tokio::test]
async fn a_callback_is_fenced_once_its_wake_is_over() {
    let (address, got) = receiver("{}").await;
    let service = service(dev());
    let url = format!("http://{address}/hook");
    put_json(
        &service,
        "/__ds/subscriptions/s2",
        serde_json::json!({"type": "webhook", "pattern": "events/*", "webhook": {"url": url}, "lease_ttl_ms": 60000}),
    )
    .await;
    put(&service, "/events/b", "application/json", br#"{"n":1}"#).await;
    let wake: serde_json::Value = serde_json::from_slice(&first_request(&got).await.body).unwrap();
    let callback = "/__ds/subscriptions/s2/callback".to_owned();
    let token = wake["callback_token"].as_str().unwrap();
    let body = serde_json::json!({
        "wake_id": wake["wake_id"],
        "generation": wake["generation"],
        "acks": [{"stream": "events/b", "offset": wake["streams"][0]["tail_offset"]}],
        "done": true,
    });
    // No token, or a forged one: 401.
    let refused = post_json(&service, &callback, None, body.clone()).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let forged = post_json(&service, &callback, Some("abc.def"), body.clone()).await;
    assert_eq!(forged.json()["error"]["code"], "TOKEN_INVALID");
    let done = post_json(&service, &callback, Some(token), body.clone()).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    assert_eq!(
        done.json(),
        serde_json::json!({"ok": true, "next_wake": false})
    );
    let again = post_json(&service, &callback, Some(token), body).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.json()["error"]["code"], "FENCED");
}

#[tokio::test]
async fn webhook_urls_into_the_network_are_refused() {
    let service = service(SubscriptionOptions::new());
    for url in [
        "http://10.0.0.1/hook",
        "https://169.254.169.254/latest",
        "https://[::1]/hook",
        "http://127.0.0.1:9/hook",
        "https://localhost/hook",
    ] {
        let reply = put_json(
            &service,
            "/__ds/subscriptions/bad",
            serde_json::json!({"type": "webhook", "pattern": "a/*", "webhook": {"url": url}}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{url}");
        assert_eq!(
            reply.json()["error"]["code"],
            "WEBHOOK_URL_REJECTED",
            "{url}"
        );
    }
}

#[tokio::test(start_paused = false)]
async fn a_lease_that_runs_out_frees_the_wake_for_another_worker() {
    let service = service(dev());
    put(&service, "/wake/pool", "application/json", b"[]").await;
    put_json(
        &service,
        "/__ds/subscriptions/p",
        serde_json::json!({"type": "pull-wake", "pattern": "jobs/*", "wake_stream": "wake/pool", "lease_ttl_ms": 1000}),
    )
    .await;
    put(&service, "/jobs/1", "application/json", br#"{"n":1}"#).await;
    let first = post_json(
        &service,
        "/__ds/subscriptions/p/claim",
        None,
        serde_json::json!({"worker": "w1"}),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let busy = post_json(
        &service,
        "/__ds/subscriptions/p/claim",
        None,
        serde_json::json!({"worker": "w2"}),
    )
    .await;
    assert_eq!(busy.json()["error"]["current_holder"], "w1");
    // The holder goes silent; after the lease, w2 gets the work under a new
    // generation and w1's token is fenced.
    let mut second = None;
    for _ in 0..300 {
        let reply = post_json(
            &service,
            "/__ds/subscriptions/p/claim",
            None,
            serde_json::json!({"worker": "w2"}),
        )
        .await;
        if reply.status == StatusCode::OK {
            second = Some(reply.json());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = second.expect("the lease ran out within 3 s");
    let first = first.json();
    assert!(second["generation"].as_u64() > first["generation"].as_u64());
    let late = post_json(
        &service,
        "/__ds/subscriptions/p/ack",
        first["token"].as_str(),
        serde_json::json!({"wake_id": first["wake_id"], "generation": first["generation"], "acks": [], "done": true}),
    )
    .await;
    assert_eq!(late.json()["error"]["code"], "FENCED");
    // The wake events are in the wake stream, one JSON message each.
    let events = get(&service, "/wake/pool?offset=-1").await.json();
    let events = events.as_array().unwrap();
    assert!(events.len() >= 2, "{events:?}");
    assert!(events
        .iter()
        .all(|e| e["type"] == "wake" && e["subscription_id"] == "p"));
}

#[tokio::test]
async fn subscriptions_and_their_cursors_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = || async {
        let storage = FileStorage::open(dir.path(), Durability::Fsync).unwrap();
        DurableStreamsService::builder()
            .storage(storage)
            .subscriptions(dev().signing_seed([9; 32]))
            .build()
            .unwrap()
    };
    let service = open().await;
    put(&service, "/wake/q", "application/json", b"[]").await;
    let created = put_json(
        &service,
        "/__ds/subscriptions/keep",
        serde_json::json!({"type": "pull-wake", "streams": ["jobs/x"], "wake_stream": "wake/q", "lease_ttl_ms": 60000}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    put(&service, "/jobs/x", "application/json", br#"{"n":1}"#).await;
    let claim = post_json(
        &service,
        "/__ds/subscriptions/keep/claim",
        None,
        serde_json::json!({"worker": "w1"}),
    )
    .await;
    assert_eq!(claim.status, StatusCode::OK, "{}", claim.text());
    let jwks = get(&service, "/__ds/jwks.json").await.json();
    drop(service);

    let service = open().await;
    let sub = get(&service, "/__ds/subscriptions/keep").await;
    assert_eq!(sub.status, StatusCode::OK, "{}", sub.text());
    assert_eq!(sub.json()["streams"][0]["path"], "jobs/x");
    // The lease and its holder came back, and the same key signs.
    let busy = post_json(
        &service,
        "/__ds/subscriptions/keep/claim",
        None,
        serde_json::json!({"worker": "w2"}),
    )
    .await;
    assert_eq!(busy.json()["error"]["current_holder"], "w1");
    assert_eq!(get(&service, "/__ds/jwks.json").await.json(), jwks);
    // The token from before the restart still acknowledges the wake.
    let claim = claim.json();
    let done = post_json(
        &service,
        "/__ds/subscriptions/keep/ack",
        claim["token"].as_str(),
        serde_json::json!({"wake_id": claim["wake_id"], "generation": claim["generation"],
            "acks": [{"stream": "jobs/x", "offset": claim["streams"][0]["tail_offset"]}], "done": true}),
    )
    .await;
    assert_eq!(
        done.json(),
        serde_json::json!({"ok": true, "next_wake": false})
    );
}

#[tokio::test]
async fn without_the_setting_the_apis_are_not_there() {
    let service = DurableStreamsService::builder().build().unwrap();
    let reply = get(&service, "/__ds/jwks.json").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = post(
        &service,
        "/__ds/subscriptions/x/claim",
        "application/json",
        b"{}",
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_hosts_authorize_hook_decides_who_subscribes_and_claims() {
    use tower_durable_streams::auth::{AuthorizeRequest, Operation, Refusal, SubscriptionAction};
    let service = DurableStreamsService::builder()
        .subscriptions(dev())
        .authorize(|request: AuthorizeRequest| async move {
            match request.operation() {
                Operation::Subscription { id, action, .. } if id == "theirs" => {
                    Err(Refusal::forbidden(format!("not yours: {action:?}")))
                }
                Operation::Subscription {
                    action: SubscriptionAction::Create { pattern, .. },
                    ..
                } if pattern.as_deref() == Some("**") => Err(Refusal::forbidden("too wide")),
                Operation::Subscription {
                    action: SubscriptionAction::Claim,
                    ..
                } => Err(Refusal::forbidden("no claims")),
                _ => Ok(()),
            }
        })
        .build()
        .unwrap();
    let body =
        serde_json::json!({"type": "pull-wake", "pattern": "jobs/*", "wake_stream": "wake/a"});
    let refused = put_json(&service, "/__ds/subscriptions/theirs", body.clone()).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        get(&service, "/__ds/subscriptions/theirs").await.status,
        StatusCode::FORBIDDEN
    );
    let wide = serde_json::json!({"type": "pull-wake", "pattern": "**", "wake_stream": "wake/a"});
    let refused = put_json(&service, "/__ds/subscriptions/wide", wide).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let mine = put_json(&service, "/__ds/subscriptions/mine", body).await;
    assert_eq!(mine.status, StatusCode::CREATED, "{}", mine.text());
    let claim = post_json(
        &service,
        "/__ds/subscriptions/mine/claim",
        None,
        serde_json::json!({"worker": "w"}),
    )
    .await;
    assert_eq!(claim.status, StatusCode::FORBIDDEN);
    // The key set stays public.
    assert_eq!(
        get(&service, "/__ds/jwks.json").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn existing_streams_are_linked_at_their_tail_when_a_subscription_is_made() {
    let service = service(dev());
    put(&service, "/wake/n", "application/json", b"[]").await;
    put(&service, "/jobs/old", "application/json", br#"{"n":1}"#).await;
    put(&service, "/jobs/older", "application/json", br#"{"n":1}"#).await;
    put(&service, "/other/x", "application/json", br#"{"n":1}"#).await;
    let created = put_json(
        &service,
        "/__ds/subscriptions/n",
        serde_json::json!({"type": "pull-wake", "pattern": "jobs/*", "streams": ["named/later"], "wake_stream": "wake/n"}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let tail = get(&service, "/jobs/old").await.next_offset();
    let links = created.json()["streams"].clone();
    let linked: Vec<(&str, &str, &str)> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap(),
                l["link_type"].as_str().unwrap(),
                l["acked_offset"].as_str().unwrap(),
            )
        })
        .collect();
    let zero = "0000000000000000_0000000000000000";
    assert_eq!(
        linked,
        [
            ("jobs/old", "glob", tail.as_str()),
            ("jobs/older", "glob", tail.as_str()),
            ("named/later", "explicit", zero),
        ]
    );
    // Nothing before the subscription is work.
    let claim = post_json(
        &service,
        "/__ds/subscriptions/n/claim",
        None,
        serde_json::json!({"worker": "w"}),
    )
    .await;
    assert_eq!(claim.json()["error"]["code"], "NO_PENDING_WORK");
    // A pattern over more existing streams than the server links is refused.
    let narrow = self::service(dev().max_backfill_streams(1));
    put(&narrow, "/jobs/a", "application/json", br#"{"n":1}"#).await;
    put(&narrow, "/jobs/b", "application/json", br#"{"n":1}"#).await;
    let wide = put_json(
        &narrow,
        "/__ds/subscriptions/wide",
        serde_json::json!({"type": "webhook", "pattern": "jobs/**", "webhook": {"url": "https://hooks.example.com/x"}}),
    )
    .await;
    assert_eq!(wide.status, StatusCode::BAD_REQUEST);
    assert!(
        wide.text().contains("max_backfill_streams"),
        "{}",
        wide.text()
    );
}

#[tokio::test]
async fn a_stream_deleted_and_created_again_is_new_work() {
    let service = service(dev());
    put(&service, "/wake/r", "application/json", b"[]").await;
    put_json(
        &service,
        "/__ds/subscriptions/r",
        serde_json::json!({"type": "pull-wake", "pattern": "jobs/*", "wake_stream": "wake/r"}),
    )
    .await;
    let claim_and_finish = |expect_tail: String| {
        let service = service.clone();
        async move {
            let mut claim = None;
            for _ in 0..300 {
                let reply = post_json(
                    &service,
                    "/__ds/subscriptions/r/claim",
                    None,
                    serde_json::json!({"worker": "w"}),
                )
                .await;
                if reply.status == StatusCode::OK {
                    claim = Some(reply.json());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let claim = claim.expect("a claim within 3 s");
            assert_eq!(claim["streams"][0]["tail_offset"], expect_tail.as_str());
            let done = post_json(
                &service,
                "/__ds/subscriptions/r/ack",
                claim["token"].as_str(),
                serde_json::json!({"wake_id": claim["wake_id"], "generation": claim["generation"],
                    "acks": [{"stream": "jobs/x", "offset": expect_tail}], "done": true}),
            )
            .await;
            assert_eq!(done.status, StatusCode::OK, "{}", done.text());
        }
    };
    put(
        &service,
        "/jobs/x",
        "application/json",
        br#"{"long":"first incarnation"}"#,
    )
    .await;
    claim_and_finish(get(&service, "/jobs/x").await.next_offset()).await;
    let deleted = send(&service, Method::DELETE, "/jobs/x", &[], b"").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    // Shorter than before: the old cursor would have hidden it.
    put(&service, "/jobs/x", "application/json", br#"{"n":2}"#).await;
    claim_and_finish(get(&service, "/jobs/x").await.next_offset()).await;
}

#[tokio::test]
async fn https_webhooks_are_delivered_to_a_receiver_the_server_trusts() {
    let (address, got, cert) = tls_receiver(r#"{"done":true}"#).await;
    let url = format!("https://localhost:{}/hook", address.port());
    // Without its certificate the receiver is not trusted: the delivery
    // fails and is retried, and nothing reaches it.
    let untrusting = service(dev());
    let created = put_json(
        &untrusting,
        "/__ds/subscriptions/t",
        serde_json::json!({"type": "webhook", "pattern": "tls/*", "webhook": {"url": url}}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    put(&untrusting, "/tls/a", "application/json", br#"{"n":1}"#).await;
    let mut failed = false;
    for _ in 0..300 {
        let sub = get(&untrusting, "/__ds/subscriptions/t").await.json();
        if sub["status"] == "failed" {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(failed, "an untrusted certificate must fail the delivery");
    assert!(got.lock().unwrap().iter().all(|r| r.signature.is_none()));

    let service = service(dev().add_webhook_root_certificate(cert));
    put_json(
        &service,
        "/__ds/subscriptions/t",
        serde_json::json!({"type": "webhook", "pattern": "tls/*", "webhook": {"url": url}}),
    )
    .await;
    put(&service, "/tls/a", "application/json", br#"{"n":1}"#).await;
    let delivery = first_request(&got).await;
    let jwks = get(&service, "/__ds/jwks.json").await.json();
    let header = delivery.signature.expect("a signature header");
    assert!(verify(&header, &delivery.body, &jwks), "{header}");
    let wake: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
    let tail = wake["streams"][0]["tail_offset"].clone();
    for _ in 0..300 {
        let sub = get(&service, "/__ds/subscriptions/t").await.json();
        if sub["streams"][0]["acked_offset"] == tail {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the wake was not acknowledged");
}

#[tokio::test]
async fn a_root_certificate_that_does_not_parse_fails_the_build() {
    let built = DurableStreamsService::builder()
        .subscriptions(SubscriptionOptions::new().add_webhook_root_certificate(b"junk".to_vec()))
        .build();
    let Err(error) = built else {
        panic!("a root certificate that does not parse must be refused");
    };
    let error = error.to_string();
    assert!(error.contains("subscription"), "{error}");
}

#[tokio::test]
async fn without_a_configured_seed_the_signing_key_is_kept_in_storage() {
    let dir = tempfile::tempdir().unwrap();
    let open = || async {
        let storage = FileStorage::open(dir.path(), Durability::Fsync).unwrap();
        DurableStreamsService::builder()
            .storage(storage)
            .subscriptions(dev())
            .build()
            .unwrap()
    };
    let first = open().await;
    let jwks = get(&first, "/__ds/jwks.json").await.json();
    let kid = jwks["keys"][0]["kid"].clone();
    assert!(kid.as_str().is_some_and(|k| k.starts_with("ds_")), "{kid}");
    drop(first);
    let second = open().await;
    assert_eq!(get(&second, "/__ds/jwks.json").await.json(), jwks);
    // A seed from the host takes precedence over the stored key.
    drop(second);
    let storage = FileStorage::open(dir.path(), Durability::Fsync).unwrap();
    let seeded = DurableStreamsService::builder()
        .storage(storage)
        .subscriptions(dev().signing_seed([3; 32]))
        .build()
        .unwrap();
    let other = get(&seeded, "/__ds/jwks.json").await.json();
    assert_ne!(other["keys"][0]["kid"], kid);
}

/// Two instances over one PostgreSQL schema, with a log short enough to be
/// compacted several times while they both change it: every change lands,
/// both agree, and an instance started afterwards reads the same state.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn instances_over_postgresql_agree_across_log_compactions() {
    use common::postgres::{connect, schema};
    let Some(schema) = schema().await else { return };
    let instance = |storage| {
        DurableStreamsService::builder()
            .storage(storage)
            .subscriptions(dev().compact_log_after_bytes(2_000))
            .build()
            .unwrap()
    };
    let a = instance(connect(&schema).await);
    let b = instance(connect(&schema).await);
    put(&a, "/wake/pg", "application/json", b"[]").await;
    let keep = put_json(
        &a,
        "/__ds/subscriptions/keep",
        serde_json::json!({"type": "pull-wake", "pattern": "jobs/*", "wake_stream": "wake/pg"}),
    )
    .await;
    assert_eq!(keep.status, StatusCode::CREATED, "{}", keep.text());
    // Churn from both sides: each round makes and deletes a subscription.
    for round in 0..30 {
        let (maker, deleter) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let made = put_json(
            maker,
            "/__ds/subscriptions/churn",
            serde_json::json!({"type": "pull-wake", "pattern": format!("c{round}/*"), "wake_stream": "wake/pg"}),
        )
        .await;
        assert_eq!(
            made.status,
            StatusCode::CREATED,
            "round {round}: {}",
            made.text()
        );
        let gone = send(
            deleter,
            Method::DELETE,
            "/__ds/subscriptions/churn",
            &[],
            b"",
        )
        .await;
        assert_eq!(gone.status, StatusCode::NO_CONTENT, "round {round}");
    }
    // Work appended on one instance is claimed on the other, once its wake
    // event is out (as a worker would).
    put(&b, "/jobs/1", "application/json", br#"{"n":1}"#).await;
    let mut woken = false;
    for _ in 0..500 {
        if get(&a, "/wake/pg?offset=-1").await.text().contains("keep") {
            woken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(woken, "no wake event within 5 s");
    let claim = post_json(
        &a,
        "/__ds/subscriptions/keep/claim",
        None,
        serde_json::json!({"worker": "w"}),
    )
    .await;
    assert_eq!(claim.status, StatusCode::OK, "{}", claim.text());
    let view = |s: Reply| {
        let mut v = s.json();
        v.as_object_mut().map(|o| o.remove("created_at"));
        v
    };
    let on_a = view(get(&a, "/__ds/subscriptions/keep").await);
    let on_b = view(get(&b, "/__ds/subscriptions/keep").await);
    assert_eq!(on_a, on_b);
    let c = instance(connect(&schema).await);
    assert_eq!(view(get(&c, "/__ds/subscriptions/keep").await), on_a);
    assert_eq!(
        get(&c, "/__ds/subscriptions/churn").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&c, "/__ds/jwks.json").await.json(),
        get(&a, "/__ds/jwks.json").await.json(),
        "one signing key for every instance"
    );
}

/// A service that outlives the runtime it was first used on (a test
/// harness, a host restarting its runtime) keeps its background work: the
/// lease sweeper starts again on the next runtime.
#[test]
fn the_sweeper_starts_again_on_a_new_runtime() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let service = service(dev());
    runtime().block_on(async {
        put(&service, "/wake/rt", "application/json", b"[]").await;
        put_json(
            &service,
            "/__ds/subscriptions/rt",
            serde_json::json!({"type": "pull-wake", "pattern": "jobs/*", "wake_stream": "wake/rt", "lease_ttl_ms": 1000}),
        )
        .await;
        put(&service, "/jobs/1", "application/json", br#"{"n":1}"#).await;
        let claim = post_json(
            &service,
            "/__ds/subscriptions/rt/claim",
            None,
            serde_json::json!({"worker": "w1"}),
        )
        .await;
        assert_eq!(claim.status, StatusCode::OK, "{}", claim.text());
    });
    // That runtime is gone, and its tasks with it. On the next one, the
    // lease runs out and only the sweeper can write the second wake event.
    runtime().block_on(async {
        assert_eq!(
            get(&service, "/__ds/subscriptions/rt").await.status,
            StatusCode::OK
        );
        for _ in 0..500 {
            let events = get(&service, "/wake/rt?offset=-1").await.json();
            if events.as_array().is_some_and(|e| e.len() >= 2) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the expired lease was not swept on the new runtime");
    });
}

/// A webhook URL accepted once and refused at delivery (the server no longer
/// allows development URLs) is a failed attempt: retried with back-off and
/// shown as `failed`, not tried again at every sweep.
#[tokio::test]
async fn a_url_refused_at_delivery_is_a_failed_attempt() {
    let (address, got) = receiver("{}").await;
    let dir = tempfile::tempdir().unwrap();
    let open = |options: SubscriptionOptions| {
        let path = dir.path().to_owned();
        async move {
            // A delivery task of the service dropped before may still hold the
            // store for a moment.
            let mut storage = FileStorage::open(&path, Durability::Fsync);
            for _ in 0..500 {
                if storage.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                storage = FileStorage::open(&path, Durability::Fsync);
            }
            DurableStreamsService::builder()
                .storage(storage.unwrap())
                .subscriptions(options.signing_seed([5; 32]))
                .build()
                .unwrap()
        }
    };
    let developing = open(dev()).await;
    let created = put_json(
        &developing,
        "/__ds/subscriptions/d",
        serde_json::json!({"type": "webhook", "pattern": "dev/*", "lease_ttl_ms": 1000,
            "webhook": {"url": format!("http://{address}/hook")}}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    put(&developing, "/dev/a", "application/json", br#"{"n":1}"#).await;
    // Taken without `done`: the wake waits for a callback that never comes.
    first_request(&got).await;
    drop(developing);

    let strict = open(SubscriptionOptions::new()).await;
    let mut status = serde_json::Value::Null;
    for _ in 0..400 {
        let sub = get(&strict, "/__ds/subscriptions/d").await.json();
        status = sub["status"].clone();
        if status == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        status, "failed",
        "the lease ran out and the new wake's URL is refused"
    );
    assert_eq!(got.lock().unwrap().len(), 1, "nothing more was sent");
}

/// A stream deleted and created again while its subscription's wake is out
/// (claimed, not finished) is new work once that wake ends.
#[tokio::test]
async fn a_stream_created_again_during_a_wake_is_new_work_after_it() {
    let service = service(dev());
    put(&service, "/wake/o", "application/json", b"[]").await;
    put_json(
        &service,
        "/__ds/subscriptions/o",
        serde_json::json!({"type": "pull-wake", "pattern": "jobs/*", "wake_stream": "wake/o"}),
    )
    .await;
    put(
        &service,
        "/jobs/x",
        "application/json",
        br#"{"long":"first incarnation"}"#,
    )
    .await;
    let claim = post_json(
        &service,
        "/__ds/subscriptions/o/claim",
        None,
        serde_json::json!({"worker": "w"}),
    )
    .await;
    assert_eq!(claim.status, StatusCode::OK, "{}", claim.text());
    let claim = claim.json();
    // Progress on the old stream, the wake still held.
    let progress = post_json(
        &service,
        "/__ds/subscriptions/o/ack",
        claim["token"].as_str(),
        serde_json::json!({"wake_id": claim["wake_id"], "generation": claim["generation"],
            "acks": [{"stream": "jobs/x", "offset": claim["streams"][0]["tail_offset"]}], "done": false}),
    )
    .await;
    assert_eq!(progress.status, StatusCode::OK, "{}", progress.text());
    send(&service, Method::DELETE, "/jobs/x", &[], b"").await;
    put(&service, "/jobs/x", "application/json", br#"{"n":2}"#).await;
    // The append hook links the new stream afresh, from its start.
    let zero = "0000000000000000_0000000000000000";
    let mut relinked = false;
    for _ in 0..500 {
        let sub = get(&service, "/__ds/subscriptions/o").await.json();
        if sub["streams"][0]["acked_offset"] == zero {
            relinked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(relinked, "the new stream was not linked afresh within 5 s");
    let done = post_json(
        &service,
        "/__ds/subscriptions/o/ack",
        claim["token"].as_str(),
        serde_json::json!({"wake_id": claim["wake_id"], "generation": claim["generation"],
            "acks": [], "done": true}),
    )
    .await;
    assert_eq!(
        done.json(),
        serde_json::json!({"ok": true, "next_wake": true}),
        "the new stream's bytes are pending"
    );
}
