//! PostgreSQL storage (feature `postgres`): several service instances over one
//! database, any instance serving any request.
//!
//! The database is the truth. A stream is a row of `ds_streams` (its record),
//! its producers' rows in `ds_producers`, and its bytes in `ds_data` rows of at
//! most [`PostgresConfig::chunk_bytes`]. Offsets are positions the database
//! holds: an append is conditional on the stream's stored tail (row lock on
//! the stream's row), so two instances can never both write at one position,
//! and every instance hands out the same offsets.
//!
//! - **Group commit.** One writer task per instance takes every append queued
//!   since its last commit and makes them one transaction of pipelined
//!   `ds_append` calls (stable-sorted by stream key, so that instances lock
//!   rows in one order), with one `NOTIFY` for the batch.
//! - **Wake-ups.** Each instance listens on its own connection, outside the
//!   pool; a notification moves the tails of the streams it names forward,
//!   waking their live readers. After the listener reconnects, the engine
//!   re-checks every stream with live readers, so no wake-up is lost.
//! - **Failures.** An unreachable database is
//!   [`StorageError::Unavailable`] (503 with `Retry-After`), within bounded
//!   timeouts; the pool and the listener reconnect by themselves.
//! - **Leases.** Work done once (the expiry sweep) goes to the instance holding
//!   a row lease in `ds_leases`, renewed each sweep and taken over when it
//!   lapses.

mod listen;
mod schema;
mod writer;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use time::OffsetDateTime;
use tokio_postgres::{NoTls, Row};
use tokio_util::sync::CancellationToken;

use super::{
    Append, AppendFuture, ChangeSink, CreateOutcome, Cut, Expiry, ForkOrigin, ProducerState,
    ProducerTuple, RangePlan, ReadChunk, SharedStorage, Storage, StorageError, StorageFuture,
    StreamConfig, StreamRecord, Take,
};
use writer::Writer;

/// Settings of a [`PostgresStorage`].
///
/// ```
/// use std::time::Duration;
/// use tower_durable_streams::storage::PostgresConfig;
///
/// let config = PostgresConfig::new("postgres://app@db.internal/streams")
///     .pool_size(32)
///     .schema("durable_streams")
///     .timeout(Duration::from_secs(5));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct PostgresConfig {
    url: String,
    pool_size: usize,
    schema: String,
    timeout: Duration,
    chunk_bytes: usize,
    ttl_grace: Duration,
}

impl PostgresConfig {
    /// The database at `url` (`postgres://user:password@host:port/database`).
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            pool_size: 16,
            schema: "public".into(),
            timeout: Duration::from_secs(5),
            chunk_bytes: 256 * 1024,
            ttl_grace: Duration::from_secs(3),
        }
    }

    /// Connections in the pool (the listener has one more of its own).
    /// Defaults to 16.
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections.max(2);
        self
    }

    /// The schema the tables live in, created if missing: lower-case letters,
    /// digits and `_`. Defaults to `public`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The longest any database call may take (waiting for a connection
    /// included) before the request gets 503. Defaults to 5 seconds.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest `bytea` row of stream bytes; longer appends take several
    /// rows. Defaults to 256 KiB.
    pub fn chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes.clamp(1024, 1024 * 1024);
        self
    }

    /// How long past its TTL a stream is kept, covering the delay with which
    /// instances report reads (at most about one sweep interval). Defaults to
    /// 3 seconds: streams may live that much longer, never shorter.
    pub fn ttl_grace(mut self, grace: Duration) -> Self {
        self.ttl_grace = grace;
        self
    }
}

/// Counters of this instance's writer, to see group commit at work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresStats {
    /// Appends committed.
    pub appends: u64,
    /// Write transactions committed (one per batch).
    pub commits: u64,
    /// Batches that failed (the database was unreachable, for example).
    pub failed_batches: u64,
}

/// Streams in a PostgreSQL database that several service instances share.
///
/// ```no_run
/// use tower_durable_streams::storage::{PostgresConfig, PostgresStorage};
/// use tower_durable_streams::DurableStreamsService;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = PostgresConfig::new("postgres://app@db.internal/streams");
/// let storage = PostgresStorage::connect(config).await?;
/// let service = DurableStreamsService::builder().storage(storage).build()?;
/// # let _ = service; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStorage {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    config: PostgresConfig,
    channel: String,
    /// This instance, in notifications and leases.
    instance: String,
    writer: Writer,
    sinks: Arc<Mutex<Vec<Arc<dyn ChangeSink>>>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

#[derive(Debug, Default)]
struct Stats {
    appends: AtomicU64,
    commits: AtomicU64,
    failed_batches: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("schema", &self.inner.config.schema)
            .field("pool_size", &self.inner.config.pool_size)
            .finish_non_exhaustive()
    }
}

/// The error of a database call: `Unavailable` when the database could not be
/// reached or went away (the call may be retried), `Backend` otherwise.
pub(super) fn unavailable_or_backend(error: tokio_postgres::Error) -> StorageError {
    use tokio_postgres::error::SqlState;
    let connection_lost = error.is_closed()
        || error.code().is_some_and(|code| {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                ]
                .contains(code)
        })
        || std::error::Error::source(&error).is_some_and(|s| s.is::<std::io::Error>());
    if connection_lost {
        StorageError::Unavailable(Box::new(error))
    } else {
        StorageError::Backend(Box::new(error))
    }
}

fn pool_error(error: deadpool_postgres::PoolError) -> StorageError {
    match error {
        deadpool_postgres::PoolError::Backend(e) => unavailable_or_backend(e),
        other => StorageError::Unavailable(Box::new(other)),
    }
}

/// Runs `future` within the configured timeout; a timeout is `Unavailable`.
async fn bounded<T>(
    timeout: Duration,
    future: impl Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result,
        Err(_) => Err(StorageError::Unavailable(
            format!("the database did not answer within {timeout:?}").into(),
        )),
    }
}

fn valid_schema(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() <= 48
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit()
}

impl PostgresStorage {
    /// Connects, applies the schema migrations this build needs (safe when
    /// several instances start at once) and starts the writer and the
    /// listener on the current runtime.
    pub async fn connect(config: PostgresConfig) -> Result<Self, StorageError> {
        if !valid_schema(&config.schema) {
            return Err(StorageError::Backend(
                format!(
                    "invalid schema name {:?}: use lower-case letters, digits and _",
                    config.schema
                )
                .into(),
            ));
        }
        let mut pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| StorageError::Backend(Box::new(e)))?;
        // Server-side limits too: a call the client gave up on must not run on,
        // holding row locks, on a connection that went back to the pool.
        let ms = config.timeout.as_millis();
        pg.options(format!(
            "-c search_path={} -c statement_timeout={ms} -c idle_in_transaction_session_timeout={ms}",
            config.schema
        ))
        .connect_timeout(config.timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
            .application_name("tower-durable-streams");
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .build()
            .map_err(|e| StorageError::Backend(Box::new(e)))?;
        {
            let mut client = bounded(config.timeout, async {
                pool.get().await.map_err(pool_error)
            })
            .await?;
            // Migrations may wait for another instance's; give them longer.
            let migrating = schema::migrate(&mut client, &config.schema);
            bounded(config.timeout * 12, migrating).await?;
        }
        let stop = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let channel = format!("ds_changes_{}", config.schema);
        let instance = format!("{:016x}", fastrand::u64(..));
        let sinks: Arc<Mutex<Vec<Arc<dyn ChangeSink>>>> = Arc::default();
        let writer = Writer::start(writer::Settings {
            pool: pool.clone(),
            timeout: config.timeout,
            chunk_bytes: config.chunk_bytes as i32,
            channel: channel.clone(),
            instance: instance.clone(),
            stats: stats.clone(),
            stop: stop.clone(),
        });
        let mut listener_config = pg;
        listener_config.application_name("tower-durable-streams-listener");
        listen::start(listen::Settings {
            config: listener_config,
            channel: channel.clone(),
            instance: instance.clone(),
            sinks: sinks.clone(),
            stop: stop.clone(),
        });
        Ok(PostgresStorage {
            inner: Arc::new(Inner {
                pool,
                config,
                channel,
                instance,
                writer,
                sinks,
                stats,
                stop,
            }),
        })
    }

    /// This instance's writer counters since connect.
    pub fn stats(&self) -> PostgresStats {
        let s = &self.inner.stats;
        PostgresStats {
            appends: s.appends.load(Ordering::Relaxed),
            commits: s.commits.load(Ordering::Relaxed),
            failed_batches: s.failed_batches.load(Ordering::Relaxed),
        }
    }

    /// The header line of this instance's notifications.
    fn payload(&self) -> String {
        format!("ds1 {}", self.inner.instance)
    }

    /// Runs `f` on a pooled connection, bounded by the configured timeout.
    async fn with_client<T, F, Fut>(&self, f: F) -> Result<T, StorageError>
    where
        F: FnOnce(deadpool_postgres::Object) -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        bounded(self.inner.config.timeout, async {
            let client = self.inner.pool.get().await.map_err(pool_error)?;
            f(client).await
        })
        .await
    }
}

const RECORD_COLUMNS: &str = "s.key, s.id, s.content_type, s.ttl_secs, s.expires_at, \
    s.fork_source, s.fork_anchor, s.fork_sub_offset, s.fork_position, s.tail, s.closed, \
    s.closed_by_id, s.closed_by_epoch, s.closed_by_seq, s.stream_seq, s.soft_deleted, \
    ARRAY(SELECT p.producer FROM ds_producers p WHERE p.stream_id = s.id ORDER BY p.producer), \
    ARRAY(SELECT p.epoch FROM ds_producers p WHERE p.stream_id = s.id ORDER BY p.producer), \
    ARRAY(SELECT p.last_seq FROM ds_producers p WHERE p.stream_id = s.id ORDER BY p.producer)";

/// A stream's record from a row of `RECORD_COLUMNS`.
fn record_of(row: &Row) -> Result<(String, StreamRecord), StorageError> {
    let get = |e: tokio_postgres::Error| StorageError::Backend(Box::new(e));
    let key: String = row.try_get(0).map_err(get)?;
    let id: i64 = row.try_get(1).map_err(get)?;
    let ttl: Option<i64> = row.try_get(3).map_err(get)?;
    let expires: Option<OffsetDateTime> = row.try_get(4).map_err(get)?;
    let expiry = match (ttl, expires) {
        (Some(secs), _) => Expiry::Ttl(secs as u64),
        (None, Some(at)) => Expiry::At(at),
        (None, None) => Expiry::Never,
    };
    let mut config =
        StreamConfig::new(id as u64, row.try_get::<_, String>(2).map_err(get)?, expiry);
    if let Some(source) = row.try_get::<_, Option<String>>(5).map_err(get)? {
        config = config.with_fork(ForkOrigin::new(
            source,
            row.try_get::<_, i64>(6).map_err(get)? as u64,
            row.try_get::<_, i64>(7).map_err(get)? as u64,
            row.try_get::<_, i64>(8).map_err(get)? as u64,
        ));
    }
    let mut record = StreamRecord::new(config, row.try_get::<_, i64>(9).map_err(get)? as u64);
    record.closed = row.try_get(10).map_err(get)?;
    if let Some(by) = row.try_get::<_, Option<String>>(11).map_err(get)? {
        let epoch: Option<i64> = row.try_get(12).map_err(get)?;
        let seq: Option<i64> = row.try_get(13).map_err(get)?;
        record.closed_by = Some(ProducerTuple::new(
            by,
            epoch.unwrap_or(0) as u64,
            seq.unwrap_or(0) as u64,
        ));
    }
    record.stream_seq = row.try_get(14).map_err(get)?;
    record.soft_deleted = row.try_get(15).map_err(get)?;
    let producers: Vec<String> = row.try_get(16).map_err(get)?;
    let epochs: Vec<i64> = row.try_get(17).map_err(get)?;
    let seqs: Vec<i64> = row.try_get(18).map_err(get)?;
    for ((producer, epoch), seq) in producers.into_iter().zip(epochs).zip(seqs) {
        record
            .producers
            .insert(producer, ProducerState::new(epoch as u64, seq as u64));
    }
    Ok((key, record))
}

/// The least text above every text that starts with `prefix`, in byte
/// order, if there is one that is valid UTF-8 to name.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl Storage for PostgresStorage {
    fn load(&self) -> StorageFuture<'_, Vec<(String, StreamRecord)>> {
        Box::pin(self.with_client(|client| async move {
            let sql = format!("SELECT {RECORD_COLUMNS} FROM ds_streams s ORDER BY s.key");
            let rows = client
                .query(&sql, &[])
                .await
                .map_err(unavailable_or_backend)?;
            rows.iter().map(record_of).collect()
        }))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StorageFuture<'a, Vec<String>> {
        Box::pin(self.with_client(move |client| async move {
            // Byte order (the "C" collation, indexed since schema version 2)
            // whatever the database's, so pages follow on from `after` as
            // the trait says, and the range ends where the prefix does.
            let sql = "SELECT key FROM ds_streams \
                       WHERE key COLLATE \"C\" >= $1 AND key COLLATE \"C\" > $2 \
                       AND ($3::text IS NULL OR key COLLATE \"C\" < $3) \
                       AND starts_with(key, $1) AND NOT soft_deleted \
                       ORDER BY key COLLATE \"C\" LIMIT $4";
            let statement = client
                .prepare_cached(sql)
                .await
                .map_err(unavailable_or_backend)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let end = prefix_end(prefix);
            let rows = client
                .query(&statement, &[&prefix, &after.unwrap_or(""), &end, &limit])
                .await
                .map_err(unavailable_or_backend)?;
            Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect())
        }))
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StorageFuture<'a, Vec<Option<StreamRecord>>> {
        Box::pin(self.with_client(move |client| async move {
            let sql = format!("SELECT {RECORD_COLUMNS} FROM ds_streams s WHERE s.key = ANY($1)");
            let statement = client
                .prepare_cached(&sql)
                .await
                .map_err(unavailable_or_backend)?;
            let rows = client
                .query(&statement, &[&keys])
                .await
                .map_err(unavailable_or_backend)?;
            let mut found = std::collections::HashMap::with_capacity(rows.len());
            for row in &rows {
                let (key, record) = record_of(row)?;
                found.insert(key, record);
            }
            Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
        }))
    }

    fn get<'a>(&'a self, key: &'a str) -> StorageFuture<'a, Option<StreamRecord>> {
        Box::pin(self.with_client(move |client| async move {
            let sql = format!("SELECT {RECORD_COLUMNS} FROM ds_streams s WHERE s.key = $1");
            let statement = client
                .prepare_cached(&sql)
                .await
                .map_err(unavailable_or_backend)?;
            let row = client
                .query_opt(&statement, &[&key])
                .await
                .map_err(unavailable_or_backend)?;
            row.as_ref()
                .map(record_of)
                .transpose()
                .map(|r| r.map(|(_, record)| record))
        }))
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        record: StreamRecord,
        initial: Bytes,
    ) -> StorageFuture<'a, CreateOutcome> {
        let payload = self.payload();
        Box::pin(self.with_client(move |client| async move {
            let config = &record.config;
            let (ttl, expires) = match config.expiry {
                Expiry::Ttl(secs) => (Some(secs as i64), None),
                Expiry::At(at) => (None, Some(at)),
                _ => (None, None),
            };
            let fork = config.fork.as_ref();
            let statement = client
                .prepare_cached(
                    "SELECT ds_create($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                )
                .await
                .map_err(unavailable_or_backend)?;
            let row = client
                .query_one(
                    &statement,
                    &[
                        &key,
                        &(config.id as i64),
                        &config.content_type,
                        &ttl,
                        &expires,
                        &fork.map(|f| f.source.as_str()),
                        &(fork.map_or(0, |f| f.anchor) as i64),
                        &(fork.map_or(0, |f| f.sub_offset) as i64),
                        &(fork.map_or(0, |f| f.position) as i64),
                        &(record.tail as i64),
                        &record.closed,
                        &initial.as_ref(),
                        &(self.inner.config.chunk_bytes as i32),
                        &self.inner.channel,
                        &payload,
                    ],
                )
                .await
                .map_err(unavailable_or_backend)?;
            match row.get::<_, i16>(0) {
                0 => Ok(CreateOutcome::Created),
                1 => {
                    let sql = format!("SELECT {RECORD_COLUMNS} FROM ds_streams s WHERE s.key = $1");
                    let row = client
                        .query_opt(&sql, &[&key])
                        .await
                        .map_err(unavailable_or_backend)?;
                    match row.as_ref().map(record_of).transpose()? {
                        Some((_, existing)) => Ok(CreateOutcome::Exists(Box::new(existing))),
                        // Deleted again in between: the caller retries or refreshes.
                        None => Err(StorageError::Conflict { actual_tail: 0 }),
                    }
                }
                2 => Err(StorageError::NotFound),
                _ => Err(StorageError::Conflict { actual_tail: 0 }),
            }
        }))
    }

    fn append(&self, key: &str, append: Append) -> AppendFuture {
        self.inner.writer.submit(key.to_owned(), append)
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        from: u64,
        to: u64,
        max_bytes: usize,
        cut: Cut,
    ) -> StorageFuture<'a, ReadChunk> {
        Box::pin(self.with_client(move |client| async move {
            let statement = client
                .prepare_cached("SELECT id, tail FROM ds_streams WHERE key = $1")
                .await
                .map_err(unavailable_or_backend)?;
            let id: Option<(i64, i64)> = client
                .query_opt(&statement, &[&key])
                .await
                .map_err(unavailable_or_backend)?
                .map(|row| (row.get(0), row.get(1)));
            let (id, tail) = id.ok_or(StorageError::NotFound)?;
            read_rows(&client, id, from, to.min(tail as u64), max_bytes, cut).await
        }))
    }

    fn soft_delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()> {
        Box::pin(self.with_client(move |client| async move {
            let updated = client
                .execute(
                    "UPDATE ds_streams SET soft_deleted = true WHERE key = $1",
                    &[&key],
                )
                .await
                .map_err(unavailable_or_backend)?;
            if updated == 0 {
                return Err(StorageError::NotFound);
            }
            Ok(())
        }))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()> {
        let payload = self.payload();
        Box::pin(self.with_client(move |client| async move {
            let statement = client
                .prepare_cached("SELECT ds_delete($1, $2, $3)")
                .await
                .map_err(unavailable_or_backend)?;
            let row = client
                .query_one(&statement, &[&key, &self.inner.channel, &payload])
                .await
                .map_err(unavailable_or_backend)?;
            match row.get::<_, i16>(0) {
                2 => Err(StorageError::NotFound),
                _ => Ok(()),
            }
        }))
    }

    fn shared(&self) -> Option<&dyn SharedStorage> {
        Some(self)
    }

    fn health(&self) -> StorageFuture<'_, ()> {
        Box::pin(self.with_client(|client| async move {
            client
                .simple_query("SELECT 1")
                .await
                .map_err(unavailable_or_backend)
                .map(drop)
        }))
    }
}

/// Reads `from..to` of stream `id`, about `max_bytes`, a bounded range of rows
/// at a time.
async fn read_rows(
    client: &deadpool_postgres::Object,
    id: i64,
    from: u64,
    to: u64,
    max_bytes: usize,
    cut: Cut,
) -> Result<ReadChunk, StorageError> {
    let mut plan = RangePlan::new(from, to, max_bytes, cut);
    // Rows are copied out anyway: into one buffer, one `Bytes` per read.
    if from >= to {
        return Ok(ReadChunk::empty(from));
    }
    let expected = (to - from).min(max_bytes as u64).min(8 << 20);
    let mut data = BytesMut::with_capacity(expected as usize);
    let statement = client
        .prepare_cached(
            "SELECT position, data, last FROM ds_data WHERE stream_id = $1 \
             AND position >= coalesce((SELECT max(position) FROM ds_data \
                 WHERE stream_id = $1 AND position <= $2), $2) \
             AND position < $3 ORDER BY position",
        )
        .await
        .map_err(unavailable_or_backend)?;
    // A record (one append) may span several rows: collect them whole for
    // reads that cut only at record boundaries.
    let whole_records = cut == Cut::RecordBoundary;
    let mut record: Option<(u64, Vec<u8>)> = None;
    let mut cursor = from;
    'rows: while !plan.done() && cursor < to {
        // Enough rows to cover the budget, and no more.
        let upper = to.min(cursor.saturating_add(max_bytes.max(1) as u64));
        let rows = client
            .query(&statement, &[&id, &(cursor as i64), &(upper as i64)])
            .await
            .map_err(unavailable_or_backend)?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let position = row.get::<_, i64>(0) as u64;
            let bytes: &[u8] = row.get(1);
            let last: bool = row.get(2);
            cursor = position + bytes.len() as u64;
            let whole;
            let (start, piece) = if whole_records {
                let (start, mut buf) = record.take().unwrap_or((position, Vec::new()));
                buf.extend_from_slice(bytes);
                if !last {
                    record = Some((start, buf));
                    continue;
                }
                whole = buf;
                (start, &whole[..])
            } else {
                (position, bytes)
            };
            match plan.take(start, piece.len() as u64) {
                Take::Bytes(range) => data.extend_from_slice(&piece[range]),
                Take::Skip => {}
                _ => break 'rows,
            }
            if plan.done() {
                break 'rows;
            }
        }
    }
    let data = if data.is_empty() {
        Vec::new()
    } else {
        vec![data.freeze()]
    };
    Ok(ReadChunk::new(data, plan.end()))
}

const LEASE: Duration = Duration::from_secs(10);

impl SharedStorage for PostgresStorage {
    fn watch(&self, sink: Arc<dyn ChangeSink>) {
        self.inner
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sink);
    }

    fn lead(&self, task: &'static str) -> StorageFuture<'_, bool> {
        Box::pin(self.with_client(move |client| async move {
            let row = client
                .query_opt(
                    "INSERT INTO ds_leases (task, holder, until) \
                     VALUES ($1, $2, now() + make_interval(secs => $3)) \
                     ON CONFLICT (task) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until \
                     WHERE ds_leases.holder = EXCLUDED.holder OR ds_leases.until < now() \
                     RETURNING holder",
                    &[&task, &self.inner.instance, &LEASE.as_secs_f64()],
                )
                .await
                .map_err(unavailable_or_backend)?;
            Ok(row.is_some())
        }))
    }

    fn touch<'a>(&'a self, keys: &'a [String]) -> StorageFuture<'a, ()> {
        Box::pin(self.with_client(move |client| async move {
            client
                .execute(
                    "UPDATE ds_streams SET last_access = greatest(last_access, now()) \
                     WHERE key IN (SELECT key FROM ds_streams WHERE key = ANY($1) \
                     ORDER BY key FOR UPDATE)",
                    &[&keys],
                )
                .await
                .map_err(unavailable_or_backend)
                .map(drop)
        }))
    }

    fn expired(&self, limit: usize) -> StorageFuture<'_, Vec<String>> {
        let grace = self.inner.config.ttl_grace.as_millis() as i64;
        Box::pin(self.with_client(move |client| async move {
            let rows = client
                .query(
                    "SELECT s.key FROM ds_streams s WHERE ds_is_expired(s, $1) \
                     AND (s.expires_at IS NOT NULL OR s.ttl_secs IS NOT NULL) LIMIT $2",
                    &[&grace, &(limit as i64)],
                )
                .await
                .map_err(unavailable_or_backend)?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        }))
    }

    fn expire<'a>(&'a self, key: &'a str) -> StorageFuture<'a, bool> {
        let grace = self.inner.config.ttl_grace.as_millis() as i64;
        let payload = self.payload();
        Box::pin(self.with_client(move |client| async move {
            let row = client
                .query_one(
                    "SELECT ds_expire($1, $2, $3, $4)",
                    &[&key, &grace, &self.inner.channel, &payload],
                )
                .await
                .map_err(unavailable_or_backend)?;
            Ok(row.get(0))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_ends_below_its_next_sibling() {
        assert_eq!(prefix_end("/a/").as_deref(), Some("/a0"));
        assert_eq!(prefix_end("").as_deref(), None);
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        for key in ["/a/", "/a/b", "/a/\u{10FFFF}"] {
            assert!(key < prefix_end("/a/").unwrap().as_str());
        }
    }
}
