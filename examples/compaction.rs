//! Measures the file log's compactor (numbers in docs/benchmarks.md):
//! writes `--total-mib` over `--streams` streams in turns (so every segment
//! holds records of every stream), deletes all but a tenth of them, and reports
//! the log's size before and after compaction, with the append throughput of
//! `--writers` concurrent writers while the background compactor runs at its
//! default rate, beside the same load with the compactor off.
//!
//! ```sh
//! cargo run --release --example compaction -- --dir /var/tmp/ds-compaction
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use tower_durable_streams::storage::{Compaction, Durability, FileStorage};
use tower_durable_streams::streams::CreateOptions;
use tower_durable_streams::{DurableStreamsService, Streams};

#[derive(Parser)]
struct Args {
    /// Where the log goes (a real disk, not tmpfs, for real figures); emptied first.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 1024)]
    total_mib: u64,
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Appends of this size fill the streams.
    #[arg(long, default_value_t = 64 * 1024)]
    chunk: usize,
    /// Concurrent writers of 1 KiB appends during the measurement.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// How long each throughput measurement runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("log"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Appends/s of `writers` writers of 1 KiB to their own live streams.
async fn appends_per_second(streams: &Streams, writers: usize, seconds: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let streams = streams.clone();
            tokio::spawn(async move {
                let path = format!("/load{w}");
                let mut n = 0u64;
                while Instant::now() < deadline {
                    streams
                        .append(&path, vec![b'x'; 1024])
                        .await
                        .expect("append");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("writer");
    }
    total as f64 / seconds as f64
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = std::fs::remove_dir_all(&args.dir);
    let storage = FileStorage::open(&args.dir, Durability::Fsync)
        .expect("open")
        .with_compaction(Compaction::off());
    let service = DurableStreamsService::builder()
        .storage(storage.clone())
        .build()
        .expect("service");
    let streams = service.streams();
    let text = || CreateOptions::new().content_type("application/octet-stream");
    for s in 0..args.streams {
        streams
            .create(&format!("/s{s}"), text())
            .await
            .expect("create");
    }
    for w in 0..args.writers {
        streams
            .create(&format!("/load{w}"), text())
            .await
            .expect("create");
    }
    let started = Instant::now();
    let rounds = (args.total_mib * 1024 * 1024) / (args.chunk * args.streams) as u64;
    for _ in 0..rounds {
        let appends: Vec<_> = (0..args.streams)
            .map(|s| {
                let streams = streams.clone();
                let chunk = vec![s as u8; args.chunk];
                tokio::spawn(async move { streams.append(&format!("/s{s}"), chunk).await })
            })
            .collect();
        for append in appends {
            append.await.expect("task").expect("append");
        }
    }
    println!(
        "wrote {} MiB over {} streams in {:.1} s",
        args.total_mib,
        args.streams,
        started.elapsed().as_secs_f64()
    );
    for s in 0..args.streams {
        if s % 10 != 0 {
            streams.delete(&format!("/s{s}")).await.expect("delete");
        }
    }
    let before = log_bytes(&args.dir);
    println!(
        "log after deleting {} of {} streams: {:.1} MiB",
        args.streams - args.streams / 10,
        args.streams,
        before as f64 / 1048576.0
    );

    let idle = appends_per_second(&streams, args.writers, args.seconds).await;
    println!("appends/s, compactor off: {idle:.0}");

    let storage =
        storage.with_compaction(Compaction::default().interval(Duration::from_millis(100)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let busy = appends_per_second(&streams, args.writers, args.seconds).await;
    let during = storage.stats().compactions;
    println!(
        "appends/s while the compactor runs (32 MiB/s): {busy:.0} ({:.2}x), {during} segments rewritten meanwhile",
        busy / idle
    );
    // The load's streams go too; what stays is a tenth of the first streams.
    for w in 0..args.writers {
        streams.delete(&format!("/load{w}")).await.expect("delete");
    }
    let live = (args.streams / 10) as u64 * rounds * args.chunk as u64;
    println!("live data: {:.1} MiB", live as f64 / 1048576.0);
    // Until the log has stopped shrinking for ten seconds.
    let started = Instant::now();
    let (mut last, mut since) = (log_bytes(&args.dir), Instant::now());
    while since.elapsed() < Duration::from_secs(10) && started.elapsed() < Duration::from_secs(900)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let size = log_bytes(&args.dir);
        if size != last {
            (last, since) = (size, Instant::now());
        }
    }
    let stats = storage.stats();
    println!(
        "log after compaction: {:.1} MiB for {:.1} MiB of live data ({} segments rewritten, {:.1} MiB given back by the compactor, settled {:.0} s after it started)",
        last as f64 / 1048576.0,
        live as f64 / 1048576.0,
        stats.compactions,
        stats.compacted_bytes as f64 / 1048576.0,
        (since - started).as_secs_f64() + args.seconds as f64
    );
}
