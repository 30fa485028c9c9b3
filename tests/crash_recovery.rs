//! Crash tests: the example server runs as a child process on a temporary data
//! directory, concurrent writers append (binary, JSON, an idempotent producer,
//! one close), and the process is killed with SIGKILL at a random moment,
//! several times in a row, restarting each time. After every restart each
//! acknowledged append must be there, byte-exact, in order and exactly once;
//! nothing unacknowledged may appear partially; a closed stream stays closed; and
//! the producer's in-flight request, retried after the restart, is deduplicated.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::process::{server_binary, start, wait_ready, Client};
use http::{Method, StatusCode};

const ROUNDS: usize = 4;
const BINARY_WRITERS: usize = 4;

/// What the writers know: per stream, tokens acknowledged and tokens in doubt.
#[derive(Default, Clone)]
struct Ledger {
    acked: HashMap<&'static str, Vec<String>>,
    in_doubt: HashMap<&'static str, Vec<String>>,
    closed: HashMap<&'static str, bool>,
}

fn token(writer: usize, round: usize, seq: usize) -> String {
    format!("<w{writer}r{round}s{seq}>")
}

/// Splits `<...>` tokens; fails on any partial or foreign bytes.
fn tokens(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).expect("utf-8");
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        assert!(rest.starts_with('<'), "partial data in stream: {rest:?}");
        let end = rest
            .find('>')
            .unwrap_or_else(|| panic!("partial token at {rest:?}"));
        out.push(rest[..=end].to_owned());
        rest = &rest[end + 1..];
    }
    out
}

fn check_stream(stream: &str, found: &[String], ledger: &Ledger) {
    let mut seen = HashMap::new();
    for t in found {
        *seen.entry(t.clone()).or_insert(0) += 1;
    }
    for (t, n) in &seen {
        assert_eq!(*n, 1, "{stream}: token {t} appears {n} times");
    }
    let acked = ledger
        .acked
        .get(stream)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let doubt = ledger
        .in_doubt
        .get(stream)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for t in acked {
        assert!(
            seen.contains_key(t),
            "{stream}: acknowledged {t} is missing"
        );
    }
    for t in found {
        assert!(
            acked.contains(t) || doubt.contains(t),
            "{stream}: {t} was never written"
        );
    }
    // Each writer's tokens appear in the order it wrote them.
    let mut last: HashMap<String, (usize, usize)> = HashMap::new();
    for t in found {
        let inner = &t[2..t.len() - 1];
        let (writer, rest) = inner.split_once('r').expect("token shape");
        let (round, seq) = rest.split_once('s').expect("token shape");
        let key = (
            round.parse::<usize>().expect("round"),
            seq.parse::<usize>().expect("seq"),
        );
        if let Some(previous) = last.insert(writer.to_owned(), key) {
            assert!(
                previous < key,
                "{stream}: writer {writer} out of order at {t}"
            );
        }
    }
}

async fn verify(address: SocketAddr, ledger: &Ledger) {
    let mut client = Client::connect(address).await.expect("connect");
    for stream in ["/bin0", "/bin1", "/prod"] {
        let (body, closed) = client.read_all(stream).await.expect("stream exists");
        check_stream(stream, &tokens(&body), ledger);
        if ledger.closed.get(stream).copied().unwrap_or(false) {
            assert!(closed, "{stream} was closed before the crash");
        }
    }
    let (body, _) = client.read_all("/json").await.expect("stream exists");
    let values: Vec<String> = serde_json::from_slice(&body).expect("json array");
    check_stream("/json", &values, ledger);
}

async fn run_mode(mode: &str) {
    let binary = server_binary();
    let dir = tempfile::tempdir().expect("dir");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut producer_seq = 0usize;
    let mut producer_in_doubt: Option<(usize, String)> = None;

    for round in 0..ROUNDS {
        let server = start(&binary, mode, dir.path());
        let address = server.address;
        wait_ready(address).await;
        let mut client = Client::connect(address).await.expect("connect");
        if round == 0 {
            for (path, ct) in [
                ("/bin0", "application/octet-stream"),
                ("/bin1", "application/octet-stream"),
                ("/json", "application/json"),
                ("/prod", "text/plain"),
            ] {
                let (status, _, _) = client
                    .send(
                        Method::PUT,
                        path,
                        &[("content-type", ct.into())],
                        Bytes::new(),
                    )
                    .await
                    .expect("create");
                assert_eq!(status, StatusCode::CREATED);
            }
        } else {
            let snapshot = ledger.lock().expect("ledger").clone();
            verify(address, &snapshot).await;
        }
        // The producer's request in doubt from the last crash is retried first.
        if let Some((seq, payload)) = producer_in_doubt.take() {
            let headers = producer_headers(seq);
            let (status, _, _) = client
                .send(
                    Method::POST,
                    "/prod",
                    &headers,
                    Bytes::from(payload.clone()),
                )
                .await
                .expect("retry");
            assert!(
                status == StatusCode::OK || status == StatusCode::NO_CONTENT,
                "retry got {status}"
            );
            ledger
                .lock()
                .expect("ledger")
                .acked
                .entry("/prod")
                .or_default()
                .push(payload);
            producer_seq = seq + 1;
        }
        let closing_round = round == ROUNDS - 1;
        let mut tasks = Vec::new();
        for writer in 0..BINARY_WRITERS {
            let ledger = ledger.clone();
            let stream: &'static str = if writer % 2 == 0 { "/bin0" } else { "/bin1" };
            tasks.push(tokio::spawn(async move {
                let Some(mut client) = Client::connect(address).await else {
                    return;
                };
                for seq in 0.. {
                    let t = token(writer, round, seq);
                    let headers = [("content-type", "application/octet-stream".to_owned())];
                    // The last round closes /bin1 with writer 1's tenth append.
                    let close = closing_round && writer == 1 && seq == 10;
                    let mut headers = headers.to_vec();
                    if close {
                        headers.push(("stream-closed", "true".to_owned()));
                    }
                    ledger
                        .lock()
                        .expect("ledger")
                        .in_doubt
                        .entry(stream)
                        .or_default()
                        .push(t.clone());
                    match client
                        .send(Method::POST, stream, &headers, Bytes::from(t.clone()))
                        .await
                    {
                        Some((StatusCode::NO_CONTENT, _, _)) => {
                            let mut l = ledger.lock().expect("ledger");
                            l.acked.entry(stream).or_default().push(t);
                            if close {
                                l.closed.insert(stream, true);
                                return;
                            }
                        }
                        Some((StatusCode::CONFLICT, headers, _))
                            if headers.contains_key("stream-closed") =>
                        {
                            return
                        }
                        Some((status, _, body)) => panic!("append got {status}: {body:?}"),
                        None => return,
                    }
                }
            }));
        }
        {
            let ledger = ledger.clone();
            tasks.push(tokio::spawn(async move {
                let Some(mut client) = Client::connect(address).await else {
                    return;
                };
                for seq in 0.. {
                    let t = token(9, round, seq);
                    let body = serde_json::to_vec(&[&t]).expect("json");
                    ledger
                        .lock()
                        .expect("ledger")
                        .in_doubt
                        .entry("/json")
                        .or_default()
                        .push(t.clone());
                    match client
                        .send(
                            Method::POST,
                            "/json",
                            &[("content-type", "application/json".into())],
                            Bytes::from(body),
                        )
                        .await
                    {
                        Some((StatusCode::NO_CONTENT, _, _)) => ledger
                            .lock()
                            .expect("ledger")
                            .acked
                            .entry("/json")
                            .or_default()
                            .push(t),
                        Some((status, _, _)) => panic!("json append got {status}"),
                        None => return,
                    }
                }
            }));
        }
        let producer = {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let mut seq = producer_seq;
                let Some(mut client) = Client::connect(address).await else {
                    return (seq, None);
                };
                loop {
                    let payload = token(8, round, seq);
                    ledger
                        .lock()
                        .expect("ledger")
                        .in_doubt
                        .entry("/prod")
                        .or_default()
                        .push(payload.clone());
                    match client
                        .send(
                            Method::POST,
                            "/prod",
                            &producer_headers(seq),
                            Bytes::from(payload.clone()),
                        )
                        .await
                    {
                        Some((StatusCode::OK, _, _)) => {
                            ledger
                                .lock()
                                .expect("ledger")
                                .acked
                                .entry("/prod")
                                .or_default()
                                .push(payload);
                            seq += 1;
                        }
                        Some((status, _, _)) => panic!("producer append got {status}"),
                        None => return (seq, Some(payload)),
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(150 + fastrand::u64(0..500))).await;
        server.kill();
        for task in tasks {
            task.await.expect("writer task");
        }
        let (seq, in_doubt) = producer.await.expect("producer task");
        producer_seq = seq;
        producer_in_doubt = in_doubt.map(|payload| (seq, payload));
    }

    // A last restart: everything is checked once more, and the closed stream
    // refuses appends.
    let server = start(&binary, mode, dir.path());
    wait_ready(server.address).await;
    {
        let ledger = ledger.lock().expect("ledger").clone();
        verify(server.address, &ledger).await;
        let acked: usize = ledger.acked.values().map(Vec::len).sum();
        eprintln!("{mode}: {acked} acknowledged appends over {ROUNDS} crashes");
        assert!(
            acked >= 20 * ROUNDS,
            "too few appends to prove anything: {acked}"
        );
        assert!(
            ledger.acked.get("/prod").is_some_and(|p| p.len() >= ROUNDS),
            "the producer wrote in every round"
        );
    }
    let mut client = Client::connect(server.address).await.expect("connect");
    if ledger.lock().expect("ledger").closed.contains_key("/bin1") {
        let (status, _, _) = client
            .send(
                Method::POST,
                "/bin1",
                &[("content-type", "application/octet-stream".into())],
                Bytes::from_static(b"<late>"),
            )
            .await
            .expect("append");
        assert_eq!(status, StatusCode::CONFLICT);
    }
    server.kill();
}

fn producer_headers(seq: usize) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "text/plain".into()),
        ("producer-id", "crash-producer".into()),
        ("producer-epoch", "0".into()),
        ("producer-seq", seq.to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_fast_survives_kill_9() {
    run_mode("file-fast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_durable_survives_kill_9() {
    run_mode("file-durable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acid_survives_kill_9() {
    run_mode("acid").await;
}
