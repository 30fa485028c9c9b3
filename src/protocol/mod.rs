//! Pure, I/O-free pieces of the protocol: header names and parsers, offsets,
//! cursors, ETags, JSON mode and SSE framing.
//!
//! Every parser here is total: bad input is an error value, never a panic.

mod content;
mod cursor;
mod headers;
mod offset;
pub(crate) mod sse;

pub use content::{
    is_json, is_sse_text, is_valid_content_type, json_prefix_len, json_read_frame, json_to_wire,
    same_media_type, EmptyArray, JsonError, DEFAULT_CONTENT_TYPE,
};
pub use cursor::CursorClock;
pub use headers::*;
pub use offset::{Offset, OffsetParseError, ReadFrom};
#[cfg(feature = "unstable-bench")]
pub use sse::{control_event, data_event};
pub use sse::{incomplete_utf8_suffix, Control, SseEncoding};

/// The entity tag of a read: `"{stream id}:{start}:{end}"`, with `:c` appended
/// once the stream is closed, so closure changes the tag.
pub fn etag(stream_id: u64, start: Offset, end: Offset, closed: bool) -> String {
    let suffix = if closed { ":c" } else { "" };
    format!("\"{stream_id}:{start}:{end}{suffix}\"")
}

/// Whether an `If-None-Match` value matches `tag` (weak comparison).
pub fn etag_matches(if_none_match: &str, tag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag
    })
}

#[cfg(test)]
mod examples_as_tests {
    use super::*;

    #[test]
    fn etags_change_with_range_and_closure() {
        let tag = etag(7, Offset::new(0), Offset::new(5), false);
        assert_eq!(
            tag,
            "\"7:0000000000000000_0000000000000000:0000000000000000_0000000000000005\""
        );
        assert_ne!(tag, etag(7, Offset::new(0), Offset::new(5), true));
        assert!(etag_matches(&format!("W/{tag}, \"other\""), &tag));
        assert!(etag_matches("*", &tag));
        assert!(!etag_matches("\"other\"", &tag));
    }
}
