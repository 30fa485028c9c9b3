//! The read query string (`offset`, `live`, `cursor`) and what reads do with it:
//! `ReadFrom::parse` for `offset`, `CursorClock` for `cursor`.
//!
//! Properties: `parse_query` agrees with a model written from the rules (pairs
//! split at `&`, name at the first `=`, `+` is a space, `%XX` decoded, then
//! UTF-8; unknown names ignored; a known name twice, or not UTF-8 after
//! decoding, is a 400 naming the parameter); percent-encoded values round-trip;
//! a cursor is the current interval, or strictly past a client's cursor that is
//! at or ahead of it.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use tower_durable_streams::__fuzz::{parse_query, CursorClock, QueryParams, ReadFrom};

/// The cursor epoch of the protocol (section 10.1): 2024-10-09T00:00:00Z.
const CURSOR_EPOCH_UNIX_SECS: u64 = 1_728_432_000;

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `+` is a space; `%` and two hex digits is that byte; any other `%` is kept.
fn form_decode(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    out
}

/// The expected parse, or the name of the parameter that makes it a 400.
fn model(query: &str) -> Result<QueryParams, &'static str> {
    let mut parsed = QueryParams::default();
    for pair in query.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match pair.find('=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, ""),
        };
        let (name, slot): (&'static str, _) = match name {
            "offset" => ("offset", &mut parsed.offset),
            "live" => ("live", &mut parsed.live),
            "cursor" => ("cursor", &mut parsed.cursor),
            _ => continue,
        };
        let value = String::from_utf8(form_decode(value)).map_err(|_| name)?;
        if slot.is_some() {
            return Err(name);
        }
        *slot = Some(value);
    }
    Ok(parsed)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(value: &str, space_as_plus: bool, lower_hex: bool) -> String {
    let mut out = String::new();
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else if b == b' ' && space_as_plus {
            out.push('+');
        } else if lower_hex {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fuzz_target!(|input: (
    &str,
    (Option<&str>, Option<&str>, Option<&str>),
    (bool, bool),
    (u64, u64),
)| {
    let (query, (offset, live, cursor), (space_as_plus, lower_hex), (now_secs, interval_secs)) =
        input;

    assert_eq!(parse_query(None), Ok(QueryParams::default()));

    // Arbitrary query strings against the model.
    let parsed = parse_query(Some(query));
    match (&parsed, model(query)) {
        (Ok(got), Ok(expected)) => assert_eq!(got, &expected),
        (Err((status, detail)), Err(name)) => {
            assert_eq!(*status, 400);
            assert!(detail.contains(name), "{detail:?} does not name {name}");
        }
        (got, expected) => panic!("{query:?}: parsed {got:?}, model says {expected:?}"),
    }

    // Encoded values come back as they were, whatever else is in the query.
    let mut pairs = vec!["other=%FF%FE".to_owned(), String::new(), "x".to_owned()];
    for (name, value) in [("cursor", cursor), ("offset", offset), ("live", live)] {
        if let Some(value) = value {
            pairs.push(format!(
                "{name}={}",
                encode(value, space_as_plus, lower_hex)
            ));
        }
    }
    let built = pairs.join("&");
    let expected = QueryParams {
        offset: offset.map(str::to_owned),
        live: live.map(str::to_owned),
        cursor: cursor.map(str::to_owned),
    };
    assert_eq!(parse_query(Some(&built)), Ok(expected), "{built:?}");

    // What a read does with the values: total, and cursors move forward.
    let Ok(params) = parsed else { return };
    if let Some(offset) = params.offset.as_deref() {
        let _ = ReadFrom::parse(offset);
    }
    let Some(now) = UNIX_EPOCH.checked_add(Duration::from_secs(now_secs % (1 << 40))) else {
        return;
    };
    let interval = (interval_secs % 7200).max(1);
    let clock = CursorClock::new(Duration::from_secs(interval));
    let current = clock.cursor_at(now, None);
    assert_eq!(
        current,
        (now_secs % (1 << 40)).saturating_sub(CURSOR_EPOCH_UNIX_SECS) / interval
    );
    let client = params.cursor.as_deref();
    let next = clock.cursor_at(now, client);
    match client.and_then(|c| c.parse::<u64>().ok()) {
        Some(c) if c >= current && c < u64::MAX / 2 => {
            // Pushed past the client's by 1-3600 s of jitter, in whole intervals.
            assert!(next > c, "cursor {next} is not past the client's {c}");
            assert!(
                next - c <= 3600u64.div_ceil(interval),
                "jumped {}",
                next - c
            );
        }
        _ => assert_eq!(next, current),
    }
});
