//! Offsets: parsing arbitrary tokens and the `offset` query value, and rendering
//! arbitrary positions.
//!
//! Properties: a token that parses renders back to exactly itself (the format
//! has one spelling per position); every rendering parses back to its
//! (clamped) position; the header fast path and `Display` agree; byte order of
//! tokens is the order of positions; `ReadFrom` accepts exactly `-1`, `now` and
//! valid tokens.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_durable_streams::__fuzz::{offset_parse, offset_render, ReadFrom};
use tower_durable_streams::Offset;

/// Sixteen decimal digits.
const MAX_POSITION: u64 = 9_999_999_999_999_999;

fuzz_target!(|input: (&str, u64, u64)| {
    let (token, a, b) = input;

    // Clamping: the largest renderable position is the 16-digit maximum.
    assert_eq!(offset_parse(&offset_render(u64::MAX).0), Some(MAX_POSITION));

    // Parsing an arbitrary token.
    let parsed = offset_parse(token);
    if let Some(position) = parsed {
        assert!(position <= MAX_POSITION);
        assert_eq!(
            offset_render(position).0,
            token,
            "not the canonical spelling"
        );
    }
    assert_eq!(token.parse::<Offset>().is_ok(), parsed.is_some());
    match ReadFrom::parse(token) {
        Ok(ReadFrom::Start) => assert_eq!(token, "-1"),
        Ok(ReadFrom::Now) => assert_eq!(token, "now"),
        Ok(ReadFrom::At(offset)) => {
            assert!(parsed.is_some());
            assert_eq!(offset.to_string(), token);
        }
        Err(_) => assert!(parsed.is_none() && token != "-1" && token != "now"),
    }

    // Rendering arbitrary positions.
    for n in [a, b] {
        let (text, bytes) = offset_render(n);
        assert_eq!(text.as_bytes(), &bytes[..], "to_bytes and Display disagree");
        assert_eq!(text, format!("{:016}_{:016}", 0, n.min(MAX_POSITION)));
        assert_eq!(offset_parse(&text), Some(n.min(MAX_POSITION)));
        assert!(text != "-1" && text != "now");
    }

    // Token order is position order, and `Ord for Offset` agrees.
    let (ta, tb) = (offset_render(a).0, offset_render(b).0);
    assert_eq!(ta.cmp(&tb), a.min(MAX_POSITION).cmp(&b.min(MAX_POSITION)));
    let oa: Offset = ta.parse().expect("a rendering parses");
    let ob: Offset = tb.parse().expect("a rendering parses");
    assert_eq!(oa.cmp(&ob), ta.cmp(&tb));
    assert_eq!(oa == ob, ta == tb);
});
