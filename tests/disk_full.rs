//! A full disk, for real: the log lives on a small tmpfs mounted by the test
//! (which runs as root in CI). Appends that do not fit get 507 and nothing of
//! them is kept, reads keep working, readiness reports the full disk, a delete
//! still goes through, and writes resume by themselves once it freed room;
//! after a restart exactly the acknowledged bytes are there.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use std::sync::Arc;

use tower_durable_streams::storage::{Durability, FileStorage, RedbStorage};
use tower_durable_streams::{DurableStreamsService, Storage};

/// A tmpfs of a few MiB, unmounted when dropped.
struct SmallDisk {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SmallDisk {
    /// `None` (and a note) where mounting is not allowed, outside CI; in CI a
    /// failure to mount fails the test.
    fn mount(mib: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .status();
        match status {
            Ok(s) if s.success() => Some(SmallDisk { _dir: dir, path }),
            other => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "cannot mount a tmpfs in CI: {other:?}"
                );
                eprintln!("skipped: mounting a tmpfs needs root ({other:?})");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn chunk(i: usize) -> Vec<u8> {
    let mut chunk = vec![b'a' + (i % 26) as u8; 256 * 1024];
    chunk[..8].copy_from_slice(&(i as u64).to_be_bytes());
    chunk
}

type Open = fn(&Path) -> Arc<dyn Storage>;

fn file_durable(dir: &Path) -> Arc<dyn Storage> {
    Arc::new(FileStorage::open_with(dir, Durability::Fsync, 1024 * 1024).expect("open"))
}

fn file_fast(dir: &Path) -> Arc<dyn Storage> {
    Arc::new(FileStorage::open_with(dir, Durability::Buffered, 1024 * 1024).expect("open"))
}

fn acid(dir: &Path) -> Arc<dyn Storage> {
    Arc::new(RedbStorage::open(dir, 1).expect("open"))
}

async fn fill_delete_resume(open: Open) {
    let Some(disk) = SmallDisk::mount(12) else {
        return;
    };
    let storage = open(disk.path());
    let service = DurableStreamsService::builder()
        .storage(storage.clone())
        .build()
        .expect("service");
    assert_eq!(
        put(&service, "/keep", "text/plain", b"k0.").await.status,
        StatusCode::CREATED
    );
    put(&service, "/filler", "application/octet-stream", b"").await;

    // Fill the disk.
    let mut acked = Vec::new();
    let full = loop {
        let i = acked.len();
        assert!(i < 200, "a 12 MiB disk never filled up");
        let reply = post(&service, "/filler", "application/octet-stream", &chunk(i)).await;
        if reply.status != StatusCode::NO_CONTENT {
            break reply;
        }
        acked.push(i);
    };
    assert_eq!(
        full.status,
        StatusCode::INSUFFICIENT_STORAGE,
        "{}",
        full.text()
    );
    assert_eq!(full.json()["code"], "STORAGE_FULL");
    assert!(acked.len() > 10, "only {} chunks fit", acked.len());
    // Refused again while nothing is freed; readiness says why.
    assert_eq!(
        post(&service, "/filler", "application/octet-stream", &chunk(999))
            .await
            .status,
        StatusCode::INSUFFICIENT_STORAGE
    );
    assert!(
        service.health().await.is_err(),
        "readiness reports the full disk"
    );
    assert!(storage.health().await.is_err());

    // Reads keep working, and hold exactly what was acknowledged.
    let expected: Vec<u8> = acked.iter().flat_map(|&i| chunk(i)).collect();
    assert_eq!(read_all(&service, "/filler").await, expected);
    assert_eq!(read_all(&service, "/keep").await, b"k0.");

    // A delete goes through on the full disk and frees its segments; writes
    // then resume without a restart.
    assert_eq!(
        send(&service, Method::DELETE, "/filler", &[], b"")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert!(service.health().await.is_ok(), "room again");
    for i in 1..=20 {
        let reply = post(&service, "/keep", "text/plain", format!("k{i}.").as_bytes()).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    }
    let kept: String = (0..=20).map(|i| format!("k{i}.")).collect();
    assert_eq!(read_all(&service, "/keep").await, kept.as_bytes());

    // After a restart: every acknowledged byte once, nothing refused.
    drop(service);
    drop(storage);
    let storage = open(disk.path());
    let service = DurableStreamsService::builder()
        .storage(storage)
        .build()
        .expect("service");
    service.start().await.expect("load");
    assert_eq!(read_all(&service, "/keep").await, kept.as_bytes());
    assert_eq!(get(&service, "/filler").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        post(&service, "/keep", "text/plain", b"after.")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let _ = Bytes::new();
}

#[tokio::test]
async fn file_durable_survives_a_full_disk() {
    fill_delete_resume(file_durable).await;
}

#[tokio::test]
async fn file_fast_survives_a_full_disk() {
    fill_delete_resume(file_fast).await;
}

#[tokio::test]
async fn acid_survives_a_full_disk() {
    fill_delete_resume(acid).await;
}
