//! `server export` and `server import`: every stream of the configured storage
//! to and from a versioned file (`docs/backup.md`).

use std::path::PathBuf;

use tower_durable_streams::storage::backup::{self, OnConflict};

use crate::config::Config;
use crate::storage::open_blocking;
use crate::{fail, Conflict};

pub async fn export(config: Config, out: PathBuf) {
    let (storage, _) = open_blocking(&config).await;
    let summary = if out.as_os_str() == "-" {
        backup::export(storage.as_ref(), tokio::io::stdout()).await
    } else {
        let file = tokio::fs::File::create(&out)
            .await
            .unwrap_or_else(|e| fail(format!("cannot create {}: {e}", out.display()), 1));
        backup::export(storage.as_ref(), tokio::io::BufWriter::new(file)).await
    }
    .unwrap_or_else(|e| fail(format!("export failed: {e}"), 1));
    eprintln!(
        "exported {} streams, {} bytes",
        summary.streams, summary.bytes
    );
}

pub async fn import(config: Config, input: PathBuf, on_conflict: Conflict) {
    let (storage, _) = open_blocking(&config).await;
    let policy = match on_conflict {
        Conflict::Skip => OnConflict::Skip,
        Conflict::Fail => OnConflict::Fail,
        Conflict::Replace => OnConflict::Replace,
    };
    let summary = if input.as_os_str() == "-" {
        backup::import(
            storage.as_ref(),
            tokio::io::BufReader::new(tokio::io::stdin()),
            policy,
        )
        .await
    } else {
        let file = tokio::fs::File::open(&input)
            .await
            .unwrap_or_else(|e| fail(format!("cannot open {}: {e}", input.display()), 1));
        backup::import(storage.as_ref(), tokio::io::BufReader::new(file), policy).await
    }
    .unwrap_or_else(|e| fail(format!("import failed: {e}"), 1));
    eprintln!(
        "imported {} streams ({} skipped), {} bytes",
        summary.streams, summary.skipped, summary.bytes
    );
}
