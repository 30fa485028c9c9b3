//! Running the example server as a child process, and a small keep-alive client.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Builds (if needed) and locates the example server.
pub fn server_binary() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--all-features", "--example", "server"])
        .current_dir(manifest)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build --example server failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("target"));
    target.join("debug").join("examples").join("server")
}

pub struct Server {
    pub child: Child,
    pub address: SocketAddr,
}

pub fn start(binary: &Path, mode: &str, dir: &Path) -> Server {
    let dir = dir.display().to_string();
    start_with(
        binary,
        &[
            ("DS_STORAGE__MODE", mode),
            ("DS_STORAGE__DATA_DIR", &dir),
            ("DS_STORAGE__ACID_SHARD_COUNT", "4"),
        ],
    )
}

/// Starts the server with these settings (environment variables) on a free
/// loopback port.
pub fn start_with(binary: &Path, settings: &[(&str, &str)]) -> Server {
    let mut command = Command::new(binary);
    command
        .env("DS_SERVER__HOST", "127.0.0.1")
        .env("DS_SERVER__PORT", "0")
        .env("RUST_LOG", "warn");
    for (name, value) in settings {
        command.env(name, value);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read banner");
    let address = line
        .trim()
        .strip_prefix("listening on http://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected banner {line:?}"));
    Server { child, address }
}

/// Waits until the server has opened its storage (`/readyz` answers 200).
pub async fn wait_ready(address: SocketAddr) {
    for _ in 0..300 {
        if let Some(mut client) = Client::connect(address).await {
            let request = Request::get("/readyz")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .expect("request");
            if let Ok(response) = client.0.send_request(request).await {
                if response.status() == StatusCode::OK {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server at {address} did not become ready");
}

impl Server {
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Server {
    /// A failing test must not leave its server running (it would hold the
    /// test runner's output pipe open).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Client(pub hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Client {
    pub async fn connect(address: SocketAddr) -> Option<Client> {
        let stream = TcpStream::connect(address).await.ok()?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(connection);
        Some(Client(sender))
    }

    /// Sends a request; `None` if the connection broke (the server died).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Option<(StatusCode, http::HeaderMap, Bytes)> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("/v1/stream{path}"))
            .header("host", "localhost");
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        self.0.ready().await.ok()?;
        let response = self
            .0
            .send_request(builder.body(Full::new(body)).ok()?)
            .await
            .ok()?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some((parts.status, parts.headers, body))
    }

    /// Everything in a stream (its path under the mount), read page by page
    /// following `Stream-Next-Offset`, and whether it is closed; `None` if it
    /// does not exist. Fails on any other answer or a broken connection.
    pub async fn read_all(&mut self, path: &str) -> Option<(Bytes, bool)> {
        let mut data = Vec::new();
        let mut offset = "-1".to_owned();
        loop {
            let (status, headers, body) = self
                .send(
                    Method::GET,
                    &format!("{path}?offset={offset}"),
                    &[],
                    Bytes::new(),
                )
                .await
                .expect("read after restart");
            if status == StatusCode::NOT_FOUND {
                return None;
            }
            assert_eq!(status, StatusCode::OK, "read {path}");
            data.extend_from_slice(&body);
            offset = headers["stream-next-offset"]
                .to_str()
                .expect("offset")
                .to_owned();
            if headers.contains_key("stream-up-to-date") {
                return Some((Bytes::from(data), headers.contains_key("stream-closed")));
            }
        }
    }
}
