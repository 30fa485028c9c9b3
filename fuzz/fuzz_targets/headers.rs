//! Request headers: `Stream-TTL`, `Stream-Fork-Sub-Offset` (canonical integers),
//! `Stream-Expires-At` (RFC 3339), the three `Producer-*` headers,
//! `Stream-Closed`, `Content-Type` and `If-None-Match`.
//!
//! Properties: each parser matches a small model of its grammar; an accepted
//! `Stream-Expires-At` is echoed back (as `HEAD` does) as text that parses to
//! the same instant; content-type predicates are consistent with each other
//! and ignore parameters; ETags match themselves.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_durable_streams::__fuzz::{
    etag, etag_matches, expires_at, is_json, is_sse_text, is_true_flag, is_valid_content_type,
    offset_render, parse_canonical_u64, parse_producer, parse_sub_offset, parse_ttl,
    same_media_type, ProducerHeaders, MAX_PRODUCER_NUMBER,
};
use tower_durable_streams::Offset;

/// 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z in Unix nanoseconds: the
/// range RFC 3339's four-digit years can name in UTC.
const YEAR_0_NANOS: i128 = -62_167_219_200 * 1_000_000_000;
const YEAR_10000_NANOS: i128 = 253_402_300_800 * 1_000_000_000;

/// The grammar: ASCII digits, no sign, no leading zero, fits in a u64.
fn canonical_model(value: &str) -> Option<u64> {
    value.parse::<u64>().ok().filter(|n| n.to_string() == value)
}

fn producer_number_model(value: &str) -> Option<u64> {
    canonical_model(value).filter(|n| *n <= MAX_PRODUCER_NUMBER)
}

fuzz_target!(|input: (
    &str,
    &str,
    (Option<&str>, Option<&str>, Option<&str>),
    u64,
    (&str, &str),
    &str,
    (u64, u64, u64, bool),
)| {
    let (number, timestamp, producer, n, (ct_a, ct_b), if_none_match, (id, start, end, closed)) =
        input;

    // Canonical integers: Stream-TTL and Stream-Fork-Sub-Offset.
    let expected = canonical_model(number);
    assert_eq!(parse_canonical_u64(number), expected);
    assert_eq!(parse_ttl(number).ok(), expected);
    assert_eq!(parse_sub_offset(number).ok(), expected);
    if let Err(error) = parse_ttl(number) {
        assert_eq!(error.header, "Stream-TTL");
    }
    if let Err(error) = parse_sub_offset(number) {
        assert_eq!(error.header, "Stream-Fork-Sub-Offset");
    }
    assert_eq!(parse_canonical_u64(&n.to_string()), Some(n));

    // Producer headers: all or nothing, a non-empty id, numbers up to 2^53-1.
    let (p_id, p_epoch, p_seq) = producer;
    let expected = match producer {
        (None, None, None) => Some(None),
        (Some(id), Some(epoch), Some(seq)) if !id.is_empty() => {
            match (producer_number_model(epoch), producer_number_model(seq)) {
                (Some(epoch), Some(seq)) => Some(Some(ProducerHeaders {
                    id: id.to_owned(),
                    epoch,
                    seq,
                })),
                _ => None,
            }
        }
        _ => None,
    };
    assert_eq!(parse_producer(p_id, p_epoch, p_seq).ok(), expected);
    let epoch = n.to_string();
    assert_eq!(
        parse_producer(Some("p"), Some(&epoch), Some("0")).is_ok(),
        n <= MAX_PRODUCER_NUMBER
    );

    // Stream-Expires-At: what HEAD echoes back names the same instant.
    if let Some((nanos, echoed)) = expires_at(timestamp) {
        if echoed.is_empty() {
            // format_rfc3339 could not write it: only outside years 0-9999 UTC.
            assert!(
                !(YEAR_0_NANOS..YEAR_10000_NANOS).contains(&nanos),
                "{timestamp:?} was accepted but not echoed"
            );
        } else {
            assert!(echoed.ends_with('Z'), "{echoed:?} is not in UTC");
            assert_eq!(
                expires_at(&echoed),
                Some((nanos, echoed.clone())),
                "{timestamp:?} echoed as {echoed:?}"
            );
        }
    }

    // Stream-Closed: only a case-insensitive `true`.
    for value in [number, timestamp, ct_a] {
        if is_true_flag(value.as_bytes()) {
            assert!(value.eq_ignore_ascii_case("true"));
        }
    }

    // Content-Type predicates.
    for ct in [ct_a, ct_b] {
        assert!(same_media_type(ct, ct));
        if is_json(ct) {
            assert!(is_sse_text(ct) && is_valid_content_type(ct));
        }
        let with_parameter = format!("{ct};charset=utf-8");
        assert_eq!(is_json(&with_parameter), is_json(ct));
        assert_eq!(is_sse_text(&with_parameter), is_sse_text(ct));
        assert_eq!(
            is_valid_content_type(&with_parameter),
            is_valid_content_type(ct)
        );
        assert!(same_media_type(&with_parameter, ct));
    }
    let same = same_media_type(ct_a, ct_b);
    assert_eq!(same, same_media_type(ct_b, ct_a));
    if same {
        assert_eq!(is_json(ct_a), is_json(ct_b));
        assert_eq!(is_sse_text(ct_a), is_sse_text(ct_b));
        assert_eq!(is_valid_content_type(ct_a), is_valid_content_type(ct_b));
    }
    if is_json(ct_a) && is_json(ct_b) {
        assert!(same);
    }

    // ETags and If-None-Match.
    let offset = |position: u64| -> Offset { offset_render(position).0.parse().expect("parses") };
    let tag = etag(id, offset(start), offset(end), closed);
    assert_ne!(tag, etag(id, offset(start), offset(end), !closed));
    assert!(etag_matches(&tag, &tag));
    assert!(etag_matches(&format!("W/{tag}"), &tag));
    assert!(etag_matches("*", &tag));
    assert!(etag_matches(&format!("{if_none_match}, {tag}"), &tag));
    if etag_matches(if_none_match, &tag) {
        assert!(if_none_match.contains('*') || if_none_match.contains(tag.as_str()));
    }
});
