//! The listener: one connection per instance, outside the pool, that turns
//! other instances' notifications into [`Change`]s, and reconnects by itself.
//! Notifications sent while it was away are lost, so after every reconnect it
//! reports [`Change::Resync`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::storage::{Change, ChangeSink};

pub(super) struct Settings {
    pub config: tokio_postgres::Config,
    pub channel: String,
    pub instance: String,
    pub sinks: Arc<Mutex<Vec<Arc<dyn ChangeSink>>>>,
    pub stop: CancellationToken,
}

/// Starts the listener task on the current runtime.
pub(super) fn start(settings: Settings) {
    tokio::spawn(async move {
        let stop = settings.stop.clone();
        tokio::select! {
            () = run(settings) => {}
            () = stop.cancelled() => {}
        }
    });
}

async fn run(settings: Settings) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen(&settings).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "PostgreSQL listener disconnected");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One connection's life: LISTEN, then deliver until it ends. Whatever was
/// sent before the LISTEN took effect is unknown: a `Resync` follows it,
/// the first time too.
async fn listen(settings: &Settings) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = settings.config.connect(NoTls).await?;
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!("LISTEN \"{}\"", settings.channel))
        .await?;
    tracing::debug!("PostgreSQL listener connected");
    deliver(&settings.sinks, Change::Resync);
    while let Some(payload) = notifications.recv().await {
        // An instance's own notifications are skipped, unless several
        // engines share this storage and need each other's.
        let shared = settings
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            > 1;
        let own = if shared {
            ""
        } else {
            settings.instance.as_str()
        };
        for change in parse(&payload, own) {
            deliver(&settings.sinks, change);
        }
    }
    drop(client);
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

fn deliver(sinks: &Mutex<Vec<Arc<dyn ChangeSink>>>, change: Change) {
    let sinks = sinks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for sink in sinks {
        sink.change(change.clone());
    }
}

/// The changes in one payload, unless this instance sent it.
fn parse(payload: &str, instance: &str) -> Vec<Change> {
    let mut lines = payload.lines();
    match lines.next().and_then(|h| h.strip_prefix("ds1 ")) {
        Some(sender) if sender != instance => {}
        _ => return Vec::new(),
    }
    lines
        .filter_map(|line| {
            let mut fields = line.splitn(5, ' ');
            match fields.next()? {
                "a" => {
                    let id = fields.next()?.parse().ok()?;
                    let tail = fields.next()?.parse().ok()?;
                    let closed = fields.next()? == "1";
                    Some(Change::appended(fields.next()?, id, tail, closed))
                }
                "c" => Some(Change::changed(line.strip_prefix("c ")?)),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_and_own_ones_are_skipped() {
        let payload = "ds1 other\na 7 42 1 /a/b\nc /gone\nx junk";
        assert_eq!(
            parse(payload, "me"),
            [
                Change::appended("/a/b", 7, 42, true),
                Change::changed("/gone")
            ]
        );
        assert!(parse(payload, "other").is_empty());
        assert!(parse("garbage", "me").is_empty());
    }
}
