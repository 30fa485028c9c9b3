//! Group commit: one task per instance makes every append queued since its
//! last commit one transaction of pipelined `ds_append` calls and one
//! `NOTIFY`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{bounded, pool_error, unavailable_or_backend, Stats};
use crate::storage::{Append, AppendFuture, StorageError};

/// The most appends in one transaction.
const MAX_BATCH: usize = 1024;
/// The most bytes in one transaction (more wait for the next).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// The longest notification payload (PostgreSQL's limit is 8,000 bytes).
const MAX_PAYLOAD: usize = 7_900;

pub(super) struct Settings {
    pub pool: Pool,
    pub timeout: Duration,
    pub chunk_bytes: i32,
    pub channel: String,
    pub instance: String,
    pub stats: Arc<Stats>,
    pub stop: CancellationToken,
}

struct Queued {
    key: String,
    append: Append,
    reply: oneshot::Sender<Result<u64, StorageError>>,
}

/// The queue into the writer task. One task per instance: while its batch
/// commits, the next one gathers. (Two tasks over disjoint streams committed
/// no more appends per second on a 2-core machine, CPU-bound, in twice the
/// transactions.)
pub(super) struct Writer {
    queue: mpsc::UnboundedSender<Queued>,
}

impl Writer {
    /// Starts the writer task on the current runtime.
    pub(super) fn start(settings: Settings) -> Writer {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(settings, rx));
        Writer { queue }
    }

    /// Queues an append; the future resolves once its transaction committed.
    pub(super) fn submit(&self, key: String, append: Append) -> AppendFuture {
        let (reply, answer) = oneshot::channel();
        let queued = self.queue.send(Queued { key, append, reply });
        Box::pin(async move {
            if queued.is_err() {
                return Err(stopped());
            }
            answer.await.unwrap_or_else(|_| Err(stopped()))
        })
    }
}

fn stopped() -> StorageError {
    StorageError::Unavailable("the PostgreSQL writer has stopped".into())
}

async fn run(settings: Settings, mut rx: mpsc::UnboundedReceiver<Queued>) {
    loop {
        let first = tokio::select! {
            first = rx.recv() => first,
            () = settings.stop.cancelled() => None,
        };
        let Some(first) = first else { return };
        let mut bytes = first.append.data.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.append.data.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        // Every instance locks stream rows in key order, so two batches can
        // never wait on each other; the sort is stable, so one stream's
        // appends keep their order.
        batch.sort_by(|a, b| a.key.cmp(&b.key));
        let outcome = commit_with_retry(&settings, &batch).await;
        match &outcome {
            Ok(statuses) => {
                settings.stats.commits.fetch_add(1, Ordering::Relaxed);
                let applied = statuses.iter().filter(|s| s.is_ok()).count();
                settings
                    .stats
                    .appends
                    .fetch_add(applied as u64, Ordering::Relaxed);
            }
            Err(e) => {
                settings
                    .stats
                    .failed_batches
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, appends = batch.len(), "a PostgreSQL write batch failed");
            }
        }
        match outcome {
            Ok(statuses) => {
                for (queued, status) in batch.into_iter().zip(statuses) {
                    let _ = queued.reply.send(status);
                }
            }
            Err(e) => {
                let unavailable = matches!(e, StorageError::Unavailable(_));
                let message = e.to_string();
                for queued in batch {
                    let error = if unavailable {
                        StorageError::Unavailable(message.clone().into())
                    } else {
                        StorageError::Backend(message.clone().into())
                    };
                    let _ = queued.reply.send(Err(error));
                }
            }
        }
    }
}

/// Commits the batch, once more after a deadlock or serialization failure
/// (the transaction was rolled back: nothing of it was written).
async fn commit_with_retry(
    settings: &Settings,
    batch: &[Queued],
) -> Result<Vec<Result<u64, StorageError>>, StorageError> {
    let mut attempt = 0;
    loop {
        match bounded(settings.timeout, commit(settings, batch)).await {
            Err(StorageError::Backend(e)) if attempt < 2 && retryable(e.as_ref()) => {
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn retryable(error: &(dyn std::error::Error + 'static)) -> bool {
    use tokio_postgres::error::SqlState;
    error
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|c| {
            *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        })
}

/// Whether an append can go through the set-based statement: placed at the
/// tail, nothing but bytes (no producer, `Stream-Seq` or closure), one row.
fn plain(append: &Append, chunk_bytes: i32) -> bool {
    append.at_tail
        && append.producer.is_none()
        && append.stream_seq.is_none()
        && append.close.is_none()
        && !append.data.is_empty()
        && append.data.len() <= chunk_bytes as usize
}

/// Plain appends, all of them in one statement, which is its own transaction
/// (one round trip, one WAL flush): lock the streams in key order, move each
/// stream's tail once, insert every row at once, and notify the other
/// instances of each stream's new tail in payloads under 8,000 bytes. Lines
/// are grouped by their running total over 6,500, so a group holds at most
/// 6,499 bytes plus one line that straddles the boundary (a line is at most
/// about 1,070 bytes: the ids, the tail and a 1,024-byte name), plus the
/// header: under the limit even for the longest names.
const PLAIN_BATCH: &str = "
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[]) WITH ORDINALITY
        AS t(key, id, data, ord)
),
locked AS (
    SELECT s.key FROM ds_streams s
    WHERE s.key = ANY($1::text[]) ORDER BY s.key FOR UPDATE
),
totals AS (
    SELECT i.key, i.id, sum(length(i.data))::bigint AS total
    FROM input i JOIN locked l ON l.key = i.key GROUP BY i.key, i.id
),
moved AS (
    UPDATE ds_streams s SET tail = s.tail + t.total, last_access = now()
    FROM totals t
    WHERE s.key = t.key AND s.id = t.id AND NOT s.closed AND NOT s.soft_deleted
    RETURNING s.key, s.id, s.tail - t.total AS start
),
placed AS (
    SELECT i.ord, i.key, i.id, i.data, m.start + coalesce(sum(length(i.data)) OVER (
        PARTITION BY i.key, i.id ORDER BY i.ord
        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS position
    FROM input i JOIN moved m ON m.key = i.key AND m.id = i.id
),
stored AS (
    INSERT INTO ds_data (stream_id, position, data, last)
    SELECT id, position, data, true FROM placed
),
ends AS (
    SELECT DISTINCT ON (key) key, id, position + length(data) AS tail
    FROM placed ORDER BY key, ord DESC
),
lines AS (
    SELECT key, format(E'\\na %s %s 0 %s',
        CASE WHEN id < 0 THEN (id::numeric + 18446744073709551616)::text ELSE id::text END,
        tail, key) AS line
    FROM ends
),
chunks AS (
    SELECT line, (sum(length(line)) OVER (ORDER BY key)) / 6500 AS chunk FROM lines
),
notified AS (
    SELECT pg_notify($4, $5 || string_agg(line, '')) FROM chunks GROUP BY chunk
)
SELECT p.ord, p.position + length(p.data), (SELECT count(*) FROM notified) FROM placed p";

/// One transaction for the whole batch; the answer of each append.
async fn commit(
    settings: &Settings,
    batch: &[Queued],
) -> Result<Vec<Result<u64, StorageError>>, StorageError> {
    if batch
        .iter()
        .all(|queued| plain(&queued.append, settings.chunk_bytes))
    {
        return commit_plain(settings, batch).await;
    }
    commit_each(settings, batch).await
}

/// A batch of plain appends: one statement, one commit.
async fn commit_plain(
    settings: &Settings,
    batch: &[Queued],
) -> Result<Vec<Result<u64, StorageError>>, StorageError> {
    let client = settings.pool.get().await.map_err(pool_error)?;
    let statement = client
        .prepare_cached(PLAIN_BATCH)
        .await
        .map_err(unavailable_or_backend)?;
    let keys: Vec<&str> = batch.iter().map(|q| q.key.as_str()).collect();
    let ids: Vec<i64> = batch.iter().map(|q| q.append.stream_id as i64).collect();
    let data: Vec<&[u8]> = batch.iter().map(|q| q.append.data.as_ref()).collect();
    let header = format!("ds1 {}", settings.instance);
    let rows = client
        .query(
            &statement,
            &[&keys, &ids, &data, &settings.channel, &header],
        )
        .await
        .map_err(unavailable_or_backend)?;
    // A stream that was closed, deleted or replaced meanwhile has no row: its
    // appends are conflicts, which the engine resolves by reloading.
    let mut statuses: Vec<Result<u64, StorageError>> = batch
        .iter()
        .map(|_| Err(StorageError::Conflict { actual_tail: 0 }))
        .collect();
    for row in &rows {
        let ord: i64 = row.get(0);
        let tail: i64 = row.get(1);
        if let Some(status) = statuses.get_mut(ord as usize - 1) {
            *status = Ok(tail as u64);
        }
    }
    Ok(statuses)
}

/// A batch with producers, `Stream-Seq`, closures or large bodies: one
/// `ds_append` call per append, pipelined in one transaction.
async fn commit_each(
    settings: &Settings,
    batch: &[Queued],
) -> Result<Vec<Result<u64, StorageError>>, StorageError> {
    let mut client = settings.pool.get().await.map_err(pool_error)?;
    let statement = client
        .prepare_cached(
            "SELECT status, tail FROM ds_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
             $13, $14, $15, $16, $17)",
        )
        .await
        .map_err(unavailable_or_backend)?;
    let transaction = client.transaction().await.map_err(unavailable_or_backend)?;
    // Sent without waiting for each answer: one round trip for the batch.
    let calls = batch.iter().map(|queued| {
        let a = &queued.append;
        let (producer, epoch, last_seq) = match &a.producer {
            Some((id, state)) => (
                Some(id.as_str()),
                Some(state.epoch as i64),
                Some(state.last_seq as i64),
            ),
            None => (None, None, None),
        };
        let closed_by = a.close.as_ref().and_then(Option::as_ref);
        let prior = a.prior_producer.as_ref();
        let params = (
            queued.key.as_str(),
            a.stream_id as i64,
            a.expected_tail as i64,
            a.data.as_ref(),
            a.stream_seq.as_deref(),
            producer,
            epoch,
            last_seq,
            a.close.is_some(),
            closed_by.map(|t| t.id.as_str()),
            closed_by.map(|t| t.epoch as i64),
            closed_by.map(|t| t.seq as i64),
            settings.chunk_bytes,
            a.at_tail,
            prior.map(|p| p.epoch as i64),
            prior.map(|p| p.last_seq as i64),
            a.prior_stream_seq.as_deref(),
        );
        let transaction = &transaction;
        let statement = &statement;
        async move {
            transaction
                .query_one(
                    statement,
                    &[
                        &params.0, &params.1, &params.2, &params.3, &params.4, &params.5,
                        &params.6, &params.7, &params.8, &params.9, &params.10, &params.11,
                        &params.12, &params.13, &params.14, &params.15, &params.16,
                    ],
                )
                .await
        }
    });
    let rows = join_all(calls).await;
    let mut statuses = Vec::with_capacity(batch.len());
    let mut changes = Vec::new();
    for (queued, row) in batch.iter().zip(rows) {
        let row = row.map_err(unavailable_or_backend)?;
        let (status, tail): (i16, i64) = (row.get(0), row.get(1));
        statuses.push(match status {
            0 => {
                changes.push((
                    &queued.key,
                    queued.append.stream_id,
                    tail,
                    queued.append.close.is_some(),
                ));
                Ok(tail as u64)
            }
            1 => Err(StorageError::Conflict {
                actual_tail: tail as u64,
            }),
            _ => Err(StorageError::NotFound),
        });
    }
    for payload in payloads(&settings.instance, &changes) {
        transaction
            .execute("SELECT pg_notify($1, $2)", &[&settings.channel, &payload])
            .await
            .map_err(unavailable_or_backend)?;
    }
    transaction.commit().await.map_err(unavailable_or_backend)?;
    Ok(statuses)
}

/// The notification payloads of a batch's appends: each stream's last tail,
/// in as few payloads as fit under PostgreSQL's limit.
fn payloads(instance: &str, changes: &[(&String, u64, i64, bool)]) -> Vec<String> {
    let header = format!("ds1 {instance}");
    let mut payloads = Vec::new();
    let mut current = header.clone();
    for (i, (key, id, tail, closed)) in changes.iter().enumerate() {
        // The batch is sorted by key: only a stream's last append counts,
        // unless a later one in this batch closed it.
        let later = changes.get(i + 1).is_some_and(|next| next.0 == *key);
        if later {
            continue;
        }
        let closed = *closed
            || changes[..i]
                .iter()
                .rev()
                .take_while(|c| c.0 == *key)
                .any(|c| c.3);
        let line = format!("\na {id} {tail} {} {key}", u8::from(closed));
        if current.len() + line.len() > MAX_PAYLOAD && current.len() > header.len() {
            payloads.push(std::mem::replace(&mut current, header.clone()));
        }
        current.push_str(&line);
    }
    if current.len() > header.len() {
        payloads.push(current);
    }
    payloads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_each_stream_once_and_stay_under_the_limit() {
        let (a, b) = ("/a".to_owned(), "/b".to_owned());
        let changes = [(&a, 1, 5, false), (&a, 1, 9, true), (&b, 2, 3, false)];
        assert_eq!(payloads("i", &changes), ["ds1 i\na 1 9 1 /a\na 2 3 0 /b"]);
        let keys: Vec<String> = (0..2000).map(|i| format!("/stream/{i:06}")).collect();
        let many: Vec<_> = keys.iter().map(|k| (k, 7, 1, false)).collect();
        let all = payloads("i", &many);
        assert!(all.len() > 1);
        assert!(all.iter().all(|p| p.len() <= MAX_PAYLOAD));
        assert_eq!(
            all.iter().map(|p| p.lines().count() - 1).sum::<usize>(),
            2000
        );
    }
}
