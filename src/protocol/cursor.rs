//! Cursors for CDN collapsing of live reads (section 10.1 of the protocol).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The cursor epoch: 2024-10-09T00:00:00Z.
pub const CURSOR_EPOCH_UNIX_SECS: u64 = 1_728_432_000;

/// Computes cursors: the number of whole intervals since the cursor epoch, pushed
/// strictly past the client's cursor (with 1-3600 s of jitter) when the client is
/// already at or ahead of the current interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorClock {
    interval: Duration,
}

impl Default for CursorClock {
    fn default() -> Self {
        Self::new(Duration::from_secs(20))
    }
}

impl CursorClock {
    /// A clock with the given interval (at least one second).
    pub fn new(interval: Duration) -> Self {
        Self {
            interval: interval.max(Duration::from_secs(1)),
        }
    }

    /// The cursor to return at `now`, given the client's `cursor` query value.
    pub fn cursor_at(&self, now: SystemTime, client: Option<&str>) -> u64 {
        let since_epoch = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .saturating_sub(CURSOR_EPOCH_UNIX_SECS);
        let interval = self.interval.as_secs();
        let current = since_epoch / interval;
        match client.and_then(|c| c.parse::<u64>().ok()) {
            // Absurdly large client cursors cannot be advanced; start over.
            Some(client) if client >= current && client < u64::MAX / 2 => {
                let jitter_secs = fastrand::u64(1..=3600);
                client.saturating_add(jitter_secs.div_ceil(interval).max(1))
            }
            _ => current,
        }
    }

    /// The cursor to return now.
    pub fn cursor(&self, client: Option<&str>) -> u64 {
        self.cursor_at(SystemTime::now(), client)
    }
}

#[cfg(test)]
mod examples_as_tests {
    use super::*;

    #[test]
    fn cursors_advance_past_the_clients() {
        use std::time::{Duration, UNIX_EPOCH};

        let clock = CursorClock::default();
        let now = UNIX_EPOCH + Duration::from_secs(1_728_432_000 + 200);
        assert_eq!(clock.cursor_at(now, None), 10);
        assert!(clock.cursor_at(now, Some("10")) > 10);
        assert!(clock.cursor_at(now, Some("500")) > 500);
        assert_eq!(clock.cursor_at(now, Some("garbage")), 10);
    }
}
