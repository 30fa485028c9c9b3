//! PostgreSQL storage: the storage testkit, and two service instances over one
//! database (two services with their own pools and listeners in this process)
//! for each multi-instance behaviour.
#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::postgres::{connect, schema};
use common::*;
use http::{Method, StatusCode};
use tower_durable_streams::storage::{testkit, SharedStorage};
use tower_durable_streams::DurableStreamsService;

/// Each testkit check on a fresh schema (skipped without a database).
macro_rules! testkit_on_postgres {
    ($($check:ident),* $(,)?) => {
        mod testkit_checks {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let Some(schema) = schema().await else { return };
                    testkit::$check(connect(&schema).await).await;
                }
            )*
        }
    };
}

testkit_on_postgres!(
    create_is_idempotent,
    appends_read_back,
    appends_are_conditional,
    appends_are_pipelined,
    append_state_is_persisted,
    reads_are_bounded,
    fork_records_start_at_their_position,
    lists_by_prefix_in_pages,
    gets_many_at_once,
);

#[tokio::test]
async fn testkit_survives_reopen() {
    let Some(schema) = schema().await else { return };
    testkit::survives_reopen(|| connect(&schema)).await;
}

#[tokio::test]
async fn testkit_delete_and_soft_delete() {
    let Some(schema) = schema().await else { return };
    testkit::delete_and_soft_delete(connect(&schema).await).await;
}

/// Two instances over one schema.
async fn instances() -> Option<(DurableStreamsService, DurableStreamsService)> {
    let schema = schema().await?;
    let service = |storage| {
        DurableStreamsService::builder()
            .storage(storage)
            .base_path("/v1/stream")
            .expiry_sweep_interval(Duration::from_millis(100))
            .long_poll_timeout(Duration::from_secs(20))
            .build()
            .expect("service")
    };
    let a = service(connect(&schema).await);
    let b = service(connect(&schema).await);
    Some((a, b))
}

const TEXT: [(&str, &str); 1] = [("content-type", "text/plain")];

#[tokio::test]
async fn an_append_on_one_instance_is_read_at_once_on_the_other() {
    let Some((a, b)) = instances().await else {
        return;
    };
    assert_eq!(
        put(&a, "/s", "text/plain", b"").await.status,
        StatusCode::CREATED
    );
    let mut expected = String::new();
    for i in 0..30 {
        let piece = format!("{i};");
        expected.push_str(&piece);
        let (writer, reader) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let appended = post(writer, "/s", "text/plain", piece.as_bytes()).await;
        assert_eq!(appended.status, StatusCode::NO_CONTENT);
        let read = get(reader, "/s?offset=-1").await;
        assert_eq!(read.text(), expected, "read-your-writes across instances");
        assert_eq!(read.next_offset(), appended.next_offset());
        let head = send(reader, Method::HEAD, "/s", &[], b"").await;
        assert_eq!(head.next_offset(), appended.next_offset());
    }
}

#[tokio::test]
async fn concurrent_appends_from_two_instances_never_interleave_or_vanish() {
    let Some((a, b)) = instances().await else {
        return;
    };
    put(&a, "/s", "text/plain", b"").await;
    let mut tasks = Vec::new();
    for writer in 0..6 {
        let service = if writer % 2 == 0 {
            a.clone()
        } else {
            b.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..20 {
                // Varying lengths, so that an interleaving would show.
                let record = format!("<{writer}:{n}:{}>", "x".repeat((writer * 7 + n) % 13));
                let reply = post(&service, "/s", "text/plain", record.as_bytes()).await;
                assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
                acked.push((record, reply.next_offset()));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        let mine = task.await.expect("writer");
        let offsets: Vec<&String> = mine.iter().map(|(_, o)| o).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets increase");
        acked.extend(mine);
    }
    let mut all = String::new();
    let mut from = "-1".to_owned();
    loop {
        let read = get(&b, &format!("/s?offset={from}")).await;
        all.push_str(read.text());
        from = read.next_offset();
        if read.header("stream-up-to-date") == Some("true") {
            break;
        }
    }
    assert_eq!(acked.len(), 120);
    for (record, next_offset) in &acked {
        let at = all
            .find(record.as_str())
            .expect("every acknowledged append is there");
        assert_eq!(all.matches(record.as_str()).count(), 1, "once");
        // The acknowledged offset is where this append ends.
        let end: usize = next_offset[17..].parse().expect("offset");
        assert_eq!(at + record.len(), end, "{record}");
    }
    assert_eq!(all.len(), acked.iter().map(|(r, _)| r.len()).sum::<usize>());
}

fn producer(epoch: &str, seq: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "text/plain".into()),
        ("producer-id", "p".into()),
        ("producer-epoch", epoch.into()),
        ("producer-seq", seq.into()),
    ]
}

async fn produce(service: &DurableStreamsService, epoch: &str, seq: &str, body: &str) -> Reply {
    let headers = producer(epoch, seq);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    send(service, Method::POST, "/p", &headers, body.as_bytes()).await
}

#[tokio::test]
async fn producers_are_deduplicated_and_fenced_across_instances() {
    let Some((a, b)) = instances().await else {
        return;
    };
    put(&a, "/p", "text/plain", b"").await;
    assert_eq!(produce(&a, "0", "0", "a").await.status, StatusCode::OK);
    let retry = produce(&b, "0", "0", "a").await;
    assert_eq!(
        retry.status,
        StatusCode::NO_CONTENT,
        "the retry on B is a duplicate"
    );
    assert_eq!(produce(&b, "0", "1", "b").await.status, StatusCode::OK);
    let gap = produce(&a, "0", "3", "d").await;
    assert_eq!(gap.status, StatusCode::CONFLICT);
    assert_eq!(gap.header("producer-expected-seq"), Some("2"));
    assert_eq!(produce(&b, "1", "0", "e").await.status, StatusCode::OK);
    let fenced = produce(&a, "0", "2", "c").await;
    assert_eq!(
        fenced.status,
        StatusCode::FORBIDDEN,
        "the old epoch is fenced on A too"
    );
    assert_eq!(get(&a, "/p").await.text(), "abe");
}

#[tokio::test]
async fn creates_closes_forks_and_deletes_are_seen_by_every_instance() {
    let Some((a, b)) = instances().await else {
        return;
    };
    put(&a, "/src", "text/plain", b"base").await;
    assert_eq!(
        send(&b, Method::HEAD, "/src", &[], b"").await.status,
        StatusCode::OK
    );
    let again = put(&b, "/src", "text/plain", b"").await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "an idempotent create on the other instance"
    );
    let conflict = put(&b, "/src", "application/json", b"").await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);

    let fork = [("stream-forked-from", "/v1/stream/src")];
    assert_eq!(
        send(&b, Method::PUT, "/fork", &fork, b"").await.status,
        StatusCode::CREATED
    );
    post(&a, "/fork", "text/plain", b"+f").await;
    assert_eq!(get(&b, "/fork").await.text(), "base+f");

    // Deleting the source while the fork reads through it: soft, everywhere.
    assert_eq!(
        send(&a, Method::DELETE, "/src", &[], b"").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(get(&b, "/src").await.status, StatusCode::GONE);
    assert_eq!(get(&b, "/fork").await.text(), "base+f");
    // Deleting the fork on B removes the source too.
    assert_eq!(
        send(&b, Method::DELETE, "/fork", &[], b"").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(get(&a, "/src").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        put(&a, "/src", "text/plain", b"new").await.status,
        StatusCode::CREATED
    );

    let closing = [("content-type", "text/plain"), ("stream-closed", "true")];
    send(&a, Method::POST, "/src", &closing, b"").await;
    let head = send(&b, Method::HEAD, "/src", &[], b"").await;
    assert_eq!(head.header("stream-closed"), Some("true"));
    let refused = post(&b, "/src", "text/plain", b"more").await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.header("stream-closed"), Some("true"));
}

#[tokio::test]
async fn expiry_is_seen_by_every_instance() {
    let Some((a, b)) = instances().await else {
        return;
    };
    let ttl = [("content-type", "text/plain"), ("stream-ttl", "1")];
    assert_eq!(
        send(&a, Method::PUT, "/short", &ttl, b"x").await.status,
        StatusCode::CREATED
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let head = send(&b, Method::HEAD, "/short", &[], b"").await;
        if head.status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&a, "/short").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        send(&a, Method::PUT, "/short", &TEXT, b"").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn one_instance_at_a_time_holds_the_sweep_lease() {
    let Some(schema) = schema().await else { return };
    let (a, b) = (connect(&schema).await, connect(&schema).await);
    assert!(a.lead("expiry").await.expect("lead"));
    assert!(
        !b.lead("expiry").await.expect("lead"),
        "B waits while A holds it"
    );
    assert!(
        a.lead("expiry").await.expect("renew"),
        "A renews its own lease"
    );
    // A lease that lapses goes to whoever asks next.
    common::postgres::execute(&format!(
        "UPDATE {schema}.ds_leases SET until = now() - interval '1 second'"
    ))
    .await
    .expect("expire the lease");
    assert!(b.lead("expiry").await.expect("take over"));
    assert!(!a.lead("expiry").await.expect("lead"));
}

#[tokio::test]
async fn live_readers_on_one_instance_are_woken_by_appends_on_the_other() {
    let Some((a, b)) = instances().await else {
        return;
    };
    let created = put(&a, "/live", "text/plain", b"").await;
    let tail = created.next_offset();
    let poll = tokio::spawn({
        let b = b.clone();
        async move { get(&b, &format!("/live?offset={tail}&live=long-poll")).await }
    });
    let mut sse = open(
        &b,
        &format!("/live?offset={}&live=sse", created.next_offset()),
    )
    .await;
    let first = next_frame(sse.body_mut())
        .await
        .expect("first control event");
    assert!(first.contains("event: control"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    post(&a, "/live", "text/plain", b"news").await;
    let poll = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("woken within 5 s")
        .expect("task");
    assert_eq!((poll.status, poll.text()), (StatusCode::OK, "news"));
    let frame = tokio::time::timeout(Duration::from_secs(5), next_frame(sse.body_mut()))
        .await
        .expect("SSE woken within 5 s")
        .expect("frame");
    assert!(frame.contains("data:news"), "{frame}");
}

#[tokio::test]
async fn a_reader_is_woken_after_its_instance_listener_reconnects() {
    let Some((a, b)) = instances().await else {
        return;
    };
    let created = put(&a, "/r", "text/plain", b"").await;
    let tail = created.next_offset();
    let poll = tokio::spawn({
        let b = b.clone();
        async move { get(&b, &format!("/r?offset={tail}&live=long-poll")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Cut every listener connection: notifications sent until they are back
    // are lost, and the re-check after the reconnect must find the append.
    common::postgres::execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'tower-durable-streams-listener'",
    )
    .await
    .expect("terminate listeners");
    post(&a, "/r", "text/plain", b"after").await;
    let poll = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("woken after the reconnect")
        .expect("task");
    assert_eq!((poll.status, poll.text()), (StatusCode::OK, "after"));
}

/// A TCP proxy to PostgreSQL that can cut every connection and refuse new
/// ones, to take the database away from one instance and give it back.
struct Proxy {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (flag, cuts) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: connection refused, in effect
                }
                let mut stop = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        Proxy { port, up, cut }
    }

    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn an_unreachable_database_is_503_and_not_ready_until_it_is_back() {
    let Some(schema) = schema().await else { return };
    let proxy = Proxy::start().await;
    let url = common::postgres::url().replace(":5432", &format!(":{}", proxy.port));
    let storage = tower_durable_streams::storage::PostgresStorage::connect(
        tower_durable_streams::storage::PostgresConfig::new(url)
            .schema(&schema)
            .pool_size(2)
            .timeout(Duration::from_secs(2)),
    )
    .await
    .expect("connect through the proxy");
    let service = DurableStreamsService::builder()
        .storage(storage)
        .build()
        .expect("service");
    put(&service, "/s", "text/plain", b"a").await;
    assert!(service.health().await.is_ok());

    proxy.down();
    assert!(
        service.health().await.is_err(),
        "not ready without the database"
    );
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let reply = post(&service, "/s", "text/plain", b"b").await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
        assert_eq!(reply.header("retry-after"), Some("1"));
        assert_eq!(reply.json()["code"], "STORAGE_UNAVAILABLE");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "answered, not hung"
        );
        let read = get(&service, "/s").await;
        assert_eq!(read.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    proxy.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while service.health().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        post(&service, "/s", "text/plain", b"c").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get(&service, "/s").await.text(),
        "ac",
        "nothing of the refused appends"
    );
}
