//! Offsets: opaque, fixed-width, lexicographically ordered position tokens.
//!
//! An offset is rendered as two zero-padded 16-digit decimal fields separated by
//! `_`, for example `0000000000000000_0000000000000042`. The first field is a
//! reserved segment number (always zero today); the second is the byte position
//! in the stream's logical byte space (forks share their source's space). Because
//! both fields have a fixed width, byte-wise string comparison orders offsets the
//! same way their positions are ordered. The rendering never produces the
//! sentinels `-1` or `now`.

use std::fmt;

/// Largest position an offset can name (16 decimal digits).
pub const MAX_POSITION: u64 = 9_999_999_999_999_999;

/// Length of an offset token in bytes.
pub const OFFSET_LEN: usize = 33;

/// A position in a stream, as handed to clients in `Stream-Next-Offset`:
/// opaque, fixed-width text that sorts as the positions do.
///
/// ```
/// use tower_durable_streams::Offset;
///
/// let start = Offset::START;
/// assert_eq!(start.to_string(), "0000000000000000_0000000000000000");
/// let later: Offset = "0000000000000000_0000000000000042".parse().unwrap();
/// assert!(later > start);
/// assert!("-1".parse::<Offset>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(u64);

impl Offset {
    /// The start of every stream.
    pub const START: Offset = Offset(0);

    /// An offset at byte position `position`.
    ///
    /// Positions above [`MAX_POSITION`] are clamped; no stream can grow that large.
    pub(crate) const fn new(position: u64) -> Self {
        if position > MAX_POSITION {
            Offset(MAX_POSITION)
        } else {
            Offset(position)
        }
    }

    /// The byte position this offset names.
    pub(crate) const fn position(self) -> u64 {
        self.0
    }

    /// The token's bytes, written without formatting machinery (it is in the
    /// headers of nearly every response).
    pub(crate) fn to_bytes(self) -> [u8; OFFSET_LEN] {
        let mut out = [b'0'; OFFSET_LEN];
        out[16] = b'_';
        let mut value = self.0;
        let mut at = OFFSET_LEN;
        while value > 0 {
            at -= 1;
            out[at] = b'0' + (value % 10) as u8;
            value /= 10;
        }
        out
    }
}

/// Why a string is not a valid offset token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed offset: expected 16 digits, '_' and 16 digits")]
pub struct OffsetParseError;

impl std::str::FromStr for Offset {
    type Err = OffsetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != OFFSET_LEN || bytes[16] != b'_' {
            return Err(OffsetParseError);
        }
        let (segment, position) = (&bytes[..16], &bytes[17..]);
        if !segment.iter().chain(position).all(u8::is_ascii_digit) {
            return Err(OffsetParseError);
        }
        // Only segment zero exists today; anything else was not minted here.
        if segment.iter().any(|&b| b != b'0') {
            return Err(OffsetParseError);
        }
        let value = position
            .iter()
            .fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0'));
        Ok(Offset(value))
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        // The buffer holds ASCII digits and '_' only.
        f.write_str(std::str::from_utf8(&bytes).unwrap_or_default())
    }
}

/// Where a read starts, as given by the `offset` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// `-1` or no offset: the beginning of the stream.
    Start,
    /// `now`: the current tail.
    Now,
    /// A concrete offset previously returned by the server.
    At(Offset),
}

impl ReadFrom {
    /// Parses the value of an `offset` query parameter.
    pub fn parse(value: &str) -> Result<Self, OffsetParseError> {
        match value {
            "-1" => Ok(ReadFrom::Start),
            "now" => Ok(ReadFrom::Now),
            other => other.parse().map(ReadFrom::At),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn renders_fixed_width() {
        assert_eq!(
            Offset::START.to_string(),
            "0000000000000000_0000000000000000"
        );
        assert_eq!(Offset::new(MAX_POSITION).to_string().len(), OFFSET_LEN);
    }

    #[test]
    fn rejects_malformed_tokens() {
        for bad in [
            "",
            "0",
            "-1",
            "now",
            "0000000000000000-0000000000000000",
            "0000000000000000_000000000000000a",
            "0000000000000001_0000000000000000",
            "0000000000000000_00000000000000000",
            " 000000000000000_0000000000000000",
            "0000000000000000_0000000000000000\n",
        ] {
            assert!(bad.parse::<Offset>().is_err(), "{bad:?} parsed");
        }
    }

    proptest! {
        #[test]
        fn order_of_tokens_matches_order_of_positions(a in 0..=MAX_POSITION, b in 0..=MAX_POSITION) {
            let (ta, tb) = (Offset::new(a).to_string(), Offset::new(b).to_string());
            prop_assert_eq!(ta.cmp(&tb), a.cmp(&b));
        }

        #[test]
        fn fast_encoding_matches_formatting(a in 0..=MAX_POSITION) {
            prop_assert_eq!(Offset::new(a).to_string(), format!("{:016}_{:016}", 0, a));
        }

        #[test]
        fn round_trips(a in 0..=MAX_POSITION) {
            prop_assert_eq!(Offset::new(a).to_string().parse::<Offset>(), Ok(Offset::new(a)));
        }

        #[test]
        fn parsing_is_total(s in ".*") {
            let _ = ReadFrom::parse(&s);
        }
    }
}
