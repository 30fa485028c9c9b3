//! The schema, as versioned migrations applied at start-up under an advisory
//! lock, so that several instances starting at once apply each exactly once.

use tokio_postgres::Client;

use super::unavailable_or_backend;
use crate::storage::StorageError;

/// The advisory lock every instance takes to migrate (`"dsmigrat"`).
const MIGRATION_LOCK: i64 = 0x6473_6d69_6772_6174;

/// Every migration, in order. A released migration never changes; a new
/// schema version is a new entry.
const MIGRATIONS: &[(i32, &str)] = &[(1, V1), (2, V2)];

const V1: &str = r#"
CREATE TABLE ds_streams (
    key text PRIMARY KEY,
    id bigint NOT NULL UNIQUE,
    content_type text NOT NULL,
    ttl_secs bigint,
    expires_at timestamptz,
    fork_source text,
    fork_anchor bigint NOT NULL DEFAULT 0,
    fork_sub_offset bigint NOT NULL DEFAULT 0,
    fork_position bigint NOT NULL DEFAULT 0,
    tail bigint NOT NULL,
    closed boolean NOT NULL DEFAULT false,
    closed_by_id text,
    closed_by_epoch bigint,
    closed_by_seq bigint,
    stream_seq text,
    soft_deleted boolean NOT NULL DEFAULT false,
    last_access timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ds_streams_fork_source ON ds_streams (fork_source) WHERE fork_source IS NOT NULL;
CREATE INDEX ds_streams_expires_at ON ds_streams (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX ds_streams_ttl ON ds_streams (last_access) WHERE ttl_secs IS NOT NULL;

CREATE TABLE ds_producers (
    stream_id bigint NOT NULL,
    producer text NOT NULL,
    epoch bigint NOT NULL,
    last_seq bigint NOT NULL,
    PRIMARY KEY (stream_id, producer)
);

-- A stream's bytes in rows of at most one chunk; `last` ends an append.
CREATE TABLE ds_data (
    stream_id bigint NOT NULL,
    position bigint NOT NULL,
    data bytea NOT NULL,
    last boolean NOT NULL,
    PRIMARY KEY (stream_id, position)
);
-- Stream bytes are opaque: no compression attempts, cheap out-of-line reads.
ALTER TABLE ds_data ALTER COLUMN data SET STORAGE EXTERNAL;

-- Writes p_data at p_position of stream p_id in rows of p_chunk bytes.
CREATE FUNCTION ds_put_data(p_id bigint, p_position bigint, p_data bytea, p_chunk int)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    total int := length(p_data);
    at int := 0;
    n int;
BEGIN
    WHILE at < total LOOP
        n := least(p_chunk, total - at);
        INSERT INTO ds_data (stream_id, position, data, last)
        VALUES (p_id, p_position + at, substring(p_data FROM at + 1 FOR n), at + n >= total);
        at := at + n;
    END LOOP;
END $$;

-- One conditional append. It needs the stream to be incarnation p_id, open
-- and not deleted, and then either its tail to be p_expected or, with
-- p_at_tail, the state the engine decided on to be unchanged (the producer's
-- epoch and sequence, the Stream-Seq): then it lands at the current tail.
-- Status 0: applied (tail is the new tail); 1: conflict (tail is the stored
-- tail); 2: no such incarnation.
CREATE FUNCTION ds_append(
    p_key text, p_id bigint, p_expected bigint, p_data bytea, p_seq text,
    p_producer text, p_epoch bigint, p_last_seq bigint,
    p_close boolean, p_closed_id text, p_closed_epoch bigint, p_closed_seq bigint,
    p_chunk int, p_at_tail boolean, p_prior_epoch bigint, p_prior_last_seq bigint,
    p_prior_seq text, OUT status smallint, OUT tail bigint)
LANGUAGE plpgsql AS $$
DECLARE
    current record;
    prior record;
    at bigint;
BEGIN
    SELECT s.tail, s.closed, s.soft_deleted, s.stream_seq INTO current
    FROM ds_streams AS s WHERE s.key = p_key AND s.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        status := 2; tail := 0; RETURN;
    END IF;
    status := 1; tail := current.tail;
    IF current.closed OR current.soft_deleted THEN RETURN; END IF;
    IF p_at_tail THEN
        IF p_seq IS NOT NULL AND current.stream_seq IS DISTINCT FROM p_prior_seq THEN
            RETURN;
        END IF;
        IF p_producer IS NOT NULL THEN
            SELECT epoch, last_seq INTO prior FROM ds_producers
            WHERE stream_id = p_id AND producer = p_producer;
            IF FOUND IS DISTINCT FROM (p_prior_epoch IS NOT NULL)
                OR (FOUND AND (prior.epoch, prior.last_seq) <> (p_prior_epoch, p_prior_last_seq)) THEN
                RETURN;
            END IF;
        END IF;
        at := current.tail;
    ELSIF current.tail <> p_expected THEN
        RETURN;
    ELSE
        at := p_expected;
    END IF;
    UPDATE ds_streams AS s SET
        tail = at + length(p_data),
        stream_seq = coalesce(p_seq, s.stream_seq),
        closed = s.closed OR p_close,
        closed_by_id = CASE WHEN p_close THEN p_closed_id ELSE s.closed_by_id END,
        closed_by_epoch = CASE WHEN p_close THEN p_closed_epoch ELSE s.closed_by_epoch END,
        closed_by_seq = CASE WHEN p_close THEN p_closed_seq ELSE s.closed_by_seq END,
        last_access = now()
    WHERE s.key = p_key;
    PERFORM ds_put_data(p_id, at, p_data, p_chunk);
    IF p_producer IS NOT NULL THEN
        INSERT INTO ds_producers (stream_id, producer, epoch, last_seq)
        VALUES (p_id, p_producer, p_epoch, p_last_seq)
        ON CONFLICT (stream_id, producer)
        DO UPDATE SET epoch = EXCLUDED.epoch, last_seq = EXCLUDED.last_seq;
    END IF;
    status := 0; tail := at + length(p_data);
END $$;

-- Creates a stream unless one exists at p_key. Status 0: created; 1: exists;
-- 2: the fork source does not exist; 3: the fork source is soft-deleted.
CREATE FUNCTION ds_create(
    p_key text, p_id bigint, p_content_type text, p_ttl bigint, p_expires timestamptz,
    p_fork_source text, p_anchor bigint, p_sub_offset bigint, p_position bigint,
    p_start bigint, p_closed boolean, p_data bytea, p_chunk int,
    p_channel text, p_payload text)
RETURNS smallint LANGUAGE plpgsql AS $$
DECLARE
    source_deleted boolean;
BEGIN
    IF p_fork_source IS NOT NULL THEN
        -- Locks the source against a concurrent delete until this commits.
        SELECT soft_deleted INTO source_deleted FROM ds_streams
        WHERE key = p_fork_source FOR SHARE;
        IF NOT FOUND THEN RETURN 2; END IF;
        IF source_deleted THEN RETURN 3; END IF;
    END IF;
    INSERT INTO ds_streams (key, id, content_type, ttl_secs, expires_at, fork_source,
        fork_anchor, fork_sub_offset, fork_position, tail, closed)
    VALUES (p_key, p_id, p_content_type, p_ttl, p_expires, p_fork_source,
        p_anchor, p_sub_offset, p_position, p_start + length(p_data), p_closed)
    ON CONFLICT (key) DO NOTHING;
    IF NOT FOUND THEN RETURN 1; END IF;
    PERFORM ds_put_data(p_id, p_start, p_data, p_chunk);
    PERFORM pg_notify(p_channel, p_payload || E'\nc ' || p_key);
    RETURN 0;
END $$;

-- Deletes p_key: soft-deletes it while forks read through it; otherwise
-- removes it and then every soft-deleted source this leaves unreferenced.
-- Status 0: removed; 1: soft-deleted; 2: not found.
CREATE FUNCTION ds_delete(p_key text, p_channel text, p_payload text)
RETURNS smallint LANGUAGE plpgsql AS $$
DECLARE
    k text := p_key;
    s record;
    result smallint := 2;
BEGIN
    LOOP
        SELECT id, fork_source, soft_deleted INTO s FROM ds_streams WHERE key = k FOR UPDATE;
        EXIT WHEN NOT FOUND;
        -- Up the chain, only soft-deleted sources go.
        EXIT WHEN result <> 2 AND NOT s.soft_deleted;
        IF EXISTS (SELECT 1 FROM ds_streams WHERE fork_source = k) THEN
            IF result = 2 THEN
                UPDATE ds_streams SET soft_deleted = true WHERE key = k;
                PERFORM pg_notify(p_channel, p_payload || E'\nc ' || k);
                result := 1;
            END IF;
            EXIT;
        END IF;
        DELETE FROM ds_data WHERE stream_id = s.id;
        DELETE FROM ds_producers WHERE stream_id = s.id;
        DELETE FROM ds_streams WHERE key = k;
        PERFORM pg_notify(p_channel, p_payload || E'\nc ' || k);
        IF result = 2 THEN result := 0; END IF;
        EXIT WHEN s.fork_source IS NULL;
        k := s.fork_source;
    END LOOP;
    RETURN result;
END $$;

-- Whether p_key's expiry has passed by the database's clock: an absolute
-- expiry, or a sliding TTL past the last recorded use plus p_grace_ms (the
-- most that use reports from instances can lag).
CREATE FUNCTION ds_is_expired(s ds_streams, p_grace_ms bigint)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT NOT s.soft_deleted AND (
        (s.expires_at IS NOT NULL AND s.expires_at <= now())
        OR (s.ttl_secs IS NOT NULL AND s.last_access
            + make_interval(secs => s.ttl_secs) + make_interval(secs => p_grace_ms / 1000.0)
            <= now()))
$$;

-- Deletes p_key if it has expired; whether it did.
CREATE FUNCTION ds_expire(p_key text, p_grace_ms bigint, p_channel text, p_payload text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    s ds_streams;
BEGIN
    SELECT * INTO s FROM ds_streams WHERE key = p_key FOR UPDATE;
    IF NOT FOUND OR NOT ds_is_expired(s, p_grace_ms) THEN RETURN false; END IF;
    RETURN ds_delete(p_key, p_channel, p_payload) <> 2;
END $$;

-- Leases for work that one instance at a time does (the expiry sweep).
CREATE TABLE ds_leases (
    task text PRIMARY KEY,
    holder text NOT NULL,
    until timestamptz NOT NULL
);
"#;

/// Version 2: stream keys in byte order, for listings under a prefix
/// (`Storage::list`, which subscriptions use to link existing streams).
/// Built inside the migration's transaction (`CONCURRENTLY` cannot be), so
/// on a large table it holds up writes to `ds_streams` while it builds.
const V2: &str = r#"
CREATE INDEX ds_streams_key_bytes ON ds_streams (key COLLATE "C");
"#;

/// Creates the schema if needed and applies every migration not applied yet.
pub(super) async fn migrate(client: &mut Client, schema: &str) -> Result<(), StorageError> {
    let fail = unavailable_or_backend;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail)?;
    let result = apply(client, schema).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail);
    result.and(unlocked.map(drop))
}

async fn apply(client: &mut Client, schema: &str) -> Result<(), StorageError> {
    let fail = unavailable_or_backend;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
             CREATE TABLE IF NOT EXISTS ds_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await
        .map_err(fail)?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM ds_migrations", &[])
        .await
        .map_err(fail)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let transaction = client.transaction().await.map_err(fail)?;
        transaction.batch_execute(sql).await.map_err(fail)?;
        transaction
            .execute(
                "INSERT INTO ds_migrations (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(fail)?;
        transaction.commit().await.map_err(fail)?;
        tracing::info!(version, schema, "applied a schema migration");
    }
    if let Some(newer) = applied.iter().max().filter(|v| **v > latest()) {
        return Err(StorageError::Backend(
            format!(
                "schema {schema} is at version {newer}, newer than this build knows ({}): \
                 upgrade this instance",
                latest()
            )
            .into(),
        ));
    }
    Ok(())
}

/// The schema version this build writes.
pub(super) fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}
