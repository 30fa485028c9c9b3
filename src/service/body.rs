//! The response body type of the service.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt as _;
use sync_wrapper::SyncWrapper;

/// The error a streaming response body can end with (a storage failure mid-read).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BoxStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// The body of every response of [`DurableStreamsService`](crate::DurableStreamsService).
///
/// Catch-up reads are a list of `Bytes` chunks handed out without copying;
/// SSE responses are a stream that ends when the stream closes, the reconnect
/// interval passes, or the stream is deleted. `Default` is the empty body and
/// `From<Bytes>` a full one, so host layers (CORS, timeouts, auth) can answer
/// with it.
///
/// ```
/// use bytes::Bytes;
/// use http_body::Body;
/// use tower_durable_streams::ResponseBody;
///
/// assert!(ResponseBody::default().is_end_stream());
/// assert_eq!(ResponseBody::from(Bytes::from_static(b"hi")).size_hint().exact(), Some(2));
/// ```
#[derive(Default)]
pub struct ResponseBody {
    kind: Kind,
}

#[derive(Default)]
enum Kind {
    #[default]
    Empty,
    Chunks {
        chunks: VecDeque<Bytes>,
        remaining: u64,
    },
    // `SyncWrapper` makes the body `Sync` (only `&mut` access ever reaches the
    // stream), so hosts can box it into `http_body_util::combinators::BoxBody`.
    Stream {
        stream: SyncWrapper<BoxStream>,
        /// Bytes still to come, as far as known.
        hint: SizeHint,
    },
    /// Any other body (a fallback service's), with its own size hint.
    Boxed {
        body: SyncWrapper<UnsyncBoxBody<Bytes, BoxError>>,
        hint: SizeHint,
        end: bool,
    },
}

impl ResponseBody {
    /// A body made of these chunks, in order.
    pub fn chunks(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        ResponseBody {
            kind: Kind::Chunks { chunks, remaining },
        }
    }

    /// Any body yielding [`Bytes`], such as a host service's, boxed.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body;
    /// use http_body_util::Full;
    /// use tower_durable_streams::ResponseBody;
    ///
    /// let body = ResponseBody::new(Full::new(Bytes::from_static(b"hi")));
    /// assert_eq!(body.size_hint().exact(), Some(2));
    /// ```
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (hint, end) = (body.size_hint(), body.is_end_stream());
        ResponseBody {
            kind: Kind::Boxed {
                body: SyncWrapper::new(UnsyncBoxBody::new(body.map_err(Into::into))),
                hint,
                end,
            },
        }
    }

    /// A body streamed from `stream`.
    pub fn stream<S>(stream: S) -> Self
    where
        S: Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
    {
        Self::stream_with_hint(stream, SizeHint::default())
    }

    /// A body streamed from `stream`, which yields what `hint` says (an
    /// exact hint becomes `Content-Length`; a stream that ends early then
    /// aborts the response).
    pub(crate) fn stream_with_hint<S>(stream: S, hint: SizeHint) -> Self
    where
        S: Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
    {
        ResponseBody {
            kind: Kind::Stream {
                stream: SyncWrapper::new(Box::pin(stream)),
                hint,
            },
        }
    }
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> Self {
        ResponseBody::chunks([bytes])
    }
}

impl From<String> for ResponseBody {
    fn from(text: String) -> Self {
        ResponseBody::from(Bytes::from(text))
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Chunks { .. } => "chunks",
            Kind::Stream { .. } => "stream",
            Kind::Boxed { .. } => "boxed",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Chunks { chunks, remaining } => Poll::Ready(chunks.pop_front().map(|c| {
                *remaining -= c.len() as u64;
                Ok(Frame::data(c))
            })),
            Kind::Stream { stream, hint } => {
                let polled = stream.get_mut().as_mut().poll_next(cx);
                if let Poll::Ready(Some(Ok(bytes))) = &polled {
                    let len = bytes.len() as u64;
                    let mut left = SizeHint::new();
                    left.set_lower(hint.lower().saturating_sub(len));
                    if let Some(upper) = hint.upper() {
                        left.set_upper(upper.saturating_sub(len).max(left.lower()));
                    }
                    *hint = left;
                }
                polled.map(|item| item.map(|r| r.map(Frame::data)))
            }
            Kind::Boxed { body, hint, end } => {
                let body = body.get_mut();
                let polled = Pin::new(&mut *body).poll_frame(cx);
                (*hint, *end) = (body.size_hint(), body.is_end_stream());
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Chunks { chunks, .. } => chunks.is_empty(),
            Kind::Stream { .. } => false,
            Kind::Boxed { end, .. } => *end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Chunks { remaining, .. } => SizeHint::with_exact(*remaining),
            Kind::Stream { hint, .. } => *hint,
            Kind::Boxed { hint, .. } => *hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_send_sync_unpin_and_default() {
        fn host_friendly<T: Send + Sync + Unpin + Default + From<Bytes> + 'static>() {}
        host_friendly::<ResponseBody>();
    }
}
