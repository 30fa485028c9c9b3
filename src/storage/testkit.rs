//! A behaviour suite every [`Storage`] backend must pass, public so that a
//! third-party backend can run it against itself.
//!
//! Each check is an async function taking a fresh, empty store. The
//! [`storage_testkit!`](crate::storage_testkit) macro turns them all into
//! `#[tokio::test]`s:
//!
//! ```
//! # mod wrapper {
//! use tower_durable_streams::MemoryStorage;
//! tower_durable_streams::storage_testkit!(MemoryStorage::new());
//! # }
//! ```

use bytes::Bytes;

use super::{
    Append, CreateOutcome, Cut, Expiry, ProducerState, ProducerTuple, Storage, StorageError,
    StreamConfig, StreamRecord,
};

fn record(id: u64) -> StreamRecord {
    StreamRecord::new(
        StreamConfig {
            id,
            content_type: "application/octet-stream".into(),
            expiry: Expiry::Ttl(60),
            fork: None,
        },
        0,
    )
}

fn append(id: u64, expected_tail: u64, data: &'static [u8]) -> Append {
    Append {
        stream_id: id,
        expected_tail,
        data: Bytes::from_static(data),
        stream_seq: None,
        producer: None,
        close: None,
    }
}

async fn read_all(store: &dyn Storage, key: &str, from: u64, to: u64) -> Vec<u8> {
    let chunk = store
        .read(key, from, to, usize::MAX, Cut::AnyByte)
        .await
        .expect("read");
    chunk.data.concat()
}

/// Create is create-if-absent and reports the existing record otherwise.
pub async fn create_is_idempotent(store: impl Storage) {
    let created = store
        .create("/a", record(1), Bytes::from_static(b"hi"))
        .await;
    assert_eq!(created.expect("create"), CreateOutcome::Created);
    match store
        .create("/a", record(2), Bytes::new())
        .await
        .expect("create")
    {
        CreateOutcome::Exists(existing) => {
            assert_eq!(existing.config.id, 1);
            assert_eq!(existing.tail, 2);
        }
        other => panic!("expected Exists, got {other:?}"),
    }
}

/// Appended bytes read back byte-exact and in order, from any position.
pub async fn appends_read_back(store: impl Storage) {
    store
        .create("/s", record(1), Bytes::from_static(b"ab"))
        .await
        .expect("create");
    store
        .append("/s", append(1, 2, b"cde"))
        .await
        .expect("append");
    store
        .append("/s", append(1, 5, b"f"))
        .await
        .expect("append");
    assert_eq!(read_all(&store, "/s", 0, 6).await, b"abcdef");
    assert_eq!(read_all(&store, "/s", 3, 6).await, b"def");
    assert_eq!(read_all(&store, "/s", 1, 4).await, b"bcd");
    assert_eq!(read_all(&store, "/s", 6, 6).await, b"");
}

/// An append naming the wrong tail, or a closed stream, is refused and changes nothing.
pub async fn appends_are_conditional(store: impl Storage) {
    store
        .create("/s", record(1), Bytes::new())
        .await
        .expect("create");
    let stale = store.append("/s", append(1, 3, b"x")).await;
    assert!(matches!(
        stale,
        Err(StorageError::Conflict { actual_tail: 0 })
    ));
    let mut close = append(1, 0, b"end");
    close.close = Some(None);
    store.append("/s", close).await.expect("close");
    let after_close = store.append("/s", append(1, 3, b"x")).await;
    assert!(matches!(after_close, Err(StorageError::Conflict { .. })));
    assert_eq!(read_all(&store, "/s", 0, 10).await, b"end");
    let missing = store.append("/nope", append(1, 0, b"x")).await;
    assert!(matches!(missing, Err(StorageError::NotFound)));
}

/// Producer state, `Stream-Seq` and closure persist with the append that set them.
pub async fn append_state_is_persisted(store: impl Storage) {
    store
        .create("/s", record(7), Bytes::new())
        .await
        .expect("create");
    let state = ProducerState {
        epoch: 2,
        last_seq: 5,
    };
    let tuple = ProducerTuple {
        id: "p".into(),
        epoch: 2,
        seq: 5,
    };
    store
        .append(
            "/s",
            Append {
                stream_seq: Some("0009".into()),
                producer: Some(("p".into(), state)),
                close: Some(Some(tuple.clone())),
                ..append(7, 0, b"x")
            },
        )
        .await
        .expect("append");
    let loaded = store.load().await.expect("load");
    let (key, rec) = loaded
        .into_iter()
        .find(|(k, _)| k == "/s")
        .expect("stream loaded");
    assert_eq!(key, "/s");
    assert_eq!(rec.tail, 1);
    assert!(rec.closed);
    assert_eq!(rec.closed_by, Some(tuple));
    assert_eq!(rec.stream_seq.as_deref(), Some("0009"));
    assert_eq!(rec.producers.get("p"), Some(&state));
    assert_eq!(rec.config.expiry, Expiry::Ttl(60));
}

/// Reads respect `max_bytes`, and record-boundary reads never split an append.
pub async fn reads_are_bounded(store: impl Storage) {
    store
        .create("/s", record(1), Bytes::from_static(b"aaaa"))
        .await
        .expect("create");
    store
        .append("/s", append(1, 4, b"bbbb"))
        .await
        .expect("append");
    let chunk = store.read("/s", 0, 8, 6, Cut::AnyByte).await.expect("read");
    assert_eq!((chunk.data.concat(), chunk.end), (b"aaaabb".to_vec(), 6));
    let chunk = store
        .read("/s", 0, 8, 6, Cut::RecordBoundary)
        .await
        .expect("read");
    assert_eq!((chunk.data.concat(), chunk.end), (b"aaaa".to_vec(), 4));
    let chunk = store
        .read("/s", 0, 8, 1, Cut::RecordBoundary)
        .await
        .expect("read");
    assert_eq!(chunk.end, 4, "at least one whole record");
    let chunk = store
        .read("/s", 2, 8, 1, Cut::RecordBoundary)
        .await
        .expect("read");
    assert_eq!((chunk.data.concat(), chunk.end), (b"aa".to_vec(), 4));
}

/// Forks keep their own bytes from their divergence position on.
pub async fn fork_records_start_at_their_position(store: impl Storage) {
    let mut rec = record(3);
    rec.tail = 10;
    store
        .create("/f", rec, Bytes::from_static(b"xy"))
        .await
        .expect("create");
    store
        .append("/f", append(3, 12, b"z"))
        .await
        .expect("append");
    assert_eq!(read_all(&store, "/f", 10, 13).await, b"xyz");
    assert_eq!(read_all(&store, "/f", 11, 13).await, b"yz");
}

/// Soft delete persists; delete removes the stream entirely.
pub async fn delete_and_soft_delete(store: impl Storage) {
    store
        .create("/s", record(1), Bytes::from_static(b"x"))
        .await
        .expect("create");
    store.soft_delete("/s").await.expect("soft delete");
    let loaded = store.load().await.expect("load");
    assert!(loaded.iter().any(|(k, r)| k == "/s" && r.soft_deleted));
    assert_eq!(
        read_all(&store, "/s", 0, 1).await,
        b"x",
        "soft-deleted data stays readable"
    );
    store.delete("/s").await.expect("delete");
    assert!(store.load().await.expect("load").is_empty());
    assert!(matches!(
        store.delete("/s").await,
        Err(StorageError::NotFound)
    ));
    let recreated = store
        .create("/s", record(2), Bytes::new())
        .await
        .expect("create");
    assert_eq!(recreated, CreateOutcome::Created);
}

/// Instantiates every testkit check as a `#[tokio::test]` against the store that
/// `$make` builds (evaluated once per test).
#[macro_export]
macro_rules! storage_testkit {
    ($make:expr) => {
        $crate::storage_testkit!(@tests $make;
            create_is_idempotent,
            appends_read_back,
            appends_are_conditional,
            append_state_is_persisted,
            reads_are_bounded,
            fork_records_start_at_their_position,
            delete_and_soft_delete
        );
    };
    (@tests $make:expr; $($check:ident),*) => {
        $(
            #[tokio::test]
            async fn $check() {
                $crate::storage::testkit::$check($make).await;
            }
        )*
    };
}
