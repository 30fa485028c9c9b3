//! Content types and JSON mode: validation, one-level flattening, the stored wire
//! form and the read-side array framing.
//!
//! JSON streams are stored as the bytes a reader receives between the brackets:
//! every message followed by a `,`. A read of any message-aligned range is then
//! `[` + bytes without the last `,` + `]`, with no per-message work.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;

/// The content type used when a create request names none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The media type of a `Content-Type` value: lower-cased, parameters dropped.
#[cfg(test)]
pub fn media_type(content_type: &str) -> String {
    essence(content_type).to_ascii_lowercase()
}

/// The media type of a `Content-Type` value as written (case kept, no allocation).
fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// Whether a `Content-Type` value is syntactically a media type (`type/subtype`).
pub fn is_valid_content_type(content_type: &str) -> bool {
    let mut parts = essence(content_type).split('/');
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    matches!((parts.next(), parts.next(), parts.next()), (Some(t), Some(s), None) if token(t) && token(s))
}

/// Whether two content types name the same media type (parameters ignored).
pub fn same_media_type(a: &str, b: &str) -> bool {
    essence(a).eq_ignore_ascii_case(essence(b))
}

/// Whether a content type selects JSON mode.
pub fn is_json(content_type: &str) -> bool {
    essence(content_type).eq_ignore_ascii_case("application/json")
}

/// Whether SSE data events of this content type carry text (else base64).
pub fn is_sse_text(content_type: &str) -> bool {
    let essence = essence(content_type);
    essence
        .get(..5)
        .is_some_and(|t| t.eq_ignore_ascii_case("text/"))
        || essence.eq_ignore_ascii_case("application/json")
}

/// Why a JSON body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The body is not one valid JSON value.
    #[error("body is not valid JSON: {0}")]
    Invalid(String),
    /// An append's top-level array is empty.
    #[error("an append must not be an empty JSON array")]
    EmptyArray,
}

/// What an empty top-level array means for the operation at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyArray {
    /// Refused (appends).
    Reject,
    /// Accepted as "no messages" (creates).
    Allow,
}

/// Validates a JSON-mode body and turns it into stored wire form, flattening one
/// level of a top-level array. Returns the wire bytes and the message count.
pub fn json_to_wire(body: &[u8], empty: EmptyArray) -> Result<(Bytes, usize), JsonError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let messages: Vec<&RawValue> = if first == Some(&b'[') {
        serde_json::from_slice(body).map_err(|e| JsonError::Invalid(e.to_string()))?
    } else {
        vec![serde_json::from_slice(body).map_err(|e| JsonError::Invalid(e.to_string()))?]
    };
    if messages.is_empty() && empty == EmptyArray::Reject {
        return Err(JsonError::EmptyArray);
    }
    let size = messages.iter().map(|m| m.get().len() + 1).sum();
    let mut wire = BytesMut::with_capacity(size);
    for message in &messages {
        wire.put_slice(message.get().as_bytes());
        wire.put_u8(b',');
    }
    Ok((wire.freeze(), messages.len()))
}

/// The byte length of the first `count` messages of stored JSON wire bytes, or
/// `None` if fewer than `count` messages are present.
pub fn json_prefix_len(wire: &[u8], count: u64) -> Option<usize> {
    if count == 0 {
        return Some(0);
    }
    let (mut depth, mut in_string, mut escaped, mut seen) = (0usize, false, false, 0u64);
    for (i, &b) in wire.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                seen += 1;
                if seen == count {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// The response-body pieces of a JSON-mode read: `[`, the stored chunks without
/// the final separator, `]`. No chunk is copied.
pub fn json_read_frame(mut chunks: Vec<Bytes>) -> Vec<Bytes> {
    while chunks.last().is_some_and(Bytes::is_empty) {
        chunks.pop();
    }
    if let Some(last) = chunks.last_mut() {
        if last.last() == Some(&b',') {
            last.truncate(last.len() - 1);
        }
    }
    let mut framed = Vec::with_capacity(chunks.len() + 2);
    framed.push(Bytes::from_static(b"["));
    framed.extend(chunks.into_iter().filter(|c| !c.is_empty()));
    framed.push(Bytes::from_static(b"]"));
    framed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn flattens_exactly_one_level() {
        let (wire, n) = json_to_wire(b"[[[1,2,3]]]", EmptyArray::Reject).unwrap();
        assert_eq!((&wire[..], n), (&b"[[1,2,3]],"[..], 1));
        let (wire, n) = json_to_wire(b"[]", EmptyArray::Allow).unwrap();
        assert_eq!((wire.len(), n), (0, 0));
    }

    #[test]
    fn read_frame_is_a_json_array() {
        let framed = json_read_frame(vec![
            Bytes::from_static(b"1,"),
            Bytes::from_static(b"{\"a\":2},"),
        ]);
        let text: Vec<u8> = framed.concat();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&text).unwrap(),
            serde_json::json!([1, {"a": 2}])
        );
        assert_eq!(json_read_frame(vec![]).concat(), b"[]");
    }

    #[test]
    fn content_type_checks() {
        assert!(is_valid_content_type("text/plain; charset=utf-8"));
        assert!(!is_valid_content_type("textplain"));
        assert!(!is_valid_content_type(""));
        assert!(same_media_type("TEXT/PLAIN", "text/plain"));
        assert!(is_sse_text("text/csv") && is_sse_text("application/json"));
        assert!(!is_sse_text("application/octet-stream"));
    }

    proptest! {
        #[test]
        fn flattening_round_trips(values in proptest::collection::vec(any::<i64>(), 1..20)) {
            let body = serde_json::to_vec(&values).unwrap();
            let (wire, n) = json_to_wire(&body, EmptyArray::Reject).unwrap();
            prop_assert_eq!(n, values.len());
            let read: Vec<u8> = json_read_frame(vec![wire.clone()]).concat();
            let back: Vec<i64> = serde_json::from_slice(&read).unwrap();
            prop_assert_eq!(&back, &values);
            prop_assert_eq!(json_prefix_len(&wire, n as u64), Some(wire.len()));
        }

        #[test]
        fn json_parsing_is_total(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = json_to_wire(&body, EmptyArray::Reject);
            let _ = json_prefix_len(&body, 3);
        }
    }
}

#[cfg(test)]
mod examples_as_tests {
    use super::*;

    #[test]
    fn media_type_drops_parameters_and_case() {
        assert_eq!(
            media_type("Application/JSON; charset=utf-8"),
            "application/json"
        );
    }

    #[test]
    fn json_is_flattened_one_level_into_wire_form() {
        let (wire, n) = json_to_wire(br#"[{"a":1}, [2]]"#, EmptyArray::Reject).unwrap();
        assert_eq!((&wire[..], n), (&br#"{"a":1},[2],"#[..], 2));
        let (wire, n) = json_to_wire(br#"{"a":1}"#, EmptyArray::Reject).unwrap();
        assert_eq!((&wire[..], n), (&br#"{"a":1},"#[..], 1));
        assert!(json_to_wire(b"[]", EmptyArray::Reject).is_err());
        assert!(json_to_wire(b"{ nope }", EmptyArray::Reject).is_err());
    }

    #[test]
    fn json_prefix_counts_whole_messages() {
        let wire = br#"{"a":"x,]"},[1,2],3,"#;
        assert_eq!(json_prefix_len(wire, 0), Some(0));
        assert_eq!(json_prefix_len(wire, 1), Some(12));
        assert_eq!(json_prefix_len(wire, 3), Some(wire.len()));
        assert_eq!(json_prefix_len(wire, 4), None);
    }
}
