//! SSE framing of live reads: `data` events (text and base64), `control` events,
//! and the hold-back of a character split by a read.
//!
//! Properties: a `data` event is `event: data`, then one or more lines that
//! each start with `data:`, then one blank line, with no CR anywhere, so payload
//! bytes can never end the event or start a field; a client that decodes it as
//! the SSE specification says gets the payload back (line breaks as `\n`, or
//! the exact bytes after base64), however the payload was cut into pieces. A
//! `control` event is one `data:` line of JSON with exactly the fields given.
//! The hold-back is the incomplete UTF-8 sequence at the end, if any.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower_durable_streams::__fuzz::{
    sse_control_event, sse_data_event, sse_incomplete_utf8_suffix,
};

/// Every line break (`\r\n`, `\r`, `\n`) as `\n`.
fn normalize_line_breaks(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len());
    let mut i = 0;
    while i < payload.len() {
        if payload[i] == b'\r' {
            out.push(b'\n');
            if payload.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
        } else {
            out.push(payload[i]);
        }
        i += 1;
    }
    out
}

/// Standard base64 with padding; `None` if `text` is not that.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(value))
    }
    if text.len() % 4 != 0 {
        return None;
    }
    let quads = text.len() / 4;
    let mut out = Vec::with_capacity(quads * 3);
    for (i, quad) in text.chunks(4).enumerate() {
        let padding = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && i + 1 != quads) {
            return None;
        }
        let mut bits = 0u32;
        for &c in &quad[..4 - padding] {
            bits = bits << 6 | sextet(c)?;
        }
        bits <<= 6 * padding as u32;
        out.extend_from_slice(&bits.to_be_bytes()[1..4 - padding]);
    }
    Some(out)
}

/// The `data:` lines of an event (without the `event:` line and the blank line
/// that ends it), checking the framing on the way.
fn data_lines<'a>(event: &'a [u8], event_line: &[u8]) -> Vec<&'a [u8]> {
    assert!(event.starts_with(event_line), "no event line");
    assert!(event.ends_with(b"\n\n"), "not ended by a blank line");
    assert!(!event.contains(&b'\r'), "a CR would end a line early");
    // Everything between the event line and the final blank line: data lines,
    // each ended by a line feed.
    let body = &event[event_line.len()..event.len() - 1];
    let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    assert_eq!(lines.pop(), Some(&b""[..]));
    assert!(!lines.is_empty(), "an event without data");
    for line in &lines {
        // Never empty, so no blank line (no end of event) before the last.
        assert!(
            line.starts_with(b"data:"),
            "a line that is not data: {line:?}"
        );
    }
    lines
}

/// The value of a `data:` line: after the colon, less one leading space.
fn field_value(line: &[u8]) -> &[u8] {
    let value = &line[b"data:".len()..];
    value.strip_prefix(b" ").unwrap_or(value)
}

fuzz_target!(
    |input: (Vec<&[u8]>, bool, (&str, Option<&str>, bool, bool))| {
        let (pieces, text, (next_offset, cursor, up_to_date, closed)) = input;
        let payload: Vec<u8> = pieces.concat();

        // Data events.
        let event = sse_data_event(&pieces, text);
        assert_eq!(
            event,
            sse_data_event(&[payload.as_slice()], text),
            "the cut into pieces shows"
        );
        let lines = data_lines(&event, b"event: data\n");
        if text {
            let values: Vec<&[u8]> = lines.iter().map(|line| field_value(line)).collect();
            assert_eq!(values.join(&b'\n'), normalize_line_breaks(&payload));
        } else {
            assert_eq!(lines.len(), 1, "base64 on more than one line");
            let encoded = &lines[0][b"data:".len()..];
            assert_eq!(encoded.len(), 4 * payload.len().div_ceil(3));
            assert_eq!(base64_decode(encoded).as_deref(), Some(payload.as_slice()));
        }

        // Control events.
        let event = sse_control_event(next_offset, cursor, up_to_date, closed);
        let lines = data_lines(&event, b"event: control\n");
        assert_eq!(lines.len(), 1, "control data on more than one line");
        let json: Value =
            serde_json::from_slice(&lines[0][b"data:".len()..]).expect("control is JSON");
        let fields = json.as_object().expect("control is a JSON object");
        assert_eq!(
            fields.get("streamNextOffset").and_then(Value::as_str),
            Some(next_offset)
        );
        assert_eq!(fields.get("streamCursor").and_then(Value::as_str), cursor);
        assert_eq!(
            fields.get("upToDate").and_then(Value::as_bool),
            up_to_date.then_some(true)
        );
        assert_eq!(
            fields.get("streamClosed").and_then(Value::as_bool),
            closed.then_some(true)
        );
        let expected_fields =
            1 + usize::from(cursor.is_some()) + usize::from(up_to_date) + usize::from(closed);
        assert_eq!(fields.len(), expected_fields);

        // Hold-back: exactly the incomplete UTF-8 sequence at the end.
        let held = sse_incomplete_utf8_suffix(&pieces);
        assert!(held <= 3 && held <= payload.len());
        match std::str::from_utf8(&payload) {
            Ok(_) => assert_eq!(held, 0, "held back part of valid text"),
            Err(error) if error.error_len().is_none() => {
                assert_eq!(held, payload.len() - error.valid_up_to());
            }
            Err(_) => {}
        }
    }
);
