//! TLS termination over a real socket: a certificate generated here, HTTP/2
//! negotiated with ALPN, and HTTP/1.1 on the same listener.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::process::server_binary;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

fn connector(cert: CertificateDer<'static>, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(cert).expect("trust the test certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_h2_and_http1() {
    let dir = tempfile::tempdir().expect("dir");
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, generated.cert.pem()).expect("write cert");
    std::fs::write(&key_path, generated.signing_key.serialize_pem()).expect("write key");

    let mut child = Command::new(server_binary())
        .env("DS_SERVER__PORT", "0")
        .env("DS_TLS__CERT_PATH", &cert_path)
        .env("DS_TLS__KEY_PATH", &key_path)
        .env("DS_SERVER__TLS_HANDSHAKE_TIMEOUT_MS", "1000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start server");
    let mut banner = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut banner)
        .expect("banner");
    let address = banner
        .trim()
        .strip_prefix("listening on https://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("unexpected banner {banner:?}"))
        .to_owned();
    let cert = generated.cert.der().clone();
    let name = ServerName::try_from("localhost").expect("name");

    // HTTP/2, negotiated with ALPN.
    let tcp = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let tls = connector(cert.clone(), &[b"h2", b"http/1.1"])
        .connect(name.clone(), tcp)
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2");
    tokio::spawn(connection);
    let mut created = None;
    for _ in 0..100 {
        let put = Request::put("https://localhost/v1/stream/secure")
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"over tls")))
            .expect("request");
        let response = h2.send_request(put).await.expect("put");
        if response.status() != StatusCode::SERVICE_UNAVAILABLE {
            created = Some(response.status());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(created, Some(StatusCode::CREATED));

    // HTTP/1.1 on the same listener.
    let tcp = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let tls = connector(cert, &[b"http/1.1"])
        .connect(name, tcp)
        .await
        .expect("handshake");
    let (mut h1, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1");
    tokio::spawn(connection);
    let get = Request::get("/v1/stream/secure")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = h1.send_request(get).await.expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"over tls");
    h1.ready().await.expect("connection ready");
    // HTTP/1.1 URIs carry no scheme: the server says it serves TLS.
    let put = Request::put("/v1/stream/secure-h1")
        .header("host", "localhost")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = h1.send_request(put).await.expect("put");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["location"],
        "https://localhost/v1/stream/secure-h1"
    );
    // Drain the answer and wait for the connection to take the next request:
    // HTTP/1.1 carries one exchange at a time.
    response.into_body().collect().await.expect("put body");
    h1.ready().await.expect("connection ready");
    let get = Request::get("/v1/stream/secure")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = h1.send_request(get).await.expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        &response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()[..],
        b"over tls"
    );

    // A client that opens a connection and never starts the handshake is
    // closed after the handshake timeout.
    let mut silent = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let mut byte = [0u8; 1];
    let ended = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut silent, &mut byte),
    )
    .await
    .expect("the silent connection was closed");
    assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");

    child.kill().expect("kill");
    child.wait().expect("wait");
}
