//! The idempotent-producer state machine of section 5.2.1, as a pure function.

use crate::storage::ProducerState;

/// What to do with an append carrying `(epoch, seq)` given the producer's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProducerDecision {
    /// Append, then store this state.
    Accept(ProducerState),
    /// Already appended: succeed without writing; `last_seq` is the highest accepted.
    Duplicate {
        /// The highest sequence accepted in the current epoch.
        last_seq: u64,
    },
    /// The epoch is older than the server's (a zombie): 403.
    StaleEpoch {
        /// The server's current epoch.
        current: u64,
    },
    /// A new epoch must start at sequence 0: 400.
    NewEpochNotAtZero,
    /// Sequence numbers were skipped: 409.
    Gap {
        /// The sequence the server expected.
        expected: u64,
        /// The sequence it received.
        received: u64,
    },
}

/// Decides an append from `(epoch, seq)` against the stored `state`.
pub(crate) fn decide(state: Option<ProducerState>, epoch: u64, seq: u64) -> ProducerDecision {
    let accept = ProducerDecision::Accept(ProducerState::new(epoch, seq));
    let Some(state) = state else {
        return if seq == 0 {
            accept
        } else {
            ProducerDecision::Gap {
                expected: 0,
                received: seq,
            }
        };
    };
    if epoch < state.epoch {
        ProducerDecision::StaleEpoch {
            current: state.epoch,
        }
    } else if epoch > state.epoch {
        if seq == 0 {
            accept
        } else {
            ProducerDecision::NewEpochNotAtZero
        }
    } else if seq <= state.last_seq {
        ProducerDecision::Duplicate {
            last_seq: state.last_seq,
        }
    } else if seq == state.last_seq + 1 {
        accept
    } else {
        ProducerDecision::Gap {
            expected: state.last_seq + 1,
            received: seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decisions() {
        let state = ProducerState::new(1, 4);
        assert_eq!(
            decide(Some(state), 1, 5),
            ProducerDecision::Accept(ProducerState::new(1, 5))
        );
        assert_eq!(
            decide(Some(state), 1, 3),
            ProducerDecision::Duplicate { last_seq: 4 }
        );
        assert_eq!(
            decide(Some(state), 0, 9),
            ProducerDecision::StaleEpoch { current: 1 }
        );
        assert_eq!(
            decide(Some(state), 1, 7),
            ProducerDecision::Gap {
                expected: 5,
                received: 7
            }
        );
        assert_eq!(
            decide(Some(state), 2, 1),
            ProducerDecision::NewEpochNotAtZero
        );
        assert_eq!(
            decide(None, 0, 0),
            ProducerDecision::Accept(ProducerState::new(0, 0))
        );
    }

    #[test]
    fn new_producer_must_start_at_zero() {
        assert_eq!(
            decide(None, 0, 3),
            ProducerDecision::Gap {
                expected: 0,
                received: 3
            }
        );
        assert!(matches!(decide(None, 5, 0), ProducerDecision::Accept(_)));
    }

    proptest! {
        /// Replaying any accepted sequence is always a duplicate, never a second write.
        #[test]
        fn retries_never_append_twice(epoch in 0u64..5, n in 1u64..20, retry in 0u64..20) {
            let mut state = None;
            for seq in 0..n {
                match decide(state, epoch, seq) {
                    ProducerDecision::Accept(next) => state = Some(next),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            let retry = retry % n;
            prop_assert_eq!(decide(state, epoch, retry), ProducerDecision::Duplicate { last_seq: n - 1 });
        }
    }
}
