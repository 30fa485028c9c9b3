//! A backend that fails on demand.

use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::storage::{
    Append, AppendFuture, CreateOutcome, Cut, ReadChunk, Storage, StorageError, StorageFuture,
    StreamRecord,
};

/// One method of [`Storage`], to make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// [`Storage::load`].
    Load,
    /// [`Storage::get`].
    Get,
    /// [`Storage::create`].
    Create,
    /// [`Storage::append`]: the append is never made, its future fails.
    Append,
    /// [`Storage::read`].
    Read,
    /// [`Storage::soft_delete`].
    SoftDelete,
    /// [`Storage::delete`].
    Delete,
}

/// How a failing method fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// [`StorageError::Io`]: a disk or network error.
    Io,
    /// [`StorageError::Full`]: out of room.
    Full,
}

impl Failure {
    fn error(self) -> StorageError {
        match self {
            Failure::Io => StorageError::Io(std::io::Error::other("injected failure")),
            Failure::Full => StorageError::Full,
        }
    }
}

/// Turns failures of a [`FailingStorage`] on and off while it is in use.
/// Cheap to clone; clones control the same store.
#[derive(Debug, Clone, Default)]
pub struct FailSwitch {
    failing: Arc<Mutex<Vec<(Method, Failure)>>>,
}

impl FailSwitch {
    /// Makes `method` fail with `failure` until [`heal`](Self::heal).
    pub fn fail(&self, method: Method, failure: Failure) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        failing.retain(|(m, _)| *m != method);
        failing.push((method, failure));
    }

    /// Makes every method fail with `failure`.
    pub fn fail_all(&self, failure: Failure) {
        for method in [
            Method::Load,
            Method::Get,
            Method::Create,
            Method::Append,
            Method::Read,
            Method::SoftDelete,
            Method::Delete,
        ] {
            self.fail(method, failure);
        }
    }

    /// Makes every method work again.
    pub fn heal(&self) {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn check(&self, method: Method) -> Result<(), StorageError> {
        let failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match failing.iter().find(|(m, _)| *m == method) {
            Some((_, failure)) => Err(failure.error()),
            None => Ok(()),
        }
    }
}

/// Wraps a store and fails the methods its [`FailSwitch`] says, to test that
/// every request still gets an answer when storage fails.
///
/// ```
/// use tower_durable_streams::storage::testkit::{Failure, FailingStorage, Method};
/// use tower_durable_streams::streams::CreateOptions;
/// use tower_durable_streams::{DurableStreamsService, MemoryStorage, StreamError};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let storage = FailingStorage::new(MemoryStorage::new());
/// let switch = storage.switch();
/// let streams = DurableStreamsService::builder().storage(storage).build().unwrap().streams();
/// streams.create("/s", CreateOptions::new()).await.unwrap();
/// switch.fail(Method::Append, Failure::Full);
/// assert!(matches!(streams.append("/s", "x").await, Err(StreamError::Full)));
/// switch.heal();
/// streams.append("/s", "x").await.unwrap();
/// # }
/// ```
pub struct FailingStorage<S> {
    inner: S,
    switch: FailSwitch,
}

impl<S> FailingStorage<S> {
    /// `inner`, with every method working until the switch says otherwise.
    pub fn new(inner: S) -> Self {
        FailingStorage {
            inner,
            switch: FailSwitch::default(),
        }
    }

    /// The switch that controls this store's failures.
    pub fn switch(&self) -> FailSwitch {
        self.switch.clone()
    }
}

impl<S: fmt::Debug> fmt::Debug for FailingStorage<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailingStorage")
            .field("inner", &self.inner)
            .field("switch", &self.switch)
            .finish()
    }
}

impl<S: Storage> Storage for FailingStorage<S> {
    fn load(&self) -> StorageFuture<'_, Vec<(String, StreamRecord)>> {
        match self.switch.check(Method::Load) {
            Ok(()) => self.inner.load(),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn get<'a>(&'a self, key: &'a str) -> StorageFuture<'a, Option<StreamRecord>> {
        match self.switch.check(Method::Get) {
            Ok(()) => self.inner.get(key),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        record: StreamRecord,
        initial: Bytes,
    ) -> StorageFuture<'a, CreateOutcome> {
        match self.switch.check(Method::Create) {
            Ok(()) => self.inner.create(key, record, initial),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn append(&self, key: &str, append: Append) -> AppendFuture {
        match self.switch.check(Method::Append) {
            Ok(()) => self.inner.append(key, append),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        from: u64,
        to: u64,
        max_bytes: usize,
        cut: Cut,
    ) -> StorageFuture<'a, ReadChunk> {
        match self.switch.check(Method::Read) {
            Ok(()) => self.inner.read(key, from, to, max_bytes, cut),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StorageFuture<'a, Vec<Option<StreamRecord>>> {
        match self.switch.check(Method::Get) {
            Ok(()) => self.inner.get_many(keys),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StorageFuture<'a, Vec<String>> {
        match self.switch.check(Method::Load) {
            Ok(()) => self.inner.list(prefix, after, limit),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn soft_delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()> {
        match self.switch.check(Method::SoftDelete) {
            Ok(()) => self.inner.soft_delete(key),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn delete<'a>(&'a self, key: &'a str) -> StorageFuture<'a, ()> {
        match self.switch.check(Method::Delete) {
            Ok(()) => self.inner.delete(key),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}
