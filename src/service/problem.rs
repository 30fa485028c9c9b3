//! `application/problem+json` error responses.

use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};

use super::ResponseBody;
use crate::engine::StreamError;
use crate::protocol::{
    PRODUCER_EPOCH, PRODUCER_EXPECTED_SEQ, PRODUCER_RECEIVED_SEQ, STREAM_CLOSED, STREAM_NEXT_OFFSET,
};

/// A refusal: a status, a stable machine-readable code, a human-readable detail
/// and the protocol headers that go with it.
#[derive(Debug)]
pub(crate) struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Also say the code as `error: {code, message, ...}` with these members
    /// (the subscription APIs' clients read it there).
    #[cfg(feature = "subscriptions")]
    pub nested: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            code,
            detail: detail.into(),
            headers: Vec::new(),
            #[cfg(feature = "subscriptions")]
            nested: None,
        }
    }

    /// Adds the `error` member, with `extra` members beside its code and
    /// message.
    #[cfg(feature = "subscriptions")]
    pub fn nested(mut self, extra: serde_json::Map<String, serde_json::Value>) -> Self {
        self.nested = Some(extra);
        self
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
        #[cfg_attr(not(feature = "subscriptions"), allow(unused_mut))]
        let mut body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        #[cfg(feature = "subscriptions")]
        if let Some(mut error) = self.nested {
            error.insert("code".into(), self.code.into());
            error.insert("message".into(), self.detail.clone().into());
            body["error"] = serde_json::Value::Object(error);
        }
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

impl StreamError {
    /// The HTTP status the service answers this refusal with.
    ///
    /// ```
    /// use tower_durable_streams::StreamError;
    ///
    /// assert_eq!(StreamError::NotFound.status(), 404);
    /// assert_eq!(StreamError::NotFound.code(), "STREAM_NOT_FOUND");
    /// ```
    pub fn status(&self) -> StatusCode {
        self.answer().0
    }

    /// The stable, machine-readable `code` of the service's problem response.
    pub fn code(&self) -> &'static str {
        self.answer().1
    }

    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            StreamError::NotFound => (StatusCode::NOT_FOUND, "STREAM_NOT_FOUND"),
            StreamError::Gone => (StatusCode::GONE, "STREAM_DELETED"),
            StreamError::Reserved => (StatusCode::NOT_FOUND, "RESERVED_PATH"),
            StreamError::Invalid(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            StreamError::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            StreamError::Closed { .. } => (StatusCode::CONFLICT, "STREAM_CLOSED"),
            StreamError::ContentTypeMismatch { .. } => {
                (StatusCode::CONFLICT, "CONTENT_TYPE_MISMATCH")
            }
            StreamError::SeqRegression { .. } => (StatusCode::CONFLICT, "SEQUENCE_CONFLICT"),
            StreamError::StaleEpoch { .. } => (StatusCode::FORBIDDEN, "STALE_PRODUCER_EPOCH"),
            StreamError::NewEpochNotAtZero => (StatusCode::BAD_REQUEST, "INVALID_PRODUCER_SEQ"),
            StreamError::SequenceGap { .. } => (StatusCode::CONFLICT, "PRODUCER_SEQUENCE_GAP"),
            StreamError::StreamTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "STREAM_TOO_LARGE")
            }
            StreamError::Full => (StatusCode::INSUFFICIENT_STORAGE, "STORAGE_FULL"),
            StreamError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "STORAGE_UNAVAILABLE"),
            StreamError::Contended => (StatusCode::SERVICE_UNAVAILABLE, "STREAM_CONTENDED"),
            StreamError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "STORAGE_ERROR"),
        }
    }
}

impl From<StreamError> for Problem {
    fn from(error: StreamError) -> Self {
        let (status, code) = error.answer();
        let problem = match &error {
            StreamError::Storage(e) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(e), "storage failure");
                return Problem::new(
                    status,
                    code,
                    "the storage backend failed; see the server log",
                );
            }
            _ => Problem::new(status, code, error.to_string()),
        };
        match error {
            StreamError::Closed { next_offset } => problem
                .header(STREAM_CLOSED, "true")
                .header(STREAM_NEXT_OFFSET, next_offset),
            StreamError::StaleEpoch { current } => problem.header(PRODUCER_EPOCH, current),
            StreamError::SequenceGap { expected, received } => problem
                .header(PRODUCER_EXPECTED_SEQ, expected)
                .header(PRODUCER_RECEIVED_SEQ, received),
            StreamError::Unavailable(e) => {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "storage unavailable");
                problem.header(http::header::RETRY_AFTER, 1)
            }
            StreamError::Contended => problem.header(http::header::RETRY_AFTER, 1),
            _ => problem,
        }
    }
}
