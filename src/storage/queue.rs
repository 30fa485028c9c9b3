//! The queue between the async API of a durable backend and its writer thread.

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Append, CreateOutcome, StorageError, StreamRecord};

/// One mutation waiting for the writer thread, with the channel its result goes to.
pub(crate) enum Op {
    Create {
        key: String,
        record: StreamRecord,
        initial: Bytes,
        reply: oneshot::Sender<Result<CreateOutcome, StorageError>>,
    },
    Append {
        key: String,
        append: Append,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    SoftDelete {
        key: String,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    Delete {
        key: String,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
}

/// Refuses an operation because the writer has stopped.
pub(crate) fn reject(op: Op) {
    match op {
        Op::Create { reply, .. } => {
            let _ = reply.send(Err(poisoned()));
        }
        Op::Append { reply, .. } | Op::SoftDelete { reply, .. } | Op::Delete { reply, .. } => {
            let _ = reply.send(Err(poisoned()));
        }
    }
}

/// The error every operation gets once the writer stopped after an I/O error.
pub(crate) fn poisoned() -> StorageError {
    StorageError::Io(std::io::Error::other(
        "the storage writer stopped after an I/O error; restart to recover from disk",
    ))
}

/// The future of a queued operation: fails at once if it could not be queued,
/// else resolves with the writer's answer.
pub(crate) fn answer<T: Send + 'static>(
    submitted: Result<(), StorageError>,
    rx: oneshot::Receiver<Result<T, StorageError>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StorageError>> + Send>> {
    Box::pin(async move {
        submitted?;
        rx.await.unwrap_or_else(|_| Err(poisoned()))
    })
}
