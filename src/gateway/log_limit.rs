//! Rate-limited logging of refusals caused by network input (telemetry,
//! broker clients): what a peer can repeat at will must not fill the log.

// A shell helper: it starts its window on the real clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

/// At most 20 log lines per 10 s: a flood of bad input is counted in full
/// in metrics, not written in full to the log.
pub(crate) struct LogLimiter {
    window: Instant,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub(crate) fn new() -> Self {
        Self { window: Instant::now(), used: 0, suppressed: 0 }
    }

    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(10) {
            self.window = now;
            self.used = 0;
        }
        self.used += 1;
        if self.used <= 20 {
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    pub(crate) fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}
