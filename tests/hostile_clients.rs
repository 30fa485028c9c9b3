//! Slow and hostile clients against the example server over real sockets:
//! hundreds of connections that send half a request head (or nothing) are
//! closed by the header-read and idle timeouts while ordinary requests keep
//! being served, and a client that stops reading a long answer is cut.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{server_binary, start_with, wait_ready, Client};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the server has closed `socket`: a read sees the end (or a reset)
/// at once rather than waiting.
async fn closed(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // an answer (408, say) before the close
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_while_others_are_served() {
    let binary = server_binary();
    let server = start_with(
        &binary,
        &[
            ("DS_SERVER__HEADER_READ_TIMEOUT_MS", "1000"),
            ("DS_SERVER__IDLE_TIMEOUT_MS", "2000"),
            ("DS_SERVER__MAX_CONNECTIONS", "400"),
        ],
    );
    wait_ready(server.address).await;

    // 300 connections stop halfway through a request head, 50 say nothing.
    let mut half_heads = Vec::new();
    for _ in 0..300 {
        let mut socket = TcpStream::connect(server.address).await.expect("connect");
        socket
            .write_all(b"POST /v1/stream/x HTTP/1.1\r\nHost: localhost\r\nContent-Ty")
            .await
            .expect("write");
        half_heads.push(socket);
    }
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(server.address).await.expect("connect"));
    }
    let opened = Instant::now();

    // Ordinary requests are answered meanwhile, each on a new connection.
    let mut client = Client::connect(server.address).await.expect("client");
    let text = [("content-type", "text/plain".to_owned())];
    let (status, _, _) = client
        .send(Method::PUT, "/ok", &text, Bytes::new())
        .await
        .expect("create");
    assert_eq!(status, StatusCode::CREATED);
    let mut sent = 0;
    while opened.elapsed() < Duration::from_millis(3_000) {
        let mut fresh = Client::connect(server.address).await.expect("connect");
        let (status, _, _) = fresh
            .send(Method::POST, "/ok", &text, Bytes::from_static(b"x"))
            .await
            .expect("append while stalled connections are held");
        assert_eq!(status, StatusCode::NO_CONTENT);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // (`client` sat idle past the idle timeout: it was closed too.)
    let mut reader = Client::connect(server.address).await.expect("connect");
    let (status, _, body) = reader
        .send(Method::GET, "/ok?offset=-1", &[], Bytes::new())
        .await
        .expect("read");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), sent);

    // By now (3 s) every stalled connection has been closed: the half heads
    // after the 1 s header timeout, the silent ones after the 2 s idle one.
    for (i, socket) in half_heads.iter_mut().enumerate() {
        assert!(closed(socket).await, "half-head connection {i} still open");
    }
    for (i, socket) in silent.iter_mut().enumerate() {
        assert!(closed(socket).await, "silent connection {i} still open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut() {
    let binary = server_binary();
    let server = start_with(
        &binary,
        &[
            ("DS_SERVER__WRITE_STALL_TIMEOUT_MS", "1000"),
            ("DS_SERVER__SSE_RECONNECT_INTERVAL_SECS", "60"),
        ],
    );
    wait_ready(server.address).await;
    let mut client = Client::connect(server.address).await.expect("client");
    let text = [("content-type", "text/plain".to_owned())];
    let big = Bytes::from(vec![b'x'; 32 * 1024 * 1024]);
    let total = big.len();
    let (status, _, _) = client
        .send(Method::PUT, "/big", &text, big)
        .await
        .expect("create");
    assert_eq!(status, StatusCode::CREATED);

    // An SSE read of 32 MiB that is never read: the server's writes block.
    let mut socket = TcpStream::connect(server.address).await.expect("connect");
    socket
        .write_all(b"GET /v1/stream/big?offset=-1&live=sse HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(3_000)).await;

    // Whatever the kernel buffered is there to read, then the end: far less
    // than the whole stream.
    let mut received = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received += n,
            Err(_) => panic!("the stalled reader's connection is still open ({received} bytes)"),
        }
    }
    assert!(received < total, "{received} of {total} bytes");
    // The server still serves others.
    let (status, _, _) = client
        .send(Method::HEAD, "/big", &[], Bytes::new())
        .await
        .expect("head");
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_stops_reading_is_cut() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let binary = server_binary();
    let server = start_with(&binary, &[("DS_SERVER__WRITE_STALL_TIMEOUT_MS", "1000")]);
    wait_ready(server.address).await;
    let mut client = Client::connect(server.address).await.expect("client");
    let text = [("content-type", "text/plain".to_owned())];
    let total = 32 * 1024 * 1024;
    let (status, _, _) = client
        .send(Method::PUT, "/big", &text, Bytes::from(vec![b'x'; total]))
        .await
        .expect("create");
    assert_eq!(status, StatusCode::CREATED);

    // HTTP/2 (prior knowledge): the client never reads the body, so it never
    // gives the server more window; no socket write of the server blocks.
    let tcp = TcpStream::connect(server.address).await.expect("connect");
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let request = http::Request::get("http://localhost/v1/stream/big?offset=-1&live=sse")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let response = h2.send_request(request).await.expect("response head");
    assert_eq!(response.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    // The server has cut the connection: reading now ends in an error well
    // before the whole stream.
    let read = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the body ended (the stall was cut)");
    // An error (the server reset the connection) is the expected ending.
    if let Ok(body) = read {
        assert!(body.to_bytes().len() < total, "the whole stream came");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
}
