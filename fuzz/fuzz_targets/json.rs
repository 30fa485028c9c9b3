//! JSON mode: validation and one-level flattening of bodies (`json_to_wire`), the
//! message scanner over stored bytes (`json_prefix_len`), and read framing
//! (`json_read_frame`).
//!
//! Properties, for a body the crate accepts: the stored form is the messages,
//! each followed by `,`; the scanner finds exactly those messages; a read of
//! it, cut into chunks at any message boundaries, is the JSON array of the
//! messages (the body's elements if it was an array, else the body itself);
//! appending that read again stores the same bytes. A body the crate refuses
//! is refused by serde_json too (as a `Value`), and the empty-array rule is the
//! only difference between appends and creates.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::Value;
use tower_durable_streams::__fuzz::{
    json_frame, json_prefix_len, json_wire, EmptyArray, JsonError,
};

fuzz_target!(|input: (bool, u64, &[u8])| {
    let (allow_empty, cuts, body) = input;

    // The scanner is total on arbitrary bytes, and only ever stops after a `,`.
    for count in 0..4u64 {
        match json_prefix_len(body, count) {
            Some(0) => assert_eq!(count, 0),
            Some(len) => {
                assert!(count > 0 && len <= body.len());
                assert_eq!(body[len - 1], b',');
            }
            None => assert!(count > 0),
        }
    }

    let (chosen, other) = if allow_empty {
        (EmptyArray::Allow, EmptyArray::Reject)
    } else {
        (EmptyArray::Reject, EmptyArray::Allow)
    };
    let result = json_wire(body, chosen);
    let other = json_wire(body, other);

    let (wire, count) = match result {
        Err(JsonError::Invalid(_)) => {
            assert!(matches!(other, Err(JsonError::Invalid(_))));
            assert!(
                serde_json::from_slice::<Value>(body).is_err(),
                "refused a body that serde_json accepts"
            );
            return;
        }
        Err(JsonError::EmptyArray) => {
            assert!(!allow_empty);
            assert_eq!(other, Ok((Vec::new(), 0)));
            return;
        }
        Ok((wire, count)) => {
            if count == 0 {
                assert!(allow_empty);
                assert_eq!(other, Err(JsonError::EmptyArray));
            } else {
                assert_eq!(other, Ok((wire.clone(), count)));
            }
            (wire, count)
        }
    };

    // The stored form: messages, each followed by a comma.
    assert_eq!(wire.is_empty(), count == 0);
    if count > 0 {
        assert_eq!(wire.last(), Some(&b','));
    }
    assert!(wire.len() <= body.len() + count);
    assert_eq!(json_prefix_len(&wire, count as u64), Some(wire.len()));
    assert_eq!(json_prefix_len(&wire, count as u64 + 1), None);

    // Walk the messages with the scanner; each is one JSON value, exactly.
    let mut messages: Vec<&[u8]> = Vec::with_capacity(count);
    let mut boundaries = vec![0usize];
    let mut at = 0;
    while at < wire.len() {
        let len = json_prefix_len(&wire[at..], 1).expect("a whole message follows");
        assert!(len >= 2, "an empty message");
        let message = &wire[at..at + len - 1];
        let raw: &RawValue = serde_json::from_slice(message).expect("a message is JSON");
        assert_eq!(raw.get().as_bytes(), message, "a message has stray bytes");
        messages.push(message);
        at += len;
        boundaries.push(at);
    }
    assert_eq!(messages.len(), count);

    // A read of the whole stream, in one chunk.
    let frame = json_frame(&[&wire[..]]);
    let mut expected_frame = b"[".to_vec();
    expected_frame.extend_from_slice(&wire[..wire.len().saturating_sub(1)]);
    expected_frame.push(b']');
    assert_eq!(frame, expected_frame);
    let read: Vec<&RawValue> = serde_json::from_slice(&frame).expect("a read is a JSON array");
    let read: Vec<&[u8]> = read.iter().map(|m| m.get().as_bytes()).collect();
    assert_eq!(read, messages);

    // The same read, as the chunks of several appends (plus empty ones).
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    for (i, &boundary) in boundaries.iter().enumerate().skip(1) {
        if cuts & (1 << (i % 64)) != 0 || boundary == wire.len() {
            chunks.push(&wire[start..boundary]);
            start = boundary;
        }
        if cuts & (1 << ((i + 32) % 64)) != 0 {
            chunks.push(&[]);
        }
    }
    assert_eq!(json_frame(&chunks), frame, "chunking changed the read");

    // The read is what the body meant: its elements if it was an array, else
    // itself (compared as values when serde_json's depth limit allows).
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if let (Ok(body_value), Ok(read_value)) = (
        serde_json::from_slice::<Value>(body),
        serde_json::from_slice::<Value>(&frame),
    ) {
        let expected = if first == Some(&b'[') {
            body_value
        } else {
            Value::Array(vec![body_value])
        };
        assert_eq!(read_value, expected);
    }

    // Appending a read again stores the same bytes.
    assert_eq!(
        json_wire(&frame, EmptyArray::Allow),
        Ok((wire.clone(), count))
    );
});
