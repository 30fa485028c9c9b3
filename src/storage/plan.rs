//! The one rule for which stored bytes a read returns, shared by every backend.

use std::ops::Range;

use super::Cut;

/// What a read takes of one stored piece.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Take {
    /// These bytes of the piece (relative to its start).
    Bytes(Range<usize>),
    /// Nothing: the piece ends before the read's position.
    Skip,
    /// Nothing, and no later piece either: the read is complete.
    Stop,
}

/// Plans a [`Storage::read`](super::Storage::read) over a stream's stored
/// pieces (appends, or parts of them), offered in position order.
///
/// It applies the read's rules once for every backend: start at `from`, stop at
/// `to`, return about `max_bytes` (at least one byte), and with
/// [`Cut::RecordBoundary`] only whole records past the first, but always at
/// least one.
///
/// ```
/// use tower_durable_streams::storage::{Cut, RangePlan, Take};
///
/// // Two appends of 4 bytes at positions 0 and 4; read from 2, at most 3 bytes.
/// let mut plan = RangePlan::new(2, 8, 3, Cut::AnyByte);
/// assert_eq!(plan.take(0, 4), Take::Bytes(2..4));
/// assert_eq!(plan.take(4, 4), Take::Bytes(0..1));
/// assert_eq!(plan.take(8, 4), Take::Stop);
/// assert_eq!(plan.end(), 5);
/// ```
#[derive(Debug, Clone)]
pub struct RangePlan {
    end: u64,
    to: u64,
    budget: usize,
    cut: Cut,
    taken: bool,
}

impl RangePlan {
    /// A read of `from..to` of about `max_bytes`, cut as `cut` allows.
    pub fn new(from: u64, to: u64, max_bytes: usize, cut: Cut) -> Self {
        RangePlan {
            end: from,
            to,
            budget: max_bytes.max(1),
            cut,
            taken: false,
        }
    }

    /// Offers the piece of `len` bytes at position `start`; pieces come in
    /// position order, starting with the one that holds the read's position.
    pub fn take(&mut self, start: u64, len: u64) -> Take {
        if self.done() {
            return Take::Stop;
        }
        let piece_end = start.saturating_add(len);
        if piece_end <= self.end {
            return Take::Skip;
        }
        if start > self.end {
            // A hole: the stored pieces do not cover the read's position.
            return Take::Stop;
        }
        let lo = self.end - start;
        let mut hi = piece_end.min(self.to) - start;
        let budget = self.budget as u64;
        match self.cut {
            Cut::AnyByte => hi = hi.min(lo.saturating_add(budget)),
            _ if self.taken && hi - lo > budget => {
                self.budget = 0;
                return Take::Stop;
            }
            _ => {}
        }
        self.end = start + hi;
        self.budget = self.budget.saturating_sub((hi - lo) as usize);
        self.taken = true;
        Take::Bytes(lo as usize..hi as usize)
    }

    /// Whether the read has all it will take.
    pub fn done(&self) -> bool {
        self.end >= self.to || self.budget == 0
    }

    /// The position after the last byte taken so far.
    pub fn end(&self) -> u64 {
        self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[(u64, u64)], from: u64, to: u64, max: usize, cut: Cut) -> (Vec<Take>, u64) {
        let mut plan = RangePlan::new(from, to, max, cut);
        let mut takes = Vec::new();
        for &(start, len) in pieces {
            let take = plan.take(start, len);
            let stop = take == Take::Stop;
            takes.push(take);
            if stop {
                break;
            }
        }
        (takes, plan.end())
    }

    #[test]
    fn any_byte_reads_cut_at_the_budget() {
        let pieces = [(0, 4), (4, 4)];
        let (takes, end) = run(&pieces, 0, 8, 6, Cut::AnyByte);
        assert_eq!(takes, [Take::Bytes(0..4), Take::Bytes(0..2)]);
        assert_eq!(end, 6);
    }

    #[test]
    fn record_reads_keep_whole_records_but_at_least_one() {
        let pieces = [(0, 4), (4, 4)];
        let (takes, end) = run(&pieces, 0, 8, 6, Cut::RecordBoundary);
        assert_eq!(takes, [Take::Bytes(0..4), Take::Stop]);
        assert_eq!(end, 4);
        let (takes, end) = run(&pieces, 0, 8, 1, Cut::RecordBoundary);
        assert_eq!(takes, [Take::Bytes(0..4), Take::Stop]);
        assert_eq!(end, 4);
        // From the middle of a record: its rest counts as one.
        let (takes, end) = run(&pieces, 2, 8, 1, Cut::RecordBoundary);
        assert_eq!(takes, [Take::Bytes(2..4), Take::Stop]);
        assert_eq!(end, 4);
    }

    #[test]
    fn reads_stop_at_to_and_skip_earlier_pieces() {
        let pieces = [(0, 4), (4, 4), (8, 4)];
        let (takes, end) = run(&pieces, 5, 10, usize::MAX, Cut::AnyByte);
        assert_eq!(takes, [Take::Skip, Take::Bytes(1..4), Take::Bytes(0..2)]);
        assert_eq!(end, 10);
    }

    #[test]
    fn a_hole_stops_the_read() {
        let (takes, end) = run(&[(4, 4)], 0, 8, 100, Cut::AnyByte);
        assert_eq!(takes, [Take::Stop]);
        assert_eq!(end, 0);
    }
}
