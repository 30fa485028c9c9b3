//! Thin wrappers that take and return plain values (`&str`, `&[u8]`,
//! integers, `String`, `Vec<u8>`), so the fuzz crate needs neither `bytes`
//! nor `time`, plus re-exports of the protocol helpers that already have
//! such signatures.

use bytes::{Bytes, BytesMut};

use crate::protocol::{self, sse, Control, Offset, SseEncoding};

pub use crate::protocol::{
    etag, etag_matches, is_json, is_sse_text, is_true_flag, is_valid_content_type, json_prefix_len,
    parse_canonical_u64, parse_producer, parse_sub_offset, parse_ttl, same_media_type, CursorClock,
    EmptyArray, HeaderError, JsonError, ProducerHeaders, ReadFrom, MAX_PRODUCER_NUMBER,
};

/// The byte position an offset token names, or `None` if the token is
/// refused (`FromStr for Offset`).
pub fn offset_parse(token: &str) -> Option<u64> {
    token.parse::<Offset>().ok().map(Offset::position)
}

/// The token for byte position `position` (clamped to the largest
/// position), rendered both ways the crate renders it: `Display` (bodies,
/// ETags) and the header fast path `Offset::to_bytes`.
pub fn offset_render(position: u64) -> (String, Vec<u8>) {
    let offset = Offset::new(position);
    (offset.to_string(), offset.to_bytes().to_vec())
}

/// `Stream-Expires-At`: the instant a value names (Unix nanoseconds) and
/// the text a `HEAD` echoes back for it (`format_rfc3339`), or `None` if
/// the value is refused.
pub fn expires_at(value: &str) -> Option<(i128, String)> {
    let at = protocol::parse_expires_at(value).ok()?;
    Some((at.unix_timestamp_nanos(), protocol::format_rfc3339(at)))
}

/// The query parameters a read takes, as `parse_query` returns them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryParams {
    /// `offset`.
    pub offset: Option<String>,
    /// `live`.
    pub live: Option<String>,
    /// `cursor`.
    pub cursor: Option<String>,
}

/// The service's query parser: the three parameters, or the refusal's
/// status code and detail.
pub fn parse_query(query: Option<&str>) -> Result<QueryParams, (u16, String)> {
    crate::service::parse_query(query)
        .map(|q| QueryParams {
            offset: q.offset,
            live: q.live,
            cursor: q.cursor,
        })
        .map_err(|problem| (problem.status.as_u16(), problem.detail))
}

/// JSON mode: a body's stored wire form and message count
/// (`json_to_wire`).
pub fn json_wire(body: &[u8], empty: EmptyArray) -> Result<(Vec<u8>, usize), JsonError> {
    protocol::json_to_wire(body, empty).map(|(wire, count)| (wire.to_vec(), count))
}

/// JSON mode: the response body of a read whose stored chunks are
/// `chunks` (`json_read_frame`, concatenated).
pub fn json_frame(chunks: &[&[u8]]) -> Vec<u8> {
    protocol::json_read_frame(to_bytes(chunks)).concat()
}

/// SSE: the `data` event for `pieces`, as a live read writes it
/// (`put_data_event`); text if `text`, else base64.
pub fn sse_data_event(pieces: &[&[u8]], text: bool) -> Vec<u8> {
    let encoding = if text {
        SseEncoding::Text
    } else {
        SseEncoding::Base64
    };
    let mut out = BytesMut::new();
    sse::put_data_event(&mut out, &to_bytes(pieces), encoding);
    out.to_vec()
}

/// SSE: the `control` event with these fields (`put_control_event`).
pub fn sse_control_event(
    next_offset: &str,
    cursor: Option<&str>,
    up_to_date: bool,
    closed: bool,
) -> Vec<u8> {
    let mut out = BytesMut::new();
    sse::put_control_event(
        &mut out,
        &Control {
            next_offset,
            cursor,
            up_to_date,
            closed,
        },
    );
    out.to_vec()
}

/// SSE: how many trailing bytes of `pieces` a text event holds back
/// (`incomplete_utf8_suffix`).
pub fn sse_incomplete_utf8_suffix(pieces: &[&[u8]]) -> usize {
    protocol::incomplete_utf8_suffix(&to_bytes(pieces))
}

fn to_bytes(pieces: &[&[u8]]) -> Vec<Bytes> {
    pieces.iter().copied().map(Bytes::copy_from_slice).collect()
}
