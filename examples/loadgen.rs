//! A load tool for any Durable Streams server, over keep-alive HTTP/1.1
//! connections, bounded in connections and time, loopback only.
//!
//! ```text
//! cargo run --release --example loadgen -- append --url http://127.0.0.1:4437/v1/stream \
//!     --connections 16 --streams 1 --bytes 1024 --seconds 5
//! ```
//!
//! `append`: C connections append B-byte bodies round-robin over S streams for D
//! seconds and report appends/s, MB/s, latency percentiles and errors. A run that
//! saw errors says so loudly: its figures are not comparable.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(about = "Load generator for Durable Streams servers (loopback only)")]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// Concurrent appends.
    Append(AppendArgs),
}

#[derive(clap::Args)]
struct AppendArgs {
    /// Base URL of the streams, e.g. http://127.0.0.1:4437/v1/stream
    #[arg(long, default_value = "http://127.0.0.1:4437/v1/stream")]
    url: String,
    /// Concurrent keep-alive connections (1..=1024).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    connections: u16,
    /// Streams to spread the appends over.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Body size of each append in bytes.
    #[arg(long, default_value_t = 1024)]
    bytes: usize,
    /// Duration in seconds (1..=300).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    seconds: u64,
    /// Content type of the streams.
    #[arg(long, default_value = "application/octet-stream")]
    content_type: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Host, port and path prefix of a loopback URL.
struct Target {
    address: SocketAddr,
    host: String,
    prefix: String,
}

fn target(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs are supported".into());
    }
    let host = uri.host().ok_or("URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let ip: std::net::IpAddr = match host.as_str() {
        "localhost" => [127, 0, 0, 1].into(),
        other => other
            .trim_matches(['[', ']'])
            .parse()
            .map_err(|_| format!("{other} is not an IP address or localhost"))?,
    };
    if !ip.is_loopback() {
        return Err(format!(
            "{ip} is not a loopback address; this tool only targets this machine"
        ));
    }
    Ok(Target {
        address: SocketAddr::new(ip, port),
        host: format!("{host}:{port}"),
        prefix: uri.path().trim_end_matches('/').to_owned(),
    })
}

struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Connection {
    async fn open(target: &Target) -> Result<Self, String> {
        let stream = TcpStream::connect(target.address)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(Connection {
            sender,
            host: target.host.clone(),
        })
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<StatusCode, String> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", content_type)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

async fn append(args: AppendArgs) -> Result<bool, String> {
    let target = target(&args.url)?;
    let run = format!("{:08x}", fastrand::u32(..));
    let paths: Vec<String> = (0..args.streams.max(1))
        .map(|i| format!("{}/loadgen-{run}-{i}", target.prefix))
        .collect();
    let mut setup = Connection::open(&target).await?;
    for path in &paths {
        let status = setup
            .send(Method::PUT, path, &args.content_type, Bytes::new())
            .await?;
        if !status.is_success() {
            return Err(format!("creating {path} answered {status}"));
        }
    }
    let body = Bytes::from(vec![b'x'; args.bytes]);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..usize::from(args.connections) {
        let (paths, body, content_type) = (paths.clone(), body.clone(), args.content_type.clone());
        let mut connection = Connection::open(&target).await?;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut n = c;
            while Instant::now() < deadline {
                let path = &paths[n % paths.len()];
                n += usize::from(u16::MAX);
                let sent = Instant::now();
                match connection
                    .send(Method::POST, path, &content_type, body.clone())
                    .await
                {
                    Ok(status) if status.is_success() => latencies.push(sent.elapsed()),
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.map_err(|e| e.to_string())?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let n = latencies.len();
    let rate = n as f64 / elapsed;
    let mbps = rate * args.bytes as f64 / 1e6;
    let (p50, p99, p999) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "workload": "append", "connections": args.connections, "streams": args.streams,
                "bytes": args.bytes, "seconds": elapsed, "appends": n, "appends_per_sec": rate,
                "mb_per_sec": mbps, "p50_us": p50.as_micros(), "p99_us": p99.as_micros(),
                "p999_us": p999.as_micros(), "errors": errors,
            })
        );
    } else {
        println!(
            "append: {} connections, {} streams, {} B: {n} appends in {elapsed:.1} s = {rate:.0}/s ({mbps:.1} MB/s); latency p50 {p50:?} p99 {p99:?} p999 {p999:?}; errors {errors}",
            args.connections, args.streams, args.bytes
        );
    }
    if errors > 0 {
        eprintln!("WARNING: {errors} requests failed; these figures are not comparable");
    }
    Ok(errors == 0)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let outcome = match cli.workload {
        Workload::Append(args) => append(args).await,
    };
    match outcome {
        Ok(true) => {}
        Ok(false) => std::process::exit(2),
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(1);
        }
    }
}
