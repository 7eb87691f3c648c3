//! When a scheduled report is due: `daily HH:MM` or `weekly DAY HH:MM`
//! (UTC; DAY is mon..sun). Pure: times in, times out.

use crate::telemetry::UnixMillis;

use super::DAY;

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// None: every day; Some(0..7): that weekday (0 = Monday).
    weekday: Option<i64>,
    /// Milliseconds after midnight UTC.
    at: UnixMillis,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("schedule {text:?}: write \"daily 06:00\" or \"weekly mon 06:00\" (UTC)");
        let words: Vec<&str> = text.split_whitespace().collect();
        let (weekday, time) = match words.as_slice() {
            ["daily", time] => (None, *time),
            ["weekly", day, time] => {
                let day = day.to_ascii_lowercase();
                let i = WEEKDAYS.iter().position(|d| *d == day).ok_or_else(bad)?;
                (Some(i as i64), *time)
            }
            _ => return Err(bad()),
        };
        let (h, m) = time.split_once(':').ok_or_else(bad)?;
        let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if !(0..24).contains(&h) || !(0..60).contains(&m) {
            return Err(bad());
        }
        Ok(Self { weekday, at: (h * 60 + m) * 60_000 })
    }

    /// The first due time strictly after `t`.
    pub fn next_after(&self, t: UnixMillis) -> UnixMillis {
        let day = t.div_euclid(DAY);
        (0..=7).map(|i| (day + i) * DAY + self.at).find(|&c| c > t && self.on(c)).unwrap_or(t + 7 * DAY)
    }

    /// The last due time at or before `t`.
    pub fn last_at_or_before(&self, t: UnixMillis) -> UnixMillis {
        let day = t.div_euclid(DAY);
        (0..=7).map(|i| (day - i) * DAY + self.at).find(|&c| c <= t && self.on(c)).unwrap_or(t - 7 * DAY)
    }

    fn on(&self, t: UnixMillis) -> bool {
        // 1970-01-01 was a Thursday (3 with Monday = 0).
        self.weekday.is_none_or(|w| (t.div_euclid(DAY) + 3).rem_euclid(7) == w)
    }
}

/// Which scheduled report is due when (sans-IO: the shell passes `now`).
///
/// Level-triggered from the start: a report whose latest due time is not
/// yet written (warden was down then) is due at once.
#[derive(Debug)]
pub struct Scheduler {
    schedules: Vec<Schedule>,
    due: Vec<UnixMillis>,
}

impl Scheduler {
    /// `written[i]`: the latest due time of report `i` already written.
    pub fn new(schedules: Vec<Schedule>, written: &[UnixMillis], now: UnixMillis) -> Self {
        let due = schedules
            .iter()
            .zip(written.iter().copied().chain(std::iter::repeat(UnixMillis::MIN)))
            .map(|(s, w)| {
                let last = s.last_at_or_before(now);
                if w < last { last } else { s.next_after(now) }
            })
            .collect();
        Self { schedules, due }
    }

    /// When the next report falls due.
    pub fn poll_timeout(&self) -> Option<UnixMillis> {
        self.due.iter().min().copied()
    }

    /// A report due at or before `now`, with the due time its window ends
    /// at; it moves on to its next due time after `now` (a report missed
    /// several times is written once, for the latest).
    pub fn poll_due(&mut self, now: UnixMillis) -> Option<(usize, UnixMillis)> {
        let (i, at) = self.due.iter().copied().enumerate().filter(|(_, at)| *at <= now).min_by_key(|(_, at)| *at)?;
        let latest = self.schedules[i].last_at_or_before(now).max(at);
        self.due[i] = self.schedules[i].next_after(now);
        Some((i, latest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::report::{format_rfc3339 as fmt, parse_rfc3339 as at};

    #[test]
    fn daily_and_weekly() {
        let daily = Schedule::parse("daily 06:00").unwrap();
        // 2026-12-02 is a Wednesday.
        assert_eq!(fmt(daily.next_after(at("2026-12-02T05:59:00Z").unwrap())), "2026-12-02T06:00:00Z");
        assert_eq!(fmt(daily.next_after(at("2026-12-02T06:00:00Z").unwrap())), "2026-12-03T06:00:00Z");
        assert_eq!(fmt(daily.last_at_or_before(at("2026-12-02T06:00:00Z").unwrap())), "2026-12-02T06:00:00Z");
        assert_eq!(fmt(daily.last_at_or_before(at("2026-12-02T05:00:00Z").unwrap())), "2026-12-01T06:00:00Z");
        let weekly = Schedule::parse("weekly Mon 06:30").unwrap();
        assert_eq!(fmt(weekly.next_after(at("2026-12-02T12:00:00Z").unwrap())), "2026-12-07T06:30:00Z");
        assert_eq!(fmt(weekly.next_after(at("2026-12-07T06:30:00Z").unwrap())), "2026-12-14T06:30:00Z");
        assert_eq!(fmt(weekly.last_at_or_before(at("2026-12-07T06:29:00Z").unwrap())), "2026-11-30T06:30:00Z");
        let sunday = Schedule::parse("weekly sun 23:59").unwrap();
        assert_eq!(fmt(sunday.next_after(at("2026-12-06T23:59:00Z").unwrap())), "2026-12-13T23:59:00Z");
    }

    #[test]
    fn bad_schedules_say_how_to_write_one() {
        for bad in ["hourly", "daily", "daily 24:00", "daily 6", "weekly 06:00", "weekly xyz 06:00", "daily 06:61"] {
            assert!(Schedule::parse(bad).unwrap_err().contains("daily 06:00"), "{bad}");
        }
    }

    /// A week in simulated time: the missed report at start, then each
    /// one at its time, nothing in between.
    #[test]
    fn a_schedule_fires_in_simulated_time() {
        let weekly = Schedule::parse("weekly mon 06:00").unwrap();
        let daily = Schedule::parse("daily 06:00").unwrap();
        // Wednesday noon; the weekly report of Monday was never written, the
        // daily one of this morning was.
        let now = at("2026-12-02T12:00:00Z").unwrap();
        let mut s = Scheduler::new(vec![weekly, daily], &[UnixMillis::MIN, at("2026-12-02T06:00:00Z").unwrap()], now);
        assert_eq!(s.poll_due(now), Some((0, at("2026-11-30T06:00:00Z").unwrap())), "the missed Monday, at once");
        assert_eq!(s.poll_due(now), None);
        let mut fired = Vec::new();
        let mut clock = now;
        while let Some(next) = s.poll_timeout() {
            if next > at("2026-12-08T00:00:00Z").unwrap() {
                break;
            }
            clock = next;
            while let Some((i, due)) = s.poll_due(clock) {
                fired.push(format!("{i} {}", fmt(due)));
            }
        }
        assert_eq!(
            fired,
            [
                "1 2026-12-03T06:00:00Z",
                "1 2026-12-04T06:00:00Z",
                "1 2026-12-05T06:00:00Z",
                "1 2026-12-06T06:00:00Z",
                "0 2026-12-07T06:00:00Z",
                "1 2026-12-07T06:00:00Z",
            ]
        );
        // Asleep for three days: each report once, for its latest due time.
        let late = at("2026-12-10T09:00:00Z").unwrap();
        assert_eq!(s.poll_due(late), Some((1, at("2026-12-10T06:00:00Z").unwrap())));
        assert_eq!(s.poll_due(late), None);
        assert!(clock < late);
    }
}
