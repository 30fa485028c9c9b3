//! Measures this disk's durable-append ceiling: how many `fdatasync` calls per
//! second a single writer can make after appending a small record each time.
//!
//! ```text
//! cargo run --release --example fsync_rate -- [DIR] [SECONDS] [RECORD_BYTES]
//! ```
//!
//! Defaults: the system temp directory, 5 seconds, 1024-byte records. The file it
//! writes is removed afterwards.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let seconds: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .min(120);
    let record: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let path = dir.join(format!("fsync-rate-{}.bin", std::process::id()));
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    let payload = vec![0x5a_u8; record];
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let started = Instant::now();
        file.write_all(&payload)?;
        file.sync_data()?;
        latencies.push(started.elapsed());
    }
    std::fs::remove_file(&path)?;
    latencies.sort();
    let n = latencies.len();
    let pick = |q: f64| latencies[((n as f64 * q) as usize).min(n - 1)];
    println!(
        "fdatasync: {n} calls in {seconds} s = {:.0}/s; append+fdatasync latency p50 {:?} p99 {:?} ({} in {})",
        n as f64 / seconds as f64,
        pick(0.50),
        pick(0.99),
        record,
        dir.display()
    );
    Ok(())
}
