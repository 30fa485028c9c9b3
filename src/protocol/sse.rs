//! Server-Sent Events framing for `live=sse` reads.

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

/// How `data` events carry the stream's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseEncoding {
    /// UTF-8 text (`text/*`, `application/json`).
    Text,
    /// Standard base64 (every other content type).
    Base64,
}

/// Encodes one `data` event whose payload is the concatenation of `pieces`.
///
/// Text payloads are split at every line break (`\r\n`, `\r`, `\n`) into separate
/// `data:` lines, so payload bytes can never start a new field or event.
#[cfg_attr(not(any(test, feature = "unstable-bench")), allow(dead_code))]
pub fn data_event(pieces: &[Bytes], encoding: SseEncoding) -> Bytes {
    let size: usize = pieces.iter().map(Bytes::len).sum();
    let mut out = BytesMut::with_capacity(size * 4 / 3 + 32);
    put_data_event(&mut out, pieces, encoding);
    out.freeze()
}

/// Appends a `data` event (as [`data_event`] encodes it) to `out`.
pub(crate) fn put_data_event(out: &mut BytesMut, pieces: &[Bytes], encoding: SseEncoding) {
    out.put_slice(b"event: data\n");
    match encoding {
        SseEncoding::Base64 => {
            out.put_slice(b"data:");
            let engine = &base64::engine::general_purpose::STANDARD;
            let mut put = |bytes: &[u8]| {
                let at = out.len();
                out.resize(at + base64::encoded_len(bytes.len(), true).unwrap_or(0), 0);
                let written = engine.encode_slice(bytes, &mut out[at..]).unwrap_or(0);
                out.truncate(at + written);
            };
            match pieces {
                [one] => put(one),
                many => put(&many.concat()),
            }
            out.put_u8(b'\n');
        }
        SseEncoding::Text => {
            // Split at every line break; a line that starts with a space gets the
            // optional space after `data:` so that readers keep its own space.
            let mut line_start = true;
            let mut previous_cr = false;
            for &b in pieces.iter().flat_map(|p| p.iter()) {
                if b == b'\n' && previous_cr {
                    previous_cr = false;
                    continue;
                }
                previous_cr = b == b'\r';
                if line_start {
                    out.put_slice(if b == b' ' { b"data: " } else { b"data:" });
                    line_start = false;
                }
                if b == b'\n' || b == b'\r' {
                    out.put_u8(b'\n');
                    line_start = true;
                } else {
                    out.put_u8(b);
                }
            }
            if line_start {
                out.put_slice(b"data:");
            }
            out.put_u8(b'\n');
        }
    }
    out.put_u8(b'\n');
}

/// How many bytes at the end of `pieces` form an incomplete UTF-8 sequence, which
/// a text event should hold back until the rest of the character arrives.
pub fn incomplete_utf8_suffix(pieces: &[Bytes]) -> usize {
    let mut tail = [0u8; 4];
    let mut n = 0;
    for &b in pieces.iter().rev().flat_map(|p| p.iter().rev()).take(4) {
        tail[3 - n] = b;
        n += 1;
    }
    let tail = &tail[4 - n..];
    for (back, &b) in tail.iter().rev().enumerate() {
        let have = back + 1;
        let need = match b {
            0x00..=0x7f => return 0,
            0x80..=0xbf => continue,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            _ => 4,
        };
        return if have < need { have } else { 0 };
    }
    0
}

/// The fields of a `control` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control<'a> {
    /// `streamNextOffset`.
    pub next_offset: &'a str,
    /// `streamCursor` (omitted once the stream is closed).
    pub cursor: Option<&'a str>,
    /// `upToDate`.
    pub up_to_date: bool,
    /// `streamClosed`.
    pub closed: bool,
}

/// Encodes one `control` event.
#[cfg_attr(not(any(test, feature = "unstable-bench")), allow(dead_code))]
pub fn control_event(control: &Control<'_>) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    put_control_event(&mut out, control);
    out.freeze()
}

/// Appends a `control` event (as [`control_event`] encodes it) to `out`.
pub(crate) fn put_control_event(out: &mut BytesMut, control: &Control<'_>) {
    out.put_slice(b"event: control\ndata:{\"streamNextOffset\":");
    put_json_string(out, control.next_offset);
    if let Some(cursor) = control.cursor {
        out.put_slice(b",\"streamCursor\":");
        put_json_string(out, cursor);
    }
    if control.up_to_date {
        out.put_slice(b",\"upToDate\":true");
    }
    if control.closed {
        out.put_slice(b",\"streamClosed\":true");
    }
    out.put_slice(b"}\n\n");
}

/// A JSON string literal; offsets and cursors need no escaping, so the common
/// case is a plain copy.
fn put_json_string(out: &mut BytesMut, value: &str) {
    if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.put_u8(b'"');
        out.put_slice(value.as_bytes());
        out.put_u8(b'"');
    } else {
        out.put_slice(serde_json::Value::from(value).to_string().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_line_breaks_never_escape_the_event() {
        let frame = data_event(
            &[Bytes::from_static(b"x\r\nevent: control\rdata: {}\n\n")],
            SseEncoding::Text,
        );
        let text = std::str::from_utf8(&frame).unwrap();
        assert_eq!(
            text,
            "event: data\ndata:x\ndata:event: control\ndata:data: {}\ndata:\ndata:\n\n"
        );
    }

    #[test]
    fn leading_spaces_survive_the_optional_space_rule() {
        let frame = data_event(
            &[Bytes::from_static(b" indented\n  two")],
            SseEncoding::Text,
        );
        assert_eq!(&frame[..], b"event: data\ndata:  indented\ndata:   two\n\n");
    }

    #[test]
    fn base64_of_empty_is_empty() {
        assert_eq!(
            &data_event(&[], SseEncoding::Base64)[..],
            b"event: data\ndata:\n\n"
        );
    }

    #[test]
    fn control_strings_are_escaped_when_needed() {
        let frame = control_event(&Control {
            next_offset: "o",
            cursor: Some("a\"b\\c\n"),
            up_to_date: false,
            closed: false,
        });
        assert_eq!(
            &frame[..],
            &b"event: control\ndata:{\"streamNextOffset\":\"o\",\"streamCursor\":\"a\\\"b\\\\c\\n\"}\n\n"[..]
        );
    }

    #[test]
    fn closed_control_has_no_cursor() {
        let frame = control_event(&Control {
            next_offset: "o",
            cursor: None,
            up_to_date: true,
            closed: true,
        });
        assert_eq!(
            &frame[..],
            &b"event: control\ndata:{\"streamNextOffset\":\"o\",\"upToDate\":true,\"streamClosed\":true}\n\n"[..]
        );
    }
}

#[cfg(test)]
mod examples_as_tests {
    use super::*;

    #[test]
    fn data_events_split_lines_or_use_base64() {
        use bytes::Bytes;

        let frame = data_event(&[Bytes::from_static(b"a\nb")], SseEncoding::Text);
        assert_eq!(&frame[..], b"event: data\ndata:a\ndata:b\n\n");
        let frame = data_event(&[Bytes::from_static(b"Hello")], SseEncoding::Base64);
        assert_eq!(&frame[..], b"event: data\ndata:SGVsbG8=\n\n");
    }

    #[test]
    fn split_characters_are_held_back() {
        use bytes::Bytes;

        let euro = "€".as_bytes(); // three bytes
        assert_eq!(
            incomplete_utf8_suffix(&[
                Bytes::from_static(b"ab"),
                Bytes::copy_from_slice(&euro[..2])
            ]),
            2
        );
        assert_eq!(incomplete_utf8_suffix(&[Bytes::copy_from_slice(euro)]), 0);
        assert_eq!(incomplete_utf8_suffix(&[Bytes::from_static(b"plain")]), 0);
    }

    #[test]
    fn control_events_are_json() {
        let frame = control_event(&Control {
            next_offset: "o",
            cursor: Some("7"),
            up_to_date: true,
            closed: false,
        });
        assert_eq!(&frame[..], &b"event: control\ndata:{\"streamNextOffset\":\"o\",\"streamCursor\":\"7\",\"upToDate\":true}\n\n"[..]);
    }
}
