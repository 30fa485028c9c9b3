//! Example-server processes over one PostgreSQL schema, and idempotent
//! producers that write through them while instances or the database fail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};

use super::postgres::url;
use super::process::{start_with, Client, Server};

fn start(binary: &std::path::Path, schema: &str) -> Server {
    start_with(
        binary,
        &[
            ("DS_STORAGE__MODE", "postgres"),
            ("DS_STORAGE__POSTGRES_URL", &url()),
            ("DS_STORAGE__POSTGRES_SCHEMA", schema),
            ("DS_STORAGE__POSTGRES_POOL_SIZE", "4"),
            ("DS_STORAGE__POSTGRES_TIMEOUT_MS", "3000"),
        ],
    )
}

/// What one writer saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub acked: Vec<String>,
    pub unavailable: usize,
    pub longest: Duration,
}

/// Appends `<w{writer}:{seq}>` as producer `w{writer}` until `stop`, moving to
/// the next instance when its connection breaks, retrying each record until
/// it is acknowledged.
async fn writer(
    writer: usize,
    instances: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut at = writer;
    let mut client: Option<Client> = None;
    let mut seq = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let record = format!("<w{writer}:{seq}>");
        loop {
            if client.is_none() {
                let address = {
                    let list = instances.lock().expect("lock");
                    list[at % list.len()]
                };
                client = Client::connect(address).await;
                if client.is_none() {
                    at += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
            let headers = [
                ("content-type", "text/plain".to_owned()),
                ("producer-id", format!("w{writer}")),
                ("producer-epoch", "0".to_owned()),
                ("producer-seq", seq.to_string()),
            ];
            let started = std::time::Instant::now();
            let sent = client.as_mut().expect("client").send(
                Method::POST,
                "/s",
                &headers,
                Bytes::from(record.clone()),
            );
            let answer = tokio::time::timeout(Duration::from_secs(20), sent)
                .await
                .unwrap_or_else(|_| panic!("w{writer}: a request hung for 20 s"));
            outcome.longest = outcome.longest.max(started.elapsed());
            match answer {
                Some((status, _, _)) if status.is_success() => {
                    outcome.acked.push(record.clone());
                    break;
                }
                Some((StatusCode::SERVICE_UNAVAILABLE, headers, _)) => {
                    assert!(
                        headers.contains_key("retry-after"),
                        "503 without Retry-After"
                    );
                    outcome.unavailable += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some((status, _, body)) => {
                    panic!("w{writer}: {status} {}", String::from_utf8_lossy(&body))
                }
                None => {
                    // The instance is gone (or the connection broke): the
                    // outcome is unknown; the retry elsewhere deduplicates.
                    client = None;
                    at += 1;
                }
            }
        }
        seq += 1;
    }
    outcome
}

/// The stream's records, read from `address` to its tail.
pub async fn records(address: SocketAddr) -> Vec<String> {
    let mut client = Client::connect(address).await.expect("connect");
    let mut text = String::new();
    let mut offset = "-1".to_owned();
    loop {
        let (status, headers, body) = client
            .send(
                Method::GET,
                &format!("/s?offset={offset}"),
                &[],
                Bytes::new(),
            )
            .await
            .expect("read");
        assert_eq!(status, StatusCode::OK);
        text.push_str(std::str::from_utf8(&body).expect("utf-8"));
        offset = headers["stream-next-offset"]
            .to_str()
            .expect("offset")
            .to_owned();
        if headers.contains_key("stream-up-to-date") {
            break;
        }
    }
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        assert!(rest.starts_with('<'), "torn data: {rest:?}");
        let end = rest.find('>').expect("whole record");
        out.push(rest[..=end].to_owned());
        rest = &rest[end + 1..];
    }
    out
}

/// Every acknowledged record once, nothing twice, each writer's in order.
pub fn check(found: &[String], outcomes: &[Outcome]) -> usize {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for record in found {
        *count.entry(record).or_default() += 1;
    }
    assert!(count.values().all(|n| *n == 1), "a record appears twice");
    let mut acked = 0;
    for (w, outcome) in outcomes.iter().enumerate() {
        for record in &outcome.acked {
            assert!(
                count.contains_key(record.as_str()),
                "acknowledged {record} is missing"
            );
        }
        let mine: Vec<usize> = found
            .iter()
            .filter(|r| r.starts_with(&format!("<w{w}:")))
            .map(|r| {
                r[r.find(':').expect(":") + 1..r.len() - 1]
                    .parse()
                    .expect("seq")
            })
            .collect();
        assert!(
            mine.windows(2).all(|p| p[0] + 1 == p[1]),
            "w{w} out of order"
        );
        acked += outcome.acked.len();
    }
    acked
}

async fn create(address: SocketAddr) {
    let mut client = Client::connect(address).await.expect("connect");
    let (status, _, _) = client
        .send(
            Method::PUT,
            "/s",
            &[("content-type", "text/plain".to_owned())],
            Bytes::new(),
        )
        .await
        .expect("create");
    assert_eq!(status, StatusCode::CREATED);
}

/// `n` example servers over `schema`, ready, with the stream `/s` created.
pub async fn cluster(schema: &str, n: usize) -> Vec<Server> {
    let binary = super::process::server_binary();
    let servers: Vec<Server> = (0..n).map(|_| start(&binary, schema)).collect();
    for server in &servers {
        super::process::wait_ready(server.address).await;
    }
    create(servers[0].address).await;
    servers
}

/// Idempotent producers writing through a set of instances until finished.
pub struct Load {
    /// The instances writers may use; remove one to make its writers move.
    pub instances: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<Outcome>>,
}

impl Load {
    /// Starts `writers` producers over `servers`.
    pub fn start(servers: &[Server], writers: usize) -> Load {
        let instances = Arc::new(Mutex::new(
            servers.iter().map(|s| s.address).collect::<Vec<_>>(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let writers = (0..writers)
            .map(|w| tokio::spawn(writer(w, instances.clone(), stop.clone())))
            .collect();
        Load {
            instances,
            stop,
            writers,
        }
    }

    /// Stops the writers and returns what each saw.
    pub async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut outcomes = Vec::new();
        for writer in self.writers {
            outcomes.push(writer.await.expect("writer"));
        }
        outcomes
    }
}
