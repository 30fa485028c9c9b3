//! A load tool for any Durable Streams server, over keep-alive HTTP/1.1
//! connections, bounded in connections and time, loopback only.
//!
//! ```text
//! cargo run --release --example loadgen -- append --url http://127.0.0.1:4437/v1/stream \
//!     --connections 16 --streams 1 --bytes 1024 --seconds 5
//! ```
//!
//! - `append`: C connections append B-byte bodies round-robin over S streams for
//!   D seconds: appends/s, MB/s, latency percentiles, errors.
//! - `catchup`: prefill an M-MiB stream in A-byte appends, then R readers read it
//!   from `-1` following `Stream-Next-Offset`, again and again for D seconds:
//!   MB/s and latency per full read.
//! - `fanout`: N SSE or long-poll subscribers on one stream, one writer at H
//!   messages/s with timestamped payloads: delivery latency percentiles, and a
//!   check that every subscriber got every message exactly once, in order.
//! - `streams`: create K streams with one small append each: creates/s, errors,
//!   and (with `--server-pid`) the server's RSS and open file descriptors.
//!
//! A run that saw errors or lost messages says so loudly and exits non-zero: its
//! figures are not comparable.
//!
//! `append`, `catchup` and `fanout` report the tool's own CPU use (user + system time
//! over wall time, from `/proc/self/stat`) beside the server's (`--server-pid`),
//! and **refuse to report a figure** (exit code 3) when the tool kept the cores
//! it may run on more than 85 % busy: such a figure measures the client, not
//! the server. Pin the tool and the server to separate cores (`taskset`).
//! Response bodies are counted frame by frame and dropped, never gathered.

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
    /// Full reads of a prefilled stream.
    Catchup(CatchupArgs),
    /// Live delivery to many subscribers.
    Fanout(FanoutArgs),
    /// Many small streams.
    Streams(StreamsArgs),
}

#[derive(clap::Args)]
struct CatchupArgs {
    #[arg(long, default_value = "http://127.0.0.1:4437/v1/stream")]
    url: String,
    /// Size of the stream to prefill, in MiB (1..=1024).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    megabytes: u64,
    /// Size of each prefill append in bytes.
    #[arg(long, default_value_t = 65536)]
    append_bytes: usize,
    /// Concurrent readers (1..=256).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    readers: u16,
    /// Duration of the reading phase in seconds (1..=300).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    seconds: u64,
    /// The server's process id, to report its CPU use beside the tool's.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct FanoutArgs {
    #[arg(long, default_value = "http://127.0.0.1:4437/v1/stream")]
    url: String,
    /// Subscribers (1..=10000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=10000))]
    subscribers: u16,
    /// Messages per second from the writer (1..=10000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10000))]
    rate: u32,
    /// Duration of the writing phase in seconds (1..=300).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    seconds: u64,
    /// `sse` or `long-poll`.
    #[arg(long, default_value = "sse")]
    mode: String,
    /// The server's process id, to report its RSS per idle subscriber.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The writer appends through this instance (default: `--url`), while the
    /// subscribers read through `--url`: cross-instance wake-ups.
    #[arg(long)]
    writer_url: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct StreamsArgs {
    #[arg(long, default_value = "http://127.0.0.1:4437/v1/stream")]
    url: String,
    /// Streams to create (1..=1000000).
    #[arg(long, default_value_t = 100000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    count: u64,
    /// Concurrent connections (1..=1024).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    connections: u16,
    /// The server's process id, to report its RSS and open file descriptors.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    json: bool,
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
    /// More instances serving the same streams (repeatable): connections are
    /// spread round-robin over `--url` and these.
    #[arg(long)]
    also: Vec<String>,
    /// The server's process id, to report its CPU use beside the tool's.
    #[arg(long)]
    server_pid: Option<u32>,
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

    /// Sends a request; the response body is left to the caller (SSE streams it).
    async fn request(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        self.sender.ready().await.map_err(|e| e.to_string())?;
        self.sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends a request built once (`prepared`, cloned: no URI or header is
    /// parsed per request) and reads the response through, counting it
    /// without gathering it; its status.
    async fn send_prepared(
        &mut self,
        prepared: &http::request::Parts,
        body: Bytes,
    ) -> Result<StatusCode, String> {
        let request = Request::from_parts(prepared.clone(), Full::new(body));
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        drain(response.into_body()).await?;
        Ok(status)
    }

    /// The parts of a request to send again and again.
    fn prepare(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
    ) -> Result<http::request::Parts, String> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", content_type)
            .body(())
            .map_err(|e| e.to_string())?;
        Ok(request.into_parts().0)
    }

    /// Sends a request and collects the whole response.
    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
        let response = self.request(method, path, content_type, body).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    /// Sends a request and reads the response through; its status.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<StatusCode, String> {
        let (status, _, _) = self
            .exchange(method, path, Some(content_type), body)
            .await?;
        Ok(status)
    }
}

/// CPU time (user + system, all threads) a process has used, in seconds, from
/// `/proc/<pid>/stat` (clock ticks of USER_HZ, 100 a second on Linux).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the
    // first, utime the 12th and stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// The tool's and the server's CPU use over a measured phase.
struct CpuMeter {
    started: Instant,
    client: f64,
    server: Option<(u32, f64)>,
}

/// CPU use over a phase, as fractions of one core.
struct CpuUse {
    client: f64,
    /// The cores the tool may run on (its affinity).
    client_cores: usize,
    server: Option<f64>,
}

impl CpuMeter {
    fn start(server_pid: Option<u32>) -> Self {
        CpuMeter {
            started: Instant::now(),
            client: cpu_seconds("self").unwrap_or(0.0),
            server: server_pid.and_then(|pid| cpu_seconds(&pid.to_string()).map(|cpu| (pid, cpu))),
        }
    }

    fn finish(&self) -> CpuUse {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        CpuUse {
            client: (cpu_seconds("self").unwrap_or(0.0) - self.client) / wall,
            client_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            server: self.server.and_then(|(pid, before)| {
                cpu_seconds(&pid.to_string()).map(|now| (now - before) / wall)
            }),
        }
    }
}

impl CpuUse {
    /// The most the tool may use of its cores before its figures stop
    /// measuring the server.
    const LIMIT: f64 = 0.85;

    fn busy(&self) -> f64 {
        self.client / self.client_cores as f64
    }

    fn refused(&self) -> bool {
        self.busy() > Self::LIMIT
    }

    fn text(&self) -> String {
        format!(
            "load tool CPU {:.0}% of {} core(s), server CPU {}",
            self.busy() * 100.0,
            self.client_cores,
            self.server
                .map_or("? (no --server-pid)".into(), |s| format!(
                    "{:.0}% of a core",
                    s * 100.0
                ))
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"client_cpu": self.client, "client_cores": self.client_cores,
            "client_busy": self.busy(), "server_cpu": self.server, "refused": self.refused()})
    }

    /// Says so, loudly, when the figure is refused.
    fn refusal(&self, workload: &str) -> bool {
        if self.refused() {
            eprintln!(
                "REFUSED: the load tool kept its {} core(s) {:.0}% busy (limit {:.0}%): \
                 the {workload} figure would measure the client, not the server. \
                 Pin the tool to its own core(s), or lighten the load.",
                self.client_cores,
                self.busy() * 100.0,
                Self::LIMIT * 100.0
            );
        }
        self.refused()
    }
}

/// Reads a response body to its end, counting its bytes frame by frame
/// without gathering or copying them.
async fn drain(mut body: hyper::body::Incoming) -> Result<u64, String> {
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.map_err(|e| e.to_string())?.data_ref() {
            bytes += data.len() as u64;
        }
    }
    Ok(bytes)
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
    let mut targets = vec![target];
    for url in &args.also {
        targets.push(self::target(url)?);
    }
    let body = Bytes::from(vec![b'x'; args.bytes]);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let meter = CpuMeter::start(args.server_pid);
    let mut tasks = Vec::new();
    for c in 0..usize::from(args.connections) {
        let (paths, body, content_type) = (paths.clone(), body.clone(), args.content_type.clone());
        let mut connection = Connection::open(&targets[c % targets.len()]).await?;
        let prepared = paths
            .iter()
            .map(|path| connection.prepare(Method::POST, path, &content_type))
            .collect::<Result<Vec<_>, _>>()?;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut n = c;
            loop {
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                let request = &prepared[n % prepared.len()];
                n += usize::from(u16::MAX);
                match connection.send_prepared(request, body.clone()).await {
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
    let cpu = meter.finish();
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let n = latencies.len();
    let rate = n as f64 / elapsed;
    let mbps = rate * args.bytes as f64 / 1e6;
    if cpu.refusal("append") {
        if args.json {
            println!(
                "{}",
                serde_json::json!({"workload": "append", "cpu": cpu.json()})
            );
        }
        return Err(Refused.into());
    }
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
                "p999_us": p999.as_micros(), "errors": errors, "cpu": cpu.json(),
            })
        );
    } else {
        println!(
            "append: {} connections, {} streams, {} B: {n} appends in {elapsed:.1} s = {rate:.0}/s ({mbps:.1} MB/s); latency p50 {p50:?} p99 {p99:?} p999 {p999:?}; errors {errors}; {}",
            args.connections, args.streams, args.bytes, cpu.text()
        );
    }
    if errors > 0 {
        eprintln!("WARNING: {errors} requests failed; these figures are not comparable");
    }
    Ok(errors == 0)
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

fn report(json: bool, value: serde_json::Value, text: String) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

async fn catchup(args: CatchupArgs) -> Result<bool, String> {
    let target = target(&args.url)?;
    let path = format!(
        "{}/loadgen-catchup-{:08x}",
        target.prefix,
        fastrand::u32(..)
    );
    let mut setup = Connection::open(&target).await?;
    let status = setup
        .send(Method::PUT, &path, "application/octet-stream", Bytes::new())
        .await?;
    if !status.is_success() {
        return Err(format!("creating {path} answered {status}"));
    }
    let total = args.megabytes * 1024 * 1024;
    let chunk = Bytes::from(vec![b'c'; args.append_bytes.max(1)]);
    let mut written = 0u64;
    while written < total {
        let status = setup
            .send(
                Method::POST,
                &path,
                "application/octet-stream",
                chunk.clone(),
            )
            .await?;
        if !status.is_success() {
            return Err(format!("prefill append answered {status}"));
        }
        written += chunk.len() as u64;
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let meter = CpuMeter::start(args.server_pid);
    let mut tasks = Vec::new();
    for _ in 0..args.readers {
        let mut connection = Connection::open(&target).await?;
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let (mut reads, mut bytes, mut errors, mut latencies) = (0u64, 0u64, 0u64, Vec::new());
            'outer: while Instant::now() < deadline {
                let begun = Instant::now();
                let mut offset = "-1".to_owned();
                let mut got = 0u64;
                loop {
                    let response = connection
                        .request(
                            Method::GET,
                            &format!("{path}?offset={offset}"),
                            None,
                            Bytes::new(),
                        )
                        .await;
                    let response = match response {
                        Ok(response) if response.status() == StatusCode::OK => response,
                        _ => {
                            errors += 1;
                            break 'outer;
                        }
                    };
                    let (parts, body) = response.into_parts();
                    let headers = parts.headers;
                    match drain(body).await {
                        Ok(read) => {
                            got += read;
                            let Some(next) = headers
                                .get("stream-next-offset")
                                .and_then(|v| v.to_str().ok())
                            else {
                                errors += 1;
                                break 'outer;
                            };
                            offset = next.to_owned();
                            if headers.contains_key("stream-up-to-date") {
                                break;
                            }
                        }
                        _ => {
                            errors += 1;
                            break 'outer;
                        }
                    }
                }
                if got != written {
                    errors += 1;
                }
                reads += 1;
                bytes += got;
                latencies.push(begun.elapsed());
            }
            (reads, bytes, errors, latencies)
        }));
    }
    let (mut reads, mut bytes, mut errors, mut latencies) = (0, 0, 0, Vec::new());
    for task in tasks {
        let (r, b, e, l) = task.await.map_err(|e| e.to_string())?;
        reads += r;
        bytes += b;
        errors += e;
        latencies.extend(l);
    }
    let cpu = meter.finish();
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let mbps = bytes as f64 / elapsed / 1e6;
    if cpu.refusal("catchup") {
        if args.json {
            println!(
                "{}",
                serde_json::json!({"workload": "catchup", "cpu": cpu.json()})
            );
        }
        return Err(Refused.into());
    }
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    report(
        args.json,
        serde_json::json!({"workload": "catchup", "megabytes": args.megabytes, "append_bytes": args.append_bytes,
            "readers": args.readers, "full_reads": reads, "mb_per_sec": mbps, "read_p50_ms": p50.as_secs_f64() * 1e3,
            "read_p99_ms": p99.as_secs_f64() * 1e3, "errors": errors, "cpu": cpu.json()}),
        format!("catchup: {} MiB in {} B appends, {} readers: {reads} full reads = {mbps:.0} MB/s; per full read p50 {p50:?} p99 {p99:?}; errors {errors}; {}",
            args.megabytes, args.append_bytes, args.readers, cpu.text()),
    );
    Ok(errors == 0)
}

/// Parses `m<seq>@<nanos>;` messages out of delivered text.
fn messages(text: &str) -> impl Iterator<Item = (u64, u128)> + '_ {
    text.split(';').filter_map(|m| {
        let (seq, at) = m.trim().strip_prefix('m')?.split_once('@')?;
        Some((seq.parse().ok()?, at.parse().ok()?))
    })
}

/// Delivery bookkeeping of one subscriber: latencies and an order check.
#[derive(Default)]
struct Received {
    next: u64,
    latencies: Vec<Duration>,
    out_of_order: u64,
}

impl Received {
    fn note(&mut self, text: &str) {
        let now = now_nanos();
        for (seq, at) in messages(text) {
            if seq != self.next {
                self.out_of_order += 1;
            }
            self.next = seq + 1;
            self.latencies
                .push(Duration::from_nanos(now.saturating_sub(at) as u64));
        }
    }
}

/// One subscriber: follows the stream live until the run stops, noting every
/// delivery into `received` (shared, so that an aborted subscriber keeps its
/// figures).
async fn subscribe(
    target: &Target,
    path: String,
    mode: String,
    stop: tokio_util_like::Stop,
    received: std::sync::Arc<std::sync::Mutex<Received>>,
) -> Result<(), String> {
    let mut connection = Connection::open(target).await?;
    let mut offset = "now".to_owned();
    let note = |text: &str| {
        received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(text)
    };
    while !stop.is_set() {
        if mode == "sse" {
            let response = connection
                .request(
                    Method::GET,
                    &format!("{path}?offset={offset}&live=sse"),
                    None,
                    Bytes::new(),
                )
                .await?;
            if stop.is_set() {
                break;
            }
            if response.status() != StatusCode::OK {
                return Err(format!("SSE answered {}", response.status()));
            }
            let mut body = response.into_body();
            let mut pending = String::new();
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() else {
                    continue;
                };
                pending.push_str(&String::from_utf8_lossy(&data));
                while let Some(end) = pending.find(
                    "

",
                ) {
                    let event: String = pending.drain(..end + 2).collect();
                    if event.starts_with("event: data") {
                        let payload: String = event
                            .lines()
                            .filter_map(|l| l.strip_prefix("data:"))
                            .collect();
                        note(&payload);
                    } else if let Some(control) =
                        event.lines().find_map(|l| l.strip_prefix("data:"))
                    {
                        if let Ok(value) = serde_json::from_str::<serde_json::Value>(control) {
                            if let Some(next) = value["streamNextOffset"].as_str() {
                                offset = next.to_owned();
                            }
                        }
                    }
                }
                if stop.is_set() {
                    break;
                }
            }
        } else {
            let (status, headers, body) = connection
                .exchange(
                    Method::GET,
                    &format!("{path}?offset={offset}&live=long-poll"),
                    None,
                    Bytes::new(),
                )
                .await?;
            match status {
                StatusCode::OK => note(&String::from_utf8_lossy(&body)),
                StatusCode::NO_CONTENT => {}
                _ if stop.is_set() => break,
                other => return Err(format!("long-poll answered {other}")),
            }
            if let Some(next) = headers
                .get("stream-next-offset")
                .and_then(|v| v.to_str().ok())
            {
                offset = next.to_owned();
            }
        }
    }
    Ok(())
}

/// A flag the writer raises when the run is over.
mod tokio_util_like {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[derive(Clone, Default)]
    pub struct Stop(Arc<AtomicBool>);

    impl Stop {
        pub fn set(&self) {
            self.0.store(true, Ordering::Release);
        }
        pub fn is_set(&self) -> bool {
            self.0.load(Ordering::Acquire)
        }
    }
}

async fn fanout(args: FanoutArgs) -> Result<bool, String> {
    if args.mode != "sse" && args.mode != "long-poll" {
        return Err("--mode is sse or long-poll".into());
    }
    let target = target(&args.url)?;
    let path = format!("{}/loadgen-fanout-{:08x}", target.prefix, fastrand::u32(..));
    let mut writer = match &args.writer_url {
        Some(url) => Connection::open(&self::target(url)?).await?,
        None => Connection::open(&target).await?,
    };
    let status = writer
        .send(Method::PUT, &path, "text/plain", Bytes::new())
        .await?;
    if !status.is_success() {
        return Err(format!("creating {path} answered {status}"));
    }
    let stop = tokio_util_like::Stop::default();
    let before = args.server_pid.and_then(process_figures);
    let mut subscribers = Vec::new();
    for _ in 0..args.subscribers {
        let received = std::sync::Arc::new(std::sync::Mutex::new(Received::default()));
        let (target_copy, path, mode, stop) = (
            Target {
                address: target.address,
                host: target.host.clone(),
                prefix: target.prefix.clone(),
            },
            path.clone(),
            args.mode.clone(),
            stop.clone(),
        );
        let shared = received.clone();
        let task =
            tokio::spawn(async move { subscribe(&target_copy, path, mode, stop, shared).await });
        subscribers.push((task, received));
    }
    // Let every subscriber connect before the first message.
    tokio::time::sleep(Duration::from_millis(500 + u64::from(args.subscribers))).await;
    // Connected and waiting: what each idle subscriber costs the server.
    let idle = args.server_pid.and_then(process_figures);
    let per_subscriber = match (before, idle) {
        (Some((rss0, _)), Some((rss1, _))) => {
            Some(rss1.saturating_sub(rss0) as f64 / f64::from(args.subscribers))
        }
        _ => None,
    };
    let total = u64::from(args.rate) * args.seconds;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    let mut write_errors = 0;
    // The tool's own CPU while messages flow: a busy tool would add its own
    // delay to every latency it measures.
    let meter = CpuMeter::start(args.server_pid);
    for seq in 0..total {
        ticker.tick().await;
        let body = Bytes::from(format!("m{seq}@{};", now_nanos()));
        if !writer
            .send(Method::POST, &path, "text/plain", body)
            .await
            .is_ok_and(|s| s.is_success())
        {
            write_errors += 1;
        }
    }
    let cpu = meter.finish();
    // Give the last messages time to arrive, then stop every subscriber.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.set();
    let _ = writer
        .send(Method::DELETE, &path, "text/plain", Bytes::new())
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut latencies, mut lost, mut out_of_order, mut failed) = (Vec::new(), 0u64, 0u64, 0u64);
    for (task, received) in subscribers {
        if task.is_finished() {
            if let Ok(Err(e)) = task.await {
                eprintln!("subscriber failed: {e}");
                failed += 1;
            }
        } else {
            task.abort();
        }
        let received = std::mem::take(&mut *received.lock().unwrap_or_else(|e| e.into_inner()));
        lost += total.saturating_sub(received.latencies.len() as u64);
        out_of_order += received.out_of_order;
        latencies.extend(received.latencies);
    }
    latencies.sort();
    let (p50, p99, p999) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
    );
    let ok = write_errors == 0 && lost == 0 && out_of_order == 0 && failed == 0;
    if cpu.refusal("fanout") {
        if args.json {
            println!(
                "{}",
                serde_json::json!({"workload": "fanout", "cpu": cpu.json()})
            );
        }
        return Err(Refused.into());
    }
    report(
        args.json,
        serde_json::json!({"workload": "fanout", "mode": args.mode, "subscribers": args.subscribers, "rate": args.rate,
            "messages": total, "deliveries": latencies.len(), "p50_ms": p50.as_secs_f64() * 1e3, "p99_ms": p99.as_secs_f64() * 1e3,
            "p999_ms": p999.as_secs_f64() * 1e3, "lost": lost, "out_of_order": out_of_order, "failed_subscribers": failed,
            "write_errors": write_errors, "every_message_delivered_once_in_order": ok,
            "server_rss_bytes_idle": idle.map(|i| i.0), "rss_bytes_per_idle_subscriber": per_subscriber,
            "cpu": cpu.json()}),
        format!("fanout ({}): {} subscribers, {} msg/s, {total} messages: {} deliveries; delivery p50 {p50:?} p99 {p99:?} p999 {p999:?}; lost {lost}, out of order {out_of_order}, failed subscribers {failed}, write errors {write_errors}; server RSS per idle subscriber {}; {}",
            args.mode, args.subscribers, args.rate, latencies.len(),
            per_subscriber.map_or("?".into(), |b| format!("{b:.0} B")), cpu.text()),
    );
    if !ok {
        eprintln!("WARNING: messages were lost, reordered or not written; these figures are not comparable");
    }
    Ok(ok)
}

/// The resident set size (bytes) and open file descriptors of a process.
fn process_figures(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss_kib * 1024, fds))
}

async fn streams(args: StreamsArgs) -> Result<bool, String> {
    let target = target(&args.url)?;
    let run = format!("{:08x}", fastrand::u32(..));
    let before = args.server_pid.and_then(process_figures);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let mut connection = Connection::open(&target).await?;
        let (next, prefix, run, count) =
            (next.clone(), target.prefix.clone(), run.clone(), args.count);
        tasks.push(tokio::spawn(async move {
            let mut errors = 0u64;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return errors;
                }
                let path = format!("{prefix}/loadgen-streams-{run}/{i}");
                match connection
                    .send(
                        Method::PUT,
                        &path,
                        "text/plain",
                        Bytes::from_static(b"hello"),
                    )
                    .await
                {
                    Ok(status) if status.is_success() => {}
                    Ok(_) => errors += 1,
                    Err(_) => return errors + 1,
                }
            }
        }));
    }
    let mut errors = 0;
    for task in tasks {
        errors += task.await.map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = args.count as f64 / elapsed;
    let after = args.server_pid.and_then(process_figures);
    let per_stream = match (before, after) {
        (Some((rss0, fd0)), Some((rss1, fd1))) => Some((
            rss1.saturating_sub(rss0) as f64 / args.count as f64,
            (fd1 as f64 - fd0 as f64) / args.count as f64,
        )),
        _ => None,
    };
    report(
        args.json,
        serde_json::json!({"workload": "streams", "count": args.count, "connections": args.connections, "seconds": elapsed,
            "creates_per_sec": rate, "errors": errors, "server_rss_bytes": after.map(|a| a.0), "server_fds": after.map(|a| a.1),
            "rss_bytes_per_stream": per_stream.map(|p| p.0), "fds_per_stream": per_stream.map(|p| p.1)}),
        format!("streams: {} created with one append each in {elapsed:.1} s = {rate:.0}/s; errors {errors}; server RSS {} fds {}; per stream {}",
            args.count,
            after.map_or("?".into(), |a| format!("{:.1} MiB", a.0 as f64 / 1048576.0)),
            after.map_or("?".into(), |a| a.1.to_string()),
            per_stream.map_or("?".into(), |p| format!("{:.0} B RSS, {:.3} fds", p.0, p.1))),
    );
    if errors > 0 {
        eprintln!("WARNING: {errors} creates failed; these figures are not comparable");
    }
    Ok(errors == 0)
}

/// A figure withheld because the tool itself was the limit.
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused: the load tool was the bottleneck")
    }
}

impl From<Refused> for String {
    fn from(refused: Refused) -> String {
        refused.to_string()
    }
}

fn main() {
    // One thread when the tool may use one core (pinned with taskset): a
    // multi-thread runtime with one worker costs more per request.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let cli = Cli::parse();
    let outcome = match cli.workload {
        Workload::Append(args) => append(args).await,
        Workload::Catchup(args) => catchup(args).await,
        Workload::Fanout(args) => fanout(args).await,
        Workload::Streams(args) => streams(args).await,
    };
    match outcome {
        Ok(true) => {}
        Ok(false) => std::process::exit(2),
        Err(message) if message == Refused.to_string() => std::process::exit(3),
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(1);
        }
    }
}
