//! The response future of the service.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

use super::ResponseBody;

/// The future returned by [`DurableStreamsService`](crate::DurableStreamsService).
/// It never fails: every refusal is a response.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>,
}

impl ResponseFuture {
    pub(crate) fn new(
        future: impl Future<Output = Response<ResponseBody>> + Send + 'static,
    ) -> Self {
        ResponseFuture {
            inner: Box::pin(future),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx).map(Ok)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
