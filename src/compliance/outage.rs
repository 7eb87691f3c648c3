//! Telling a telemetry outage from devices going silent.
//!
//! Staleness is judged per device, but a device is only silent if warden
//! could have heard it. While the telemetry source is out (the MQTT
//! connection or subscription is down, or far more devices than usual went
//! silent at once: a fleet-wide outage no MDM can tell from device faults),
//! the time does not count towards anyone's `stale_after`: verdicts are
//! *held*, and silence changes no enforcement. After `outage_grace` the
//! configured fail mode applies: `hold` keeps holding, `unknown` counts the
//! time again. Sans-IO: `now` comes in.

use crate::telemetry::UnixMillis;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What applies once an outage has lasted `outage_grace`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Verdicts stay held until the source returns.
    #[default]
    Hold,
    /// Silence counts again: devices silent for `stale_after` become unknown.
    Unknown,
}

/// The outage settings (`[policy]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub grace: Duration,
    pub fail_mode: FailMode,
    /// This share of live devices going silent within `window` is an outage.
    pub silent_fraction: f64,
    pub window: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3600),
            fail_mode: FailMode::Hold,
            silent_fraction: 0.1,
            window: Duration::from_secs(120),
        }
    }
}

/// Below this many live devices, mass silence is not detected: a share of a
/// handful of devices says nothing about the source, and their staleness is
/// applied at once.
pub const MIN_FLEET: usize = 50;
/// Closed outages remembered for discounting silence.
const REMEMBERED: usize = 64;

/// Why the source is out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The MQTT connection or the telemetry subscription is down.
    SourceDown,
    /// Far more devices than usual went silent within the window.
    FleetSilent,
}

impl Cause {
    pub fn label(self) -> &'static str {
        match self {
            Cause::SourceDown => "source_down",
            Cause::FleetSilent => "fleet_silent",
        }
    }
}

/// An outage in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Current {
    pub cause: Cause,
    pub began: Instant,
    pub began_wall: UnixMillis,
    /// `outage_grace` has passed.
    pub expired: bool,
}

/// The outage tracker.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    pub settings: Settings,
    current: Option<Current>,
    /// Closed outages, oldest first.
    past: VecDeque<(Instant, Instant)>,
    /// The wall time the latest outage began: reports produced after it are
    /// accepted late.
    last_began_wall: Option<UnixMillis>,
    /// When recent staleness deadlines fired, for mass-silence detection.
    expiries: VecDeque<Instant>,
}

impl Tracker {
    pub fn new(settings: Settings) -> Self {
        Self { settings, ..Self::default() }
    }

    pub fn current(&self) -> Option<Current> {
        self.current
    }

    /// Is silence held now (an outage whose grace has not ended in `unknown`)?
    pub fn holding(&self) -> bool {
        self.current.is_some_and(|c| !(c.expired && self.settings.fail_mode == FailMode::Unknown))
    }

    pub fn last_began_wall(&self) -> Option<UnixMillis> {
        self.last_began_wall
    }

    /// Begins an outage (or turns a fleet-silence into a source-down one).
    /// True when one began.
    pub fn begin(&mut self, cause: Cause, began: Instant, began_wall: UnixMillis) -> bool {
        match &mut self.current {
            Some(c) => {
                if cause == Cause::SourceDown {
                    c.cause = Cause::SourceDown;
                }
                false
            }
            None => {
                self.current = Some(Current { cause, began, began_wall, expired: false });
                self.last_began_wall = Some(began_wall);
                self.expiries.clear();
                true
            }
        }
    }

    /// Ends the outage in progress at `now`; the outage it was.
    pub fn end(&mut self, now: Instant) -> Option<Current> {
        let c = self.current.take()?;
        // An outage that expired into `unknown` stopped being discounted
        // when its grace ended.
        let until =
            if c.expired && self.settings.fail_mode == FailMode::Unknown { c.began + self.settings.grace } else { now };
        if self.past.len() == REMEMBERED {
            self.past.pop_front();
        }
        self.past.push_back((c.began, until.max(c.began)));
        Some(c)
    }

    /// Marks the outage expired when its grace has passed; true when that
    /// happened now.
    pub fn expire(&mut self, now: Instant) -> bool {
        let grace = self.settings.grace;
        match &mut self.current {
            Some(c) if !c.expired && now.saturating_duration_since(c.began) >= grace => {
                c.expired = true;
                true
            }
            _ => false,
        }
    }

    /// When the outage in progress expires.
    pub fn expires_at(&self) -> Option<Instant> {
        self.current.filter(|c| !c.expired).map(|c| c.began + self.settings.grace)
    }

    /// How long a device last heard at `seen_at` has been silent at `now`,
    /// not counting the time the source was out.
    pub fn silence(&self, seen_at: Instant, now: Instant) -> Duration {
        let raw = now.saturating_duration_since(seen_at);
        let overlap = |from: Instant, to: Instant| to.min(now).saturating_duration_since(from.max(seen_at));
        let mut out: Duration = self.past.iter().map(|(a, b)| overlap(*a, *b)).sum();
        if let Some(c) = self.current {
            let until = if c.expired && self.settings.fail_mode == FailMode::Unknown {
                c.began + self.settings.grace
            } else {
                now
            };
            out += overlap(c.began, until);
        }
        raw.saturating_sub(out)
    }

    /// A staleness deadline fired at `now` with `live` devices holding a
    /// current verdict. When this makes the silence a fleet-wide outage,
    /// the time it began: the first expiry of the window.
    pub fn expiry(&mut self, now: Instant, live: usize) -> Option<Instant> {
        if self.current.is_some() || live + self.expiries.len() < MIN_FLEET {
            self.expiries.clear();
            return None;
        }
        self.expiries.push_back(now);
        while self.expiries.front().is_some_and(|t| now.saturating_duration_since(*t) > self.settings.window) {
            self.expiries.pop_front();
        }
        let threshold = ((live + self.expiries.len()) as f64 * self.settings.silent_fraction).ceil() as usize;
        (self.expiries.len() >= threshold.max(1)).then(|| self.expiries[0])
    }

    /// Is mass-silence detection in force for a fleet of `live` devices
    /// (staleness then waits `window` before it is applied)?
    pub fn detecting(&self, live: usize) -> bool {
        self.current.is_none() && live >= MIN_FLEET
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests seed simulated time from the real clock
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn outage_time_does_not_count_as_silence() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Settings::default());
        assert_eq!(t.silence(t0, t0 + 10 * S), 10 * S);
        assert!(t.begin(Cause::SourceDown, t0 + 4 * S, 4_000));
        assert!(t.holding());
        assert_eq!(t.silence(t0, t0 + 10 * S), 4 * S, "the outage so far is not silence");
        t.end(t0 + 6 * S);
        assert!(!t.holding());
        assert_eq!(t.silence(t0, t0 + 10 * S), 8 * S, "two seconds of outage, discounted");
        assert_eq!(t.silence(t0 + 7 * S, t0 + 10 * S), 3 * S, "heard after it: no discount");
        assert_eq!(t.last_began_wall(), Some(4_000));
    }

    #[test]
    fn grace_then_the_fail_mode() {
        let t0 = Instant::now();
        for (mode, holding_after, silence_after) in [(FailMode::Hold, true, 0), (FailMode::Unknown, false, 5)] {
            let mut t = Tracker::new(Settings { grace: 10 * S, fail_mode: mode, ..Settings::default() });
            t.begin(Cause::SourceDown, t0, 0);
            assert_eq!(t.expires_at(), Some(t0 + 10 * S));
            assert!(!t.expire(t0 + 9 * S));
            assert!(t.expire(t0 + 10 * S));
            assert!(!t.expire(t0 + 11 * S), "once");
            assert_eq!(t.holding(), holding_after, "{mode:?}");
            assert_eq!(t.silence(t0, t0 + 15 * S), silence_after * S, "{mode:?}");
            t.end(t0 + 20 * S);
            assert_eq!(t.silence(t0, t0 + 20 * S), if mode == FailMode::Hold { 0 } else { 10 } * S, "{mode:?}");
        }
    }

    #[test]
    fn mass_silence_is_detected_in_a_large_fleet_only() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Settings { silent_fraction: 0.1, window: 60 * S, ..Settings::default() });
        // 20 devices: too few to tell.
        for i in 0..20 {
            assert_eq!(t.expiry(t0 + i * S, 20 - i as usize), None);
        }
        assert!(!t.detecting(20));
        // 1,000 devices: 100 expiries within a minute is an outage, dated
        // from the first of them.
        let mut hit = None;
        for i in 0..150u32 {
            if let Some(from) = t.expiry(t0 + 100 * S + i * (S / 10), 1000 - i as usize) {
                hit = Some((i, from));
                break;
            }
        }
        let (i, from) = hit.expect("detected");
        assert!((90..=100).contains(&i), "after about 10% of the fleet: {i}");
        assert_eq!(from, t0 + 100 * S);
        // Spread over more than the window, the same count is not one.
        let mut t = Tracker::new(Settings { silent_fraction: 0.1, window: 60 * S, ..Settings::default() });
        for i in 0..150u32 {
            assert_eq!(t.expiry(t0 + i * 2 * S, 1000), None, "one every 2 s: 30 per minute");
        }
    }
}
