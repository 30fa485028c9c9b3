//! Room for deletes on a full disk: a file of real blocks kept beside the data,
//! given up when the disk is full and a delete must be written, and made again
//! once there is room.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The reserve's size.
const RESERVE_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
pub(crate) struct Reserve {
    dir: PathBuf,
    path: PathBuf,
    present: AtomicBool,
    tried: Mutex<Option<Instant>>,
    /// The last probe for room and when it ran: readiness checks that come
    /// often share one probe a second.
    probed: Mutex<Option<(Instant, bool)>>,
}

impl Reserve {
    /// The reserve in `dir`, made now if there is room.
    pub(crate) fn new(dir: &Path) -> Self {
        // Probe files a crash left behind.
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("space-probe")
                {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        let path = dir.join("reserve");
        let present = make(&path).is_ok();
        Reserve {
            dir: dir.to_path_buf(),
            path,
            present: AtomicBool::new(present),
            tried: Mutex::new(None),
            probed: Mutex::new(None),
        }
    }

    /// The result of a probe less than a second old, if any.
    pub(crate) fn recent_probe(&self) -> Option<bool> {
        let probed = self.probed.lock().unwrap_or_else(|e| e.into_inner());
        probed.and_then(|(at, room)| (at.elapsed() < Duration::from_secs(1)).then_some(room))
    }

    /// Whether `bytes` more can be written beside the store now (blocking).
    pub(crate) fn probe(&self, bytes: usize) -> bool {
        if let Some(room) = self.recent_probe() {
            return room;
        }
        let room = room_for(&self.dir, bytes);
        *self.probed.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), room));
        room
    }

    /// Frees the reserve's space for the deletes about to be written.
    pub(crate) fn release(&self) {
        if self.present.swap(false, Ordering::AcqRel) {
            match fs::remove_file(&self.path) {
                Ok(()) => tracing::warn!("released the space reserve for deletes"),
                Err(e) => tracing::warn!(error = %e, "could not release the space reserve"),
            }
        }
    }

    /// Makes the reserve again if it is missing, trying at most once a second.
    pub(crate) fn keep(&self) {
        if self.present.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        {
            let mut tried = self.tried.lock().unwrap_or_else(|e| e.into_inner());
            if tried.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
                return;
            }
            *tried = Some(now);
        }
        if make(&self.path).is_ok() {
            self.present.store(true, Ordering::Release);
        }
    }
}

/// Writes the reserve file (real blocks, not a sparse file).
fn make(path: &Path) -> io::Result<()> {
    if fs::metadata(path).is_ok_and(|m| m.len() == RESERVE_BYTES as u64) {
        return Ok(());
    }
    let written = File::create(path).and_then(|mut file| {
        file.write_all(&vec![0u8; RESERVE_BYTES])?;
        file.sync_all()
    });
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// Whether `bytes` more can be written in `dir` now (a probe file, removed).
fn room_for(dir: &Path, bytes: usize) -> bool {
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("space-probe-{}-{n}", std::process::id()));
    let fits = File::create(&path)
        .and_then(|mut file| {
            file.write_all(&vec![0u8; bytes])?;
            file.sync_data()
        })
        .is_ok();
    let _ = fs::remove_file(&path);
    fits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::new(dir.path());
        assert_eq!(
            fs::metadata(dir.path().join("reserve")).unwrap().len(),
            RESERVE_BYTES as u64
        );
        reserve.release();
        assert!(!dir.path().join("reserve").exists());
        reserve.keep();
        assert!(dir.path().join("reserve").exists());
        assert!(reserve.probe(4096));
        assert_eq!(reserve.recent_probe(), Some(true));
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only the reserve"
        );
    }
}
