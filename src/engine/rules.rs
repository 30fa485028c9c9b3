//! The protocol's rules on names, content types and expiry, checked once here
//! for every caller (HTTP and in-process).

use std::fmt;

use percent_encoding::percent_decode_str;
use time::OffsetDateTime;

use super::StreamError;
use crate::protocol::{is_valid_content_type, ProducerHeaders, MAX_PRODUCER_NUMBER};
use crate::storage::Expiry;

/// Longest stream path accepted, in bytes.
pub(crate) const MAX_PATH_LEN: usize = 1024;

/// A stream's path below the service's mount point, checked: starts with `/`,
/// non-empty segments, percent-encoding where a URL needs it, no `.` or `..`
/// segments, not under `__ds`.
///
/// Each stream has exactly one spelling: an escape that RFC 3986 calls
/// equivalent to another spelling (`%7E` for `~`, `%7e` for `%7E`) is refused,
/// not aliased, so a host that guards URL prefixes sees every URL that can
/// reach a stream.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key(String);

impl Key {
    /// Checks `path` and brings it into canonical form.
    pub(crate) fn parse(path: &str) -> Result<Key, StreamError> {
        if path.len() > MAX_PATH_LEN {
            return Err(StreamError::invalid(format!(
                "stream path is longer than {MAX_PATH_LEN} bytes"
            )));
        }
        let Some(rest) = path.strip_prefix('/').filter(|r| !r.is_empty()) else {
            return Err(StreamError::NotFound);
        };
        if let Some(c) = path.chars().find(|&c| !is_path_char(c)) {
            return Err(StreamError::invalid(format!(
                "stream path contains {c:?}: percent-encode it"
            )));
        }
        for (i, segment) in rest.split('/').enumerate() {
            let decoded = percent_decode_str(segment)
                .decode_utf8()
                .map_err(|_| StreamError::invalid("stream path is not valid UTF-8"))?;
            if decoded.is_empty() {
                return Err(StreamError::invalid("stream path has an empty segment"));
            }
            if decoded == "." || decoded == ".." {
                return Err(StreamError::invalid(
                    "stream path must not contain . or .. segments",
                ));
            }
            if decoded.chars().any(char::is_control) || decoded.contains('/') {
                return Err(StreamError::invalid(
                    "stream path segments must not contain control characters or encoded slashes",
                ));
            }
            if i == 0 && decoded == "__ds" {
                return Err(StreamError::Reserved);
            }
        }
        let canonical = canonical(path);
        if canonical != path {
            return Err(StreamError::invalid(format!(
                "stream path {path:?} spells a character in a second way; write it as \
                 {canonical:?} (unreserved characters unescaped, escapes in upper-case hex)"
            )));
        }
        Ok(Key(canonical))
    }

    /// The path as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// A key that is known to be canonical already (one read back from storage).
    pub(crate) fn trusted(path: String) -> Key {
        Key(path)
    }
}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Key {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Characters a path may carry as they are: visible ASCII but `?` and `#`.
fn is_path_char(c: char) -> bool {
    c.is_ascii_graphic() && c != '?' && c != '#'
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes escaped unreserved characters and upper-cases the other escapes.
fn canonical(path: &str) -> String {
    if !path.contains('%') {
        return path.to_owned();
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escape {
            Some(b) if is_unreserved(b) => out.push(char::from(b)),
            Some(b) => out.push_str(&format!("%{b:02X}")),
            None => out.push(char::from(bytes[i])),
        }
        i += if escape.is_some() { 3 } else { 1 };
    }
    out
}

/// A create's or append's `Content-Type`, checked.
pub(crate) fn check_content_type(content_type: &str) -> Result<(), StreamError> {
    if is_valid_content_type(content_type) {
        Ok(())
    } else {
        Err(StreamError::invalid(format!(
            "Content-Type {content_type:?} is not a valid media type"
        )))
    }
}

/// An idempotent producer's request, checked: a non-empty id and numbers
/// that JavaScript clients can hold.
pub(crate) fn check_producer(producer: &ProducerHeaders) -> Result<(), StreamError> {
    if producer.id.is_empty() {
        return Err(StreamError::invalid("Producer-Id must not be empty"));
    }
    if producer.epoch > MAX_PRODUCER_NUMBER || producer.seq > MAX_PRODUCER_NUMBER {
        return Err(StreamError::invalid(
            "Producer-Epoch and Producer-Seq must be no larger than 2^53-1",
        ));
    }
    Ok(())
}

/// The longest sliding TTL, about 136 years: every backend can store it and
/// add it to an instant.
pub(crate) const MAX_TTL_SECS: u64 = u32::MAX as u64;

/// A new stream's expiry, checked: an absolute one must lie in the future.
pub(crate) fn check_expiry(expiry: Expiry) -> Result<(), StreamError> {
    match expiry {
        Expiry::Ttl(secs) if secs > MAX_TTL_SECS => Err(StreamError::invalid(format!(
            "Stream-TTL is longer than {MAX_TTL_SECS} seconds"
        ))),
        Expiry::At(at) if at <= OffsetDateTime::now_utc() => {
            Err(StreamError::invalid("Stream-Expires-At is in the past"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stream_has_one_spelling() {
        assert_eq!(Key::parse("/a/b").unwrap().as_str(), "/a/b");
        assert_eq!(Key::parse("/a~A").unwrap().as_str(), "/a~A");
        for second_spelling in ["/a%7E", "/%41", "/a%2a", "/a%c3%a9"] {
            let refused = Key::parse(second_spelling).unwrap_err().to_string();
            assert!(
                refused.contains("second way"),
                "{second_spelling}: {refused}"
            );
        }
        assert_eq!(
            Key::parse("/a%2fb%20c").unwrap_err().to_string(),
            "stream path segments must not contain control characters or encoded slashes"
        );
        assert_eq!(Key::parse("/a%20c%C3%A9").unwrap().as_str(), "/a%20c%C3%A9");
        assert_eq!(Key::parse("/v1/stream/x").unwrap().as_str(), "/v1/stream/x");
        assert_eq!(Key::parse("/a/__ds").unwrap().as_str(), "/a/__ds");
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in [
            "/",
            "",
            "a",
            "/a//b",
            "/a/../b",
            "/a/%2e%2e/b",
            "/a/%2Fb",
            "/a/%00",
            "/a/",
            "/a b",
            "/a?b",
            "/é",
        ] {
            assert!(Key::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Key::parse("/__ds/subscriptions/x"),
            Err(StreamError::Reserved)
        ));
        assert!(Key::parse("/%5F_ds/x").is_err());
        assert!(Key::parse(&format!("/{}", "a".repeat(MAX_PATH_LEN))).is_err());
    }

    #[test]
    fn absolute_expiry_must_be_in_the_future() {
        let past = OffsetDateTime::now_utc() - time::Duration::seconds(1);
        let future = OffsetDateTime::now_utc() + time::Duration::hours(1);
        assert!(check_expiry(Expiry::At(past)).is_err());
        assert!(check_expiry(Expiry::At(future)).is_ok());
        assert!(check_expiry(Expiry::Ttl(0)).is_ok());
    }
}
