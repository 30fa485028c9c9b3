//! Receiving request bodies: the size limit, the minimum arrival rate, and the
//! budget shared by every body being received, so that memory stays bounded
//! whatever clients send (or fail to send).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::problem::Problem;
use super::request::header_str;
use super::{BoxError, Inner};

/// How bodies may arrive: set on the builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// Every body may take this long before the rate applies.
    pub grace: Duration,
    /// After the grace, at least this many bytes per second on average.
    pub min_rate: u64,
}

impl Pace {
    /// When a body that has delivered `received` bytes since `started`, the
    /// last of them at `last`, is overdue: it must keep its average rate, and
    /// never pause longer than the grace (bytes sent early buy no pause later).
    fn deadline(&self, started: Instant, last: Instant, received: usize) -> Instant {
        let earned = Duration::from_secs_f64(received as f64 / self.min_rate.max(1) as f64);
        (started + self.grace + earned).min(last + self.grace)
    }
}

/// The share of the body budget a received body holds until its request ends.
#[derive(Debug, Default)]
pub(super) struct Held(Option<OwnedSemaphorePermit>);

impl Held {
    fn take(&mut self, budget: &Arc<Semaphore>, bytes: usize) -> Result<(), Problem> {
        if bytes == 0 {
            return Ok(());
        }
        let permit = u32::try_from(bytes)
            .ok()
            .and_then(|n| budget.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "TOO_MANY_UPLOADS",
                    "too many request bytes are being received at once; retry shortly",
                )
                .header(http::header::RETRY_AFTER, 1)
            })?;
        match &mut self.0 {
            Some(held) => held.merge(permit),
            None => self.0 = Some(permit),
        }
        Ok(())
    }
}

/// Reads a request body: 413 beyond `max_append_bytes`, 408 when it arrives
/// slower than the pace allows (or pauses longer than the grace), 503 when the shared budget is spent. The
/// returned share is released when dropped (once the write is done).
pub(super) async fn receive<B>(
    inner: &Inner,
    headers: &HeaderMap,
    body: B,
) -> Result<(Bytes, Held), Problem>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let limit = inner.max_append_bytes;
    let declared = header_str(headers, &CONTENT_LENGTH)?.and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let started = Instant::now();
    let pace = inner.pace;
    let mut held = Held::default();
    let mut body = std::pin::pin!(Limited::new(body, limit));
    let mut received = 0;
    // Most bodies arrive as one data frame: hand that out as is, and only
    // concatenate when there are more.
    let deadline = pace.deadline(started, started, received);
    let Some(first) = next_paced(body.as_mut(), deadline, pace, limit).await? else {
        return Ok((Bytes::new(), held));
    };
    held.take(&inner.body_budget, first.len())?;
    received += first.len();
    let deadline = pace.deadline(started, Instant::now(), received);
    let Some(second) = next_paced(body.as_mut(), deadline, pace, limit).await? else {
        return Ok((first, held));
    };
    held.take(&inner.body_budget, second.len())?;
    received += second.len();
    let mut joined = BytesMut::with_capacity(first.len() + second.len());
    joined.extend_from_slice(&first);
    joined.extend_from_slice(&second);
    loop {
        let deadline = pace.deadline(started, Instant::now(), received);
        let Some(more) = next_paced(body.as_mut(), deadline, pace, limit).await? else {
            break;
        };
        held.take(&inner.body_budget, more.len())?;
        received += more.len();
        joined.extend_from_slice(&more);
    }
    Ok((joined.freeze(), held))
}

fn too_large(limit: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        format!("request body exceeds {limit} bytes"),
    )
}

/// The next data frame, 408 if it is not there by `deadline`.
async fn next_paced<B>(
    body: Pin<&mut Limited<B>>,
    deadline: Instant,
    pace: Pace,
    limit: usize,
) -> Result<Option<Bytes>, Problem>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match tokio::time::timeout_at(deadline, next_data(body)).await {
        Ok(Ok(frame)) => Ok(frame),
        Ok(Err(e)) => {
            // The limit may be ours or a host layer's (tower-http's
            // RequestBodyLimitLayer): look for it anywhere in the chain.
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
            while let Some(error) = cause {
                if error.is::<http_body_util::LengthLimitError>() {
                    return Err(too_large(limit));
                }
                cause = error.source();
            }
            Err(Problem::bad_request(format!(
                "could not read the request body: {e}"
            )))
        }
        Err(_) => Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "BODY_TOO_SLOW",
            format!(
                "the request body arrived slower than {} bytes per second \
                 (after {} ms of grace); nothing was written",
                pace.min_rate,
                pace.grace.as_millis()
            ),
        )
        .header(http::header::CONNECTION, "close")),
    }
}

/// The next data frame of a body; trailers carry nothing to append.
async fn next_data<B>(mut body: Pin<&mut B>) -> Result<Option<Bytes>, B::Error>
where
    B: http_body::Body<Data = Bytes>,
{
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_grows_with_what_arrived() {
        let pace = Pace {
            grace: Duration::from_secs(10),
            min_rate: 1_000,
        };
        let start = Instant::now();
        assert_eq!(
            pace.deadline(start, start, 0),
            start + Duration::from_secs(10)
        );
        let later = start + Duration::from_secs(3);
        assert_eq!(
            pace.deadline(start, later, 5_000),
            start + Duration::from_secs(13),
            "average rate, but no pause longer than the grace"
        );
        let soon = start + Duration::from_secs(1);
        assert_eq!(
            pace.deadline(start, soon, 5_000),
            start + Duration::from_secs(11)
        );
    }

    #[test]
    fn shares_add_up_and_come_back() {
        let budget = Arc::new(Semaphore::new(10));
        let mut held = Held::default();
        held.take(&budget, 4).unwrap();
        held.take(&budget, 6).unwrap();
        assert_eq!(budget.available_permits(), 0);
        let refused = held.take(&budget, 1).unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        assert_eq!(budget.available_permits(), 10);
    }
}
