//! One timer per task, moved only when a core's deadline moves. Creating a
//! tokio `Sleep` on every loop iteration registers a timer each time, and on
//! the RADIUS path that alone cost a large part of the throughput
//! (bench/RESULTS.md).

use std::pin::Pin;
use std::time::Instant;

pub struct Timer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
}

impl Timer {
    pub fn new() -> Self {
        Self { sleep: Box::pin(tokio::time::sleep_until(far_future())), armed: None }
    }

    /// Points the timer at `deadline` (none: never fires).
    pub fn arm(&mut self, deadline: Option<Instant>) {
        if deadline != self.armed {
            self.sleep.as_mut().reset(deadline.map_or_else(far_future, Into::into));
            self.armed = deadline;
        }
    }

    /// Resolves when the armed deadline passes, then parks the timer (a fired
    /// `Sleep` stays ready, which would spin the task).
    pub async fn fired(&mut self) {
        self.sleep.as_mut().await;
        self.sleep.as_mut().reset(far_future());
        self.armed = None;
    }
}

impl Default for Timer {
    fn default() -> Self {
        Self::new()
    }
}

/// A day away: an idle timer's deadline.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests seed simulated time from the real clock
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn fires_once_then_parks() {
        let mut t = Timer::new();
        t.arm(Some(Instant::now() + Duration::from_millis(10)));
        tokio::time::timeout(Duration::from_secs(1), t.fired()).await.expect("fires");
        // Parked: it must not fire again until re-armed.
        assert!(tokio::time::timeout(Duration::from_secs(3600), t.fired()).await.is_err());
    }
}
