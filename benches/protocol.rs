//! Micro-benchmarks of the pure protocol helpers on the hot paths.
//!
//! Run with `cargo bench --features unstable-bench --bench protocol` (the
//! helpers are internal; the feature exposes them to this benchmark only).

use bytes::Bytes;
use divan::{black_box, Bencher};
use tower_durable_streams::__bench::{
    control_event, data_event, json_read_frame, json_to_wire, Control, EmptyArray, Offset,
    SseEncoding,
};

fn main() {
    divan::main();
}

#[divan::bench]
fn offset_format() -> String {
    let offset: Offset = "0000000000000000_0000000123456789".parse().expect("valid");
    black_box(offset).to_string()
}

#[divan::bench]
fn offset_parse() -> Offset {
    black_box("0000000000000000_0000000123456789")
        .parse()
        .expect("valid")
}

#[divan::bench(args = [1, 16, 256])]
fn json_flatten(bencher: Bencher, messages: usize) {
    let body = serde_json::to_vec(&vec![serde_json::json!({"event": "x", "n": 42}); messages])
        .expect("json");
    bencher
        .counter(divan::counter::BytesCount::new(body.len()))
        .bench(|| json_to_wire(black_box(&body), EmptyArray::Reject).expect("valid"));
}

#[divan::bench]
fn json_frame_read() -> Vec<Bytes> {
    let chunks = vec![Bytes::from_static(b"{\"a\":1},"); 64];
    json_read_frame(black_box(chunks))
}

#[divan::bench(args = [64, 4096])]
fn sse_text_event(bencher: Bencher, size: usize) {
    let data = vec![Bytes::from(vec![b'x'; size])];
    bencher
        .counter(divan::counter::BytesCount::new(size))
        .bench(|| data_event(black_box(&data), SseEncoding::Text));
}

#[divan::bench(args = [64, 4096])]
fn sse_base64_event(bencher: Bencher, size: usize) {
    let data = vec![Bytes::from(vec![7u8; size])];
    bencher
        .counter(divan::counter::BytesCount::new(size))
        .bench(|| data_event(black_box(&data), SseEncoding::Base64));
}

#[divan::bench]
fn sse_control_event() -> Bytes {
    control_event(black_box(&Control {
        next_offset: "0000000000000000_0000000123456789",
        cursor: Some("3362509"),
        up_to_date: true,
        closed: false,
    }))
}
