//! Header names of the protocol and total parsers for their values.

use http::HeaderName;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `Stream-Next-Offset`: the offset to read from next.
pub const STREAM_NEXT_OFFSET: HeaderName = HeaderName::from_static("stream-next-offset");
/// `Stream-Up-To-Date`: the response reached the tail.
pub const STREAM_UP_TO_DATE: HeaderName = HeaderName::from_static("stream-up-to-date");
/// `Stream-Closed`: the stream is closed (request: close it).
pub const STREAM_CLOSED: HeaderName = HeaderName::from_static("stream-closed");
/// `Stream-Cursor`: the CDN-collapsing cursor of live reads.
pub const STREAM_CURSOR: HeaderName = HeaderName::from_static("stream-cursor");
/// `Stream-Seq`: the writer's lexicographic sequence token.
pub const STREAM_SEQ: HeaderName = HeaderName::from_static("stream-seq");
/// `Stream-TTL`: sliding time-to-live in seconds.
pub const STREAM_TTL: HeaderName = HeaderName::from_static("stream-ttl");
/// `Stream-Expires-At`: absolute expiry as RFC 3339.
pub const STREAM_EXPIRES_AT: HeaderName = HeaderName::from_static("stream-expires-at");
/// `Stream-Forked-From`: the source path of a fork.
pub const STREAM_FORKED_FROM: HeaderName = HeaderName::from_static("stream-forked-from");
/// `Stream-Fork-Offset`: where a fork diverges from its source.
pub const STREAM_FORK_OFFSET: HeaderName = HeaderName::from_static("stream-fork-offset");
/// `Stream-Fork-Sub-Offset`: bytes or JSON messages past the fork offset.
pub const STREAM_FORK_SUB_OFFSET: HeaderName = HeaderName::from_static("stream-fork-sub-offset");
/// `Stream-SSE-Data-Encoding`: `base64` for binary streams read over SSE.
pub const STREAM_SSE_DATA_ENCODING: HeaderName =
    HeaderName::from_static("stream-sse-data-encoding");
/// `Producer-Id`: the idempotent producer's identifier.
pub const PRODUCER_ID: HeaderName = HeaderName::from_static("producer-id");
/// `Producer-Epoch`: the idempotent producer's epoch.
pub const PRODUCER_EPOCH: HeaderName = HeaderName::from_static("producer-epoch");
/// `Producer-Seq`: the idempotent producer's per-epoch sequence number.
pub const PRODUCER_SEQ: HeaderName = HeaderName::from_static("producer-seq");
/// `Producer-Expected-Seq`: the sequence the server expected (409 gap).
pub const PRODUCER_EXPECTED_SEQ: HeaderName = HeaderName::from_static("producer-expected-seq");
/// `Producer-Received-Seq`: the sequence the server received (409 gap).
pub const PRODUCER_RECEIVED_SEQ: HeaderName = HeaderName::from_static("producer-received-seq");

/// Every request header a browser client of the protocol sends; hosts list these
/// in their CORS `allow_headers`.
pub const REQUEST_HEADERS: [HeaderName; 13] = [
    http::header::CONTENT_TYPE,
    http::header::IF_NONE_MATCH,
    http::header::AUTHORIZATION,
    STREAM_CLOSED,
    STREAM_SEQ,
    STREAM_TTL,
    STREAM_EXPIRES_AT,
    STREAM_FORKED_FROM,
    STREAM_FORK_OFFSET,
    STREAM_FORK_SUB_OFFSET,
    PRODUCER_ID,
    PRODUCER_EPOCH,
    PRODUCER_SEQ,
];

/// Every response header a browser client needs to read; hosts list these in
/// their CORS `expose_headers`.
pub const RESPONSE_HEADERS: [HeaderName; 15] = [
    http::header::ETAG,
    http::header::LOCATION,
    STREAM_NEXT_OFFSET,
    STREAM_UP_TO_DATE,
    STREAM_CLOSED,
    STREAM_CURSOR,
    STREAM_TTL,
    STREAM_EXPIRES_AT,
    STREAM_SSE_DATA_ENCODING,
    PRODUCER_ID,
    PRODUCER_EPOCH,
    PRODUCER_SEQ,
    PRODUCER_EXPECTED_SEQ,
    PRODUCER_RECEIVED_SEQ,
    STREAM_SEQ,
];

/// The largest producer epoch or sequence number (2^53 - 1, for JavaScript clients).
pub const MAX_PRODUCER_NUMBER: u64 = (1 << 53) - 1;

/// A header value that does not follow the protocol's grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {header} header: {reason}")]
pub struct HeaderError {
    /// The header's name.
    pub header: &'static str,
    /// What is wrong with its value.
    pub reason: &'static str,
}

impl HeaderError {
    const fn new(header: &'static str, reason: &'static str) -> Self {
        Self { header, reason }
    }
}

/// Parses a canonical non-negative decimal integer: no sign, no leading zeros,
/// no fraction, no exponent.
pub fn parse_canonical_u64(value: &str) -> Option<u64> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if bytes.len() > 1 && bytes[0] == b'0' {
        return None;
    }
    value.parse().ok()
}

/// Parses `Stream-TTL` (seconds).
pub fn parse_ttl(value: &str) -> Result<u64, HeaderError> {
    parse_canonical_u64(value).ok_or(HeaderError::new(
        "Stream-TTL",
        "expected a non-negative integer number of seconds without sign or leading zeros",
    ))
}

/// Parses `Stream-Expires-At` (RFC 3339), as a UTC time: a time that has no
/// UTC form within years 1 to 9999 (`9999-12-31T23:59:59-01:00`) is refused,
/// since it could be neither stored nor echoed back.
pub fn parse_expires_at(value: &str) -> Result<OffsetDateTime, HeaderError> {
    OffsetDateTime::parse(value, &Rfc3339)
        .ok()
        .and_then(|at| at.checked_to_offset(time::UtcOffset::UTC))
        .ok_or(HeaderError::new(
            "Stream-Expires-At",
            "expected an RFC 3339 timestamp between years 1 and 9999 in UTC",
        ))
}

/// Renders a timestamp as RFC 3339 in UTC.
pub fn format_rfc3339(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Whether a `Stream-Closed` value means "closed": exactly `true`, ignoring case.
/// Any other value counts as absent.
pub fn is_true_flag(value: &[u8]) -> bool {
    value.eq_ignore_ascii_case(b"true")
}

/// Parses `Stream-Fork-Sub-Offset`.
pub fn parse_sub_offset(value: &str) -> Result<u64, HeaderError> {
    parse_canonical_u64(value).ok_or(HeaderError::new(
        "Stream-Fork-Sub-Offset",
        "expected a non-negative integer without sign or leading zeros",
    ))
}

/// The three idempotent-producer headers of one append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerHeaders {
    /// `Producer-Id`.
    pub id: String,
    /// `Producer-Epoch`.
    pub epoch: u64,
    /// `Producer-Seq`.
    pub seq: u64,
}

/// Parses the producer headers, which come all together or not at all.
pub fn parse_producer(
    id: Option<&str>,
    epoch: Option<&str>,
    seq: Option<&str>,
) -> Result<Option<ProducerHeaders>, HeaderError> {
    let (id, epoch, seq) = match (id, epoch, seq) {
        (None, None, None) => return Ok(None),
        (Some(id), Some(epoch), Some(seq)) => (id, epoch, seq),
        _ => {
            return Err(HeaderError::new(
                "Producer-Id/Producer-Epoch/Producer-Seq",
                "the three producer headers must be sent together",
            ))
        }
    };
    if id.is_empty() {
        return Err(HeaderError::new("Producer-Id", "must not be empty"));
    }
    let number = |header: &'static str, value: &str| {
        parse_canonical_u64(value)
            .filter(|n| *n <= MAX_PRODUCER_NUMBER)
            .ok_or(HeaderError::new(
                header,
                "expected a non-negative integer no larger than 2^53-1",
            ))
    };
    Ok(Some(ProducerHeaders {
        id: id.to_owned(),
        epoch: number("Producer-Epoch", epoch)?,
        seq: number("Producer-Seq", seq)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_grammar() {
        assert_eq!(parse_ttl("3600"), Ok(3600));
        for bad in [
            "abc",
            "-1",
            "00060",
            "+60",
            "60.5",
            "1e3",
            "",
            "99999999999999999999999",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expires_at_grammar() {
        assert!(parse_expires_at("2030-01-01T00:00:00Z").is_ok());
        assert!(parse_expires_at("2030-01-01T00:00:00.123Z").is_ok());
        assert!(parse_expires_at("2030-01-01T00:00:00+00:00").is_ok());
        assert!(parse_expires_at("not-a-timestamp").is_err());
        assert!(parse_expires_at("2030-01-01").is_err());
        // Found by the headers fuzz target: year 10000 in UTC cannot be echoed.
        assert!(parse_expires_at("9999-12-31T23:59:59-01:00").is_err());
        assert_eq!(
            format_rfc3339(parse_expires_at("9999-12-31T23:59:59+01:00").unwrap()),
            "9999-12-31T22:59:59Z"
        );
    }

    #[test]
    fn closed_flag_is_exactly_true() {
        assert!(is_true_flag(b"true"));
        assert!(is_true_flag(b"TRUE"));
        for other in [&b"false"[..], b"1", b"yes", b""] {
            assert!(!is_true_flag(other));
        }
    }

    #[test]
    fn producer_numbers_are_bounded() {
        assert!(parse_producer(Some("p"), Some("9007199254740991"), Some("0")).is_ok());
        assert!(parse_producer(Some("p"), Some("9007199254740992"), Some("0")).is_err());
        assert!(parse_producer(Some("p"), Some("-1"), Some("0")).is_err());
        assert!(parse_producer(Some("p"), Some("0"), Some("1abc")).is_err());
    }
}

#[cfg(test)]
mod examples_as_tests {
    use super::*;

    #[test]
    fn canonical_integers_only() {
        assert_eq!(parse_canonical_u64("3600"), Some(3600));
        assert_eq!(parse_canonical_u64("0"), Some(0));
        for bad in ["", "+1", "-1", "01", "1.0", "1e3", " 1"] {
            assert_eq!(parse_canonical_u64(bad), None);
        }
    }

    #[test]
    fn producer_headers_come_together() {
        assert_eq!(parse_producer(None, None, None), Ok(None));
        let p = parse_producer(Some("p1"), Some("0"), Some("3"))
            .unwrap()
            .unwrap();
        assert_eq!((p.id.as_str(), p.epoch, p.seq), ("p1", 0, 3));
        assert!(parse_producer(Some("p1"), None, Some("0")).is_err());
        assert!(parse_producer(Some(""), Some("0"), Some("0")).is_err());
        assert!(parse_producer(Some("p1"), Some("1e3"), Some("0")).is_err());
    }
}
