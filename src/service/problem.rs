//! `application/problem+json` error responses.

use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};

use super::ResponseBody;
use crate::engine::EngineError;
use crate::protocol::{
    Offset, PRODUCER_EPOCH, PRODUCER_EXPECTED_SEQ, PRODUCER_RECEIVED_SEQ, STREAM_CLOSED,
    STREAM_NEXT_OFFSET,
};

/// A refusal: a status, a stable machine-readable code, a human-readable detail
/// and the protocol headers that go with it.
#[derive(Debug)]
pub(crate) struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            code,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", detail)
    }

    pub fn header(mut self, name: HeaderName, value: impl ToString) -> Self {
        if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
            self.headers.push((name, value));
        }
        self
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        let mut response = Response::new(ResponseBody::from(body.to_string()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

impl Problem {
    /// The answer to a refused authorization.
    pub fn refused(refusal: crate::auth::Refusal) -> Self {
        let code = if refusal.status() == StatusCode::UNAUTHORIZED {
            "UNAUTHORIZED"
        } else {
            "FORBIDDEN"
        };
        let mut problem = Problem::new(refusal.status(), code, refusal.detail());
        if let Some(challenge) = refusal.challenge() {
            problem = problem.header(http::header::WWW_AUTHENTICATE, challenge);
        }
        problem
    }
}

impl From<EngineError> for Problem {
    fn from(error: EngineError) -> Self {
        let detail = error.to_string();
        match error {
            EngineError::NotFound => {
                Problem::new(StatusCode::NOT_FOUND, "STREAM_NOT_FOUND", detail)
            }
            EngineError::Gone => Problem::new(StatusCode::GONE, "STREAM_DELETED", detail),
            EngineError::BadRequest(_) => Problem::bad_request(detail),
            EngineError::Conflict(_) => Problem::new(StatusCode::CONFLICT, "CONFLICT", detail),
            EngineError::Closed { tail } => {
                Problem::new(StatusCode::CONFLICT, "STREAM_CLOSED", detail)
                    .header(STREAM_CLOSED, "true")
                    .header(STREAM_NEXT_OFFSET, Offset::new(tail))
            }
            EngineError::ContentTypeMismatch { .. } => {
                Problem::new(StatusCode::CONFLICT, "CONTENT_TYPE_MISMATCH", detail)
            }
            EngineError::SeqRegression { .. } => {
                Problem::new(StatusCode::CONFLICT, "SEQUENCE_CONFLICT", detail)
            }
            EngineError::StaleEpoch { current } => {
                Problem::new(StatusCode::FORBIDDEN, "STALE_PRODUCER_EPOCH", detail)
                    .header(PRODUCER_EPOCH, current)
            }
            EngineError::NewEpochNotAtZero => {
                Problem::new(StatusCode::BAD_REQUEST, "INVALID_PRODUCER_SEQ", detail)
            }
            EngineError::SequenceGap { expected, received } => {
                Problem::new(StatusCode::CONFLICT, "PRODUCER_SEQUENCE_GAP", detail)
                    .header(PRODUCER_EXPECTED_SEQ, expected)
                    .header(PRODUCER_RECEIVED_SEQ, received)
            }
            EngineError::StreamTooLarge { .. } => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "STREAM_TOO_LARGE", detail)
            }
            EngineError::Full => {
                Problem::new(StatusCode::INSUFFICIENT_STORAGE, "STORAGE_FULL", detail)
            }
            EngineError::Storage(e) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "storage failure");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "STORAGE_ERROR",
                    "the storage backend failed; see the server log",
                )
            }
        }
    }
}
