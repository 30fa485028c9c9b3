//! Graceful shutdown of the example server: on SIGTERM, live readers get their
//! protocol answers (a long-poll 204, a last SSE control event), the process exits
//! within about a second, and every acknowledged append is there after a restart.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{server_binary, start, wait_ready, Client};
use http::{Method, StatusCode};
use http_body_util::BodyExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_live_readers_and_exits_promptly() {
    let binary = server_binary();
    let dir = tempfile::tempdir().expect("dir");
    let mut server = start(&binary, "file-durable", dir.path());
    wait_ready(server.address).await;
    let address = server.address;

    let mut client = Client::connect(address).await.expect("connect");
    let text = [("content-type", "text/plain".to_owned())];
    client
        .send(Method::PUT, "/s", &text, Bytes::new())
        .await
        .expect("create");
    let mut tail = String::new();
    for i in 0..5 {
        let (status, headers, _) = client
            .send(Method::POST, "/s", &text, Bytes::from(format!("m{i};")))
            .await
            .expect("append");
        assert_eq!(status, StatusCode::NO_CONTENT);
        tail = headers["stream-next-offset"]
            .to_str()
            .expect("offset")
            .to_owned();
    }

    let poll = tokio::spawn(async move {
        let mut client = Client::connect(address).await.expect("connect");
        client
            .send(
                Method::GET,
                &format!("/s?offset={tail}&live=long-poll"),
                &[],
                Bytes::new(),
            )
            .await
    });
    let mut sse_client = Client::connect(address).await.expect("connect");
    let request = http::Request::get("/v1/stream/s?offset=-1&live=sse")
        .header("host", "localhost")
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    sse_client.0.ready().await.expect("connection ready");
    let response = sse_client.0.send_request(request).await.expect("sse");
    let mut events = response.into_body();
    let first = events
        .frame()
        .await
        .expect("frame")
        .expect("ok")
        .into_data()
        .expect("data");
    assert!(String::from_utf8_lossy(&first).contains("m4;"));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());

    let (status, headers, _) = poll.await.expect("task").expect("long-poll answered");
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(headers["stream-up-to-date"], "true");
    let mut rest = String::new();
    while let Some(Ok(frame)) = events.frame().await {
        if let Ok(data) = frame.into_data() {
            rest.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(
        rest.contains("event: control"),
        "a last control event: {rest:?}"
    );
    loop {
        if server.child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(3),
            "still running 3 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = signalled.elapsed();
    eprintln!("exited {took:?} after SIGTERM");
    assert!(took < Duration::from_millis(1500), "took {took:?}");

    let server = start(&binary, "file-durable", dir.path());
    wait_ready(server.address).await;
    let mut client = Client::connect(server.address).await.expect("connect");
    let (_, _, body) = client
        .send(Method::GET, "/s", &[], Bytes::new())
        .await
        .expect("read");
    assert_eq!(&body[..], b"m0;m1;m2;m3;m4;");
    server.kill();
}
