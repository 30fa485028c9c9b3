//! A behaviour suite every [`Storage`] backend must pass, public so that a
//! third-party backend can run it against itself, and [`FailingStorage`], a
//! backend that fails on demand, for testing what a host does when storage
//! fails.
//!
//! Each check is an async function taking a fresh, empty store. The
//! [`storage_testkit!`](crate::storage_testkit) macro turns them all into
//! `#[tokio::test]`s; two more checks need more than a fresh store and run
//! when the macro is given what they need: `reopen`, a closure that opens the
//! same durable store again (each call a new handle on the same data), and
//! `full`, a fresh store with room for fewer than 1,024 bytes of stream data.
//!
//! ```
//! # mod wrapper {
//! use tower_durable_streams::MemoryStorage;
//! tower_durable_streams::storage_testkit!(
//!     MemoryStorage::new(),
//!     full: MemoryStorage::new().with_max_bytes(100),
//! );
//! # }
//! ```
//!
//! A durable backend adds `reopen`; the closure returns a future, so opening
//! may be async:
//!
//! ```
//! # mod wrapper {
//! use tower_durable_streams::storage::{Durability, FileStorage};
//! tower_durable_streams::storage_testkit!(
//!     FileStorage::open(tempfile::tempdir().unwrap().keep(), Durability::Fsync).unwrap(),
//!     reopen: {
//!         let dir = tempfile::tempdir().unwrap().keep();
//!         move || {
//!             let dir = dir.clone();
//!             async move { FileStorage::open(dir, Durability::Fsync).unwrap() }
//!         }
//!     },
//! );
//! # }
//! ```

mod failing;

pub use failing::{FailSwitch, FailingStorage, Failure, Method};

use std::future::Future;

use bytes::Bytes;

use super::{
    Append, CreateOutcome, Cut, Expiry, ForkOrigin, ProducerState, ProducerTuple, Storage,
    StorageError, StreamConfig, StreamRecord,
};

fn record(id: u64) -> StreamRecord {
    StreamRecord::new(
        StreamConfig::new(id, "application/octet-stream", Expiry::Ttl(60)),
        0,
    )
}

fn append(id: u64, expected_tail: u64, data: &'static [u8]) -> Append {
    Append::new(id, expected_tail, Bytes::from_static(data))
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
    let close = append(1, 0, b"end").closing(None);
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
    let state = ProducerState::new(2, 5);
    let tuple = ProducerTuple::new("p", 2, 5);
    let closing = append(7, 0, b"x")
        .with_stream_seq("0009")
        .with_producer("p", state)
        .closing(Some(tuple.clone()));
    store.append("/s", closing).await.expect("append");
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

/// Several records at once, in the order asked, as `get` gives each.
pub async fn gets_many_at_once(store: impl Storage) {
    for (id, key) in ["/m/1", "/m/2", "/m/gone"].into_iter().enumerate() {
        store
            .create(key, record(id as u64 + 1), Bytes::from_static(b"abc"))
            .await
            .expect("create");
    }
    store.soft_delete("/m/gone").await.expect("soft delete");
    let keys: Vec<String> = ["/m/2", "/m/none", "/m/1", "/m/gone", "/m/2"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    let many = store.get_many(&keys).await.expect("get_many");
    assert_eq!(many.len(), keys.len());
    for (key, record) in keys.iter().zip(&many) {
        let one = store.get(key).await.expect("get");
        assert_eq!(
            record
                .as_ref()
                .map(|r| (r.config.id, r.tail, r.soft_deleted)),
            one.as_ref().map(|r| (r.config.id, r.tail, r.soft_deleted)),
            "{key}"
        );
    }
    assert!(many[1].is_none());
    assert_eq!(many[0].as_ref().map(|r| r.config.id), Some(2));
    assert!(store.get_many(&[]).await.expect("get_many").is_empty());
}

/// Listing: live streams under a prefix, in byte order, in pages.
pub async fn lists_by_prefix_in_pages(store: impl Storage) {
    for (id, key) in ["/a/2", "/a/1", "/a/10", "/ab", "/b/1", "/a/gone"]
        .into_iter()
        .enumerate()
    {
        store
            .create(key, record(id as u64 + 1), Bytes::new())
            .await
            .expect("create");
    }
    store.soft_delete("/a/gone").await.expect("soft delete");
    let all = store.list("/a/", None, 100).await.expect("list");
    assert_eq!(
        all,
        ["/a/1", "/a/10", "/a/2"],
        "soft-deleted and others left out"
    );
    let first = store.list("/a/", None, 2).await.expect("list");
    assert_eq!(first, ["/a/1", "/a/10"]);
    let rest = store.list("/a/", Some("/a/10"), 2).await.expect("list");
    assert_eq!(rest, ["/a/2"]);
    assert_eq!(store.list("/a", None, 100).await.expect("list").len(), 4);
    assert!(store.list("/c", None, 100).await.expect("list").is_empty());
}

/// Appends are pipelined: several submitted before any is awaited are applied
/// in submission order, each checked against the state the ones before it
/// leave (the engine submits a stream's next append before the previous one
/// is durable).
pub async fn appends_are_pipelined(store: impl Storage) {
    store
        .create("/s", record(1), Bytes::new())
        .await
        .expect("create");
    let mut pending = Vec::new();
    let mut tail = 0;
    for i in 0..16u8 {
        let data = Bytes::from(vec![b'a' + i; usize::from(i) + 1]);
        let expected = tail;
        tail += data.len() as u64;
        pending.push(store.append("/s", Append::new(1, expected, data)));
    }
    // A stale append in the middle of the pipeline is refused; the next one,
    // expecting the tail the others leave, is not.
    let stale = store.append("/s", append(1, 0, b"stale"));
    let after = store.append("/s", Append::new(1, tail, Bytes::from_static(b"!")));
    let mut end = 0;
    for (i, future) in pending.into_iter().enumerate() {
        let tail = future.await.unwrap_or_else(|e| panic!("append {i}: {e}"));
        end += u64::from(i as u8) + 1;
        assert_eq!(tail, end, "append {i} reports the tail after it");
    }
    assert!(matches!(
        stale.await,
        Err(StorageError::Conflict { actual_tail }) if actual_tail == tail
    ));
    after.await.expect("the append after a refused one");
    let mut expected: Vec<u8> = (0..16u8)
        .flat_map(|i| vec![b'a' + i; usize::from(i) + 1])
        .collect();
    expected.push(b'!');
    assert_eq!(read_all(&store, "/s", 0, tail + 1).await, expected);
}

/// Everything acknowledged is there after the store is dropped and opened
/// again: records, bytes, producer state, `Stream-Seq`, closure, soft delete,
/// fork origins; deleted streams stay deleted; appends continue at the tail.
///
/// `open` opens the same durable store each time it is called.
pub async fn survives_reopen<S, F, Fut>(mut open: F)
where
    S: Storage,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    {
        let store = open().await;
        store
            .create("/a", record(1), Bytes::from_static(b"ab"))
            .await
            .expect("create");
        let producer = append(1, 2, b"cd")
            .with_producer("p", ProducerState::new(3, 4))
            .with_stream_seq("07");
        store.append("/a", producer).await.expect("append");
        store
            .create("/closed", record(2), Bytes::from_static(b"x"))
            .await
            .expect("create");
        let close = append(2, 1, b"").closing(Some(ProducerTuple::new("q", 0, 9)));
        store.append("/closed", close).await.expect("close");
        let fork_config = StreamConfig::new(3, "application/octet-stream", Expiry::Never)
            .with_fork(ForkOrigin::new("/a", 4, 0, 4));
        store
            .create(
                "/fork",
                StreamRecord::new(fork_config, 4),
                Bytes::from_static(b"f"),
            )
            .await
            .expect("create fork");
        store.soft_delete("/a").await.expect("soft delete");
        store
            .create("/gone", record(4), Bytes::from_static(b"g"))
            .await
            .expect("create");
        store.delete("/gone").await.expect("delete");
    }
    let store = open().await;
    let mut loaded = store.load().await.expect("load");
    loaded.sort_by(|a, b| a.0.cmp(&b.0));
    let keys: Vec<&str> = loaded.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["/a", "/closed", "/fork"],
        "deleted streams stay deleted"
    );
    let a = &loaded[0].1;
    assert_eq!((a.tail, a.soft_deleted), (4, true));
    assert_eq!(a.producers.get("p"), Some(&ProducerState::new(3, 4)));
    assert_eq!(a.stream_seq.as_deref(), Some("07"));
    let closed = &loaded[1].1;
    assert!(closed.closed);
    assert_eq!(closed.closed_by, Some(ProducerTuple::new("q", 0, 9)));
    let fork = &loaded[2].1;
    assert_eq!(fork.config.fork, Some(ForkOrigin::new("/a", 4, 0, 4)));
    assert_eq!(fork.tail, 5);
    assert_eq!(read_all(&store, "/a", 0, 4).await, b"abcd");
    assert_eq!(read_all(&store, "/fork", 4, 5).await, b"f");
    store
        .append("/fork", append(3, 5, b"g"))
        .await
        .expect("append after reopen");
    assert_eq!(read_all(&store, "/fork", 4, 6).await, b"fg");
    assert!(matches!(
        store.append("/fork", append(3, 5, b"h")).await,
        Err(StorageError::Conflict { actual_tail: 6 })
    ));
}

/// A store out of room refuses with [`StorageError::Full`] and writes
/// nothing: the acknowledged bytes read back exactly, the refused ones never
/// appear.
///
/// `store` has room for fewer than 1,024 bytes of stream data.
pub async fn full_is_refused(store: impl Storage) {
    store
        .create("/s", record(1), Bytes::new())
        .await
        .expect("create");
    let mut tail = 0u64;
    let mut written = Vec::new();
    loop {
        assert!(tail < 1024, "the store never reported Full");
        let data = Bytes::from(vec![b'a' + (tail / 16 % 26) as u8; 16]);
        match store.append("/s", Append::new(1, tail, data.clone())).await {
            Ok(_) => {
                written.extend_from_slice(&data);
                tail += 16;
            }
            Err(StorageError::Full) => break,
            Err(other) => panic!("expected Full, got {other}"),
        }
    }
    assert_eq!(read_all(&store, "/s", 0, tail + 16).await, written);
    let loaded = store.load().await.expect("load");
    assert_eq!(loaded[0].1.tail, tail, "the refused append left no trace");
    match store
        .create("/t", record(2), Bytes::from(vec![0u8; 1024]))
        .await
    {
        Err(StorageError::Full) => {}
        other => panic!("a create that does not fit: expected Full, got {other:?}"),
    }
    assert!(
        store
            .load()
            .await
            .expect("load")
            .iter()
            .all(|(k, _)| k != "/t"),
        "the refused create left no stream"
    );
}

/// Instantiates every testkit check as a `#[tokio::test]` against the store that
/// `$make` builds (evaluated once per test, inside an async function, so it may
/// `.await`). Optional `reopen: <closure>` and `full: <store>` add the checks
/// that need them (see the [module documentation](crate::storage::testkit)).
#[macro_export]
macro_rules! storage_testkit {
    ($make:expr $(, $extra:ident: $value:expr)* $(,)?) => {
        $crate::storage_testkit!(@tests $make;
            create_is_idempotent,
            appends_read_back,
            appends_are_conditional,
            appends_are_pipelined,
            append_state_is_persisted,
            reads_are_bounded,
            fork_records_start_at_their_position,
            delete_and_soft_delete,
            lists_by_prefix_in_pages,
            gets_many_at_once
        );
        $($crate::storage_testkit!(@extra $extra $value);)*
    };
    (@tests $make:expr; $($check:ident),*) => {
        $(
            #[tokio::test]
            async fn $check() {
                $crate::storage::testkit::$check($make).await;
            }
        )*
    };
    (@extra reopen $open:expr) => {
        #[tokio::test]
        async fn survives_reopen() {
            $crate::storage::testkit::survives_reopen($open).await;
        }
    };
    (@extra full $make:expr) => {
        #[tokio::test]
        async fn full_is_refused() {
            $crate::storage::testkit::full_is_refused($make).await;
        }
    };
}
