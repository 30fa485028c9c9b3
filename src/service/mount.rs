//! Mounting the service in hosts that hand it full paths (plain hyper, warp):
//! requests under the mount go to the streams with the prefix removed, every
//! other request to the host's own service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use pin_project_lite::pin_project;

use super::{BoxError, DurableStreamsService, ResponseBody, ResponseFuture};

/// [`DurableStreamsService`] under its [`base_path`](crate::Builder::base_path),
/// next to the host's own service for every other path; made by
/// [`DurableStreamsService::fallback`].
///
/// A request whose path is the mount point or starts with it and `/` goes to
/// the streams with the prefix removed (`/v1/stream/chats/1` is the stream
/// `/chats/1`); every other request goes to `fallback` untouched. So each
/// stream has exactly one URL, and the host writes no dispatch of its own. The
/// fallback's response body is boxed into [`ResponseBody`]; the streams'
/// responses are not. Without a `base_path` the streams answer every path.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Full;
/// use tower::ServiceExt;
/// use tower_durable_streams::DurableStreamsService;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let not_found = tower::service_fn(|_: Request<Full<Bytes>>| async {
///     let mut response = Response::new(Full::new(Bytes::from_static(b"not here")));
///     *response.status_mut() = StatusCode::NOT_FOUND;
///     Ok::<_, Infallible>(response)
/// });
/// let app = DurableStreamsService::builder()
///     .base_path("/v1/stream")
///     .build()
///     .unwrap()
///     .fallback(not_found);
///
/// let create = Request::put("/v1/stream/notes")
///     .body(Full::new(Bytes::new()))
///     .unwrap();
/// assert_eq!(app.clone().oneshot(create).await.unwrap().status(), StatusCode::CREATED);
/// let other = Request::get("/index.html").body(Full::new(Bytes::new())).unwrap();
/// assert_eq!(app.oneshot(other).await.unwrap().status(), StatusCode::NOT_FOUND);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct WithFallback<F> {
    streams: DurableStreamsService,
    fallback: F,
}

impl<F> WithFallback<F> {
    pub(super) fn new(streams: DurableStreamsService, fallback: F) -> Self {
        WithFallback { streams, fallback }
    }

    /// The streams service.
    pub fn streams(&self) -> &DurableStreamsService {
        &self.streams
    }

    /// The host's service for every other path.
    pub fn fallback(&self) -> &F {
        &self.fallback
    }
}

/// The path below `base` of `uri`, if `uri` is under it.
fn below(base: &str, uri: &Uri) -> Option<Uri> {
    let rest = uri.path().strip_prefix(base)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let rest = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    // The rest of a valid path and query is a valid path and query.
    let path_and_query = PathAndQuery::try_from(path_and_query).ok()?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}

impl<B, F, FB> tower_service::Service<Request<B>> for WithFallback<F>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    F: tower_service::Service<Request<B>, Response = Response<FB>> + Clone,
    FB: http_body::Body<Data = Bytes> + Send + 'static,
    FB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = F::Error;
    type Future = WithFallbackFuture<F::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), F::Error>> {
        self.fallback.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let target = match self.streams.base_path() {
            None => Some(None),
            Some(base) => below(base, request.uri()).map(Some),
        };
        let state = match target {
            Some(uri) => {
                if let Some(uri) = uri {
                    *request.uri_mut() = uri;
                }
                State::Streams {
                    future: tower_service::Service::call(&mut self.streams, request),
                }
            }
            None => {
                // The ready fallback takes the call; a clone waits for the next.
                let clone = self.fallback.clone();
                let mut ready = std::mem::replace(&mut self.fallback, clone);
                State::Fallback {
                    future: ready.call(request),
                }
            }
        };
        WithFallbackFuture { state }
    }
}

pin_project! {
    /// The response future of [`WithFallback`].
    pub struct WithFallbackFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Streams { #[pin] future: ResponseFuture },
        Fallback { #[pin] future: F },
    }
}

impl<F, FB, E> Future for WithFallbackFuture<F>
where
    F: Future<Output = Result<Response<FB>, E>>,
    FB: http_body::Body<Data = Bytes> + Send + 'static,
    FB::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Streams { future } => future.poll(cx).map(|r| match r {
                Ok(response) => Ok(response),
                Err(never) => match never {},
            }),
            StateProj::Fallback { future } => future
                .poll(cx)
                .map(|r| r.map(|response| response.map(ResponseBody::new))),
        }
    }
}

impl<F> std::fmt::Debug for WithFallbackFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithFallbackFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_the_mount_are_rewritten() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        let base = "/v1/stream";
        assert_eq!(
            below(base, &uri("/v1/stream/a/b?offset=-1")),
            Some(uri("/a/b?offset=-1"))
        );
        assert_eq!(below(base, &uri("/v1/stream")), Some(uri("/")));
        assert_eq!(
            below(base, &uri("http://h/v1/stream/x")),
            Some(uri("http://h/x"))
        );
        assert_eq!(below(base, &uri("/v1/streamx")), None);
        assert_eq!(below(base, &uri("/other")), None);
        assert_eq!(
            below(base, &uri("/v1/stream/v1/stream/x")),
            Some(uri("/v1/stream/x")),
            "the prefix is removed once: this is the stream /v1/stream/x"
        );
    }
}
