//! The writer side of the compliance table, as a sans-IO state machine.
//!
//! Drive it: feed one input (`handle_telemetry`, `handle_policies`,
//! `handle_timeout`), drain `poll_event` until it returns `None`, then sleep
//! until `poll_timeout` or the next input. It reads no clock: every input
//! carries `now` (monotonic, for deadlines) and `wall` (Unix milliseconds,
//! for timestamps people read and for `ts` checks).

use super::device::{Device, Enforce, Verdict};
use super::identity::{self, Bound, Conflict};
use super::table::Table;
use crate::policy::{Failure, Policy, PolicySet, decide};
use crate::telemetry::{Refusal, Report, UnixMillis};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a verdict changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A telemetry report arrived.
    Telemetry,
    /// No report for `stale_after`.
    Stale,
    /// The policies changed.
    PolicyReload,
    /// A grace period ended.
    GraceExpired,
}

impl Cause {
    pub fn label(self) -> &'static str {
        match self {
            Cause::Telemetry => "telemetry",
            Cause::Stale => "inactive",
            Cause::PolicyReload => "policy_reload",
            Cause::GraceExpired => "grace_expired",
        }
    }
}

/// A change of a device's verdict, failed rules or enforcement: what every
/// enforcement plane subscribes to.
#[derive(Clone, Debug)]
pub struct Change {
    pub device: Arc<str>,
    pub old: Verdict,
    pub new: Verdict,
    pub failures: Vec<Failure>,
    pub enforce: Enforce,
    pub cause: Cause,
    /// When the input that caused it arrived (monotonic): planes measure
    /// their enforcement latency from here.
    pub at: Instant,
    /// The same moment on the wall clock.
    pub wall: UnixMillis,
}

/// The one writer of the [`Table`].
pub struct Engine {
    table: Table,
    policies: PolicySet,
    stale_after: Duration,
    /// (deadline, device): staleness or the end of a grace period.
    deadlines: BTreeSet<(Instant, Arc<str>)>,
    events: VecDeque<Change>,
    /// Identity claims refused, for the shell to count and log.
    conflicts: VecDeque<Conflict>,
    /// The built-in policy of the `identity-conflict` rule.
    identity_policy: Arc<Policy>,
    counts: [usize; 3],
    interner: super::intern::Interner,
    /// Bumped by every write to the table: a snapshot is only worth writing
    /// when it moved.
    generation: u64,
}

impl Engine {
    pub fn new(table: Table, policies: PolicySet, stale_after: Duration) -> Self {
        Self {
            table,
            policies,
            stale_after,
            deadlines: BTreeSet::new(),
            events: VecDeque::new(),
            conflicts: VecDeque::new(),
            identity_policy: identity::policy(),
            counts: [0; 3],
            interner: Default::default(),
            generation: 0,
        }
    }

    /// The read handle this engine writes to.
    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// Changes with every write to the table.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Devices by verdict, indexed by [`Verdict`] order.
    pub fn counts(&self) -> [usize; 3] {
        self.counts
    }

    /// Applies one parsed report from device `id` that arrived at `now`.
    /// A report whose `seq` is not above the last accepted one changes nothing.
    pub fn handle_telemetry(
        &mut self,
        id: &str,
        mut report: Report,
        now: Instant,
        wall: UnixMillis,
    ) -> Result<(), Refusal> {
        let old = self.table.get(id);
        if let Some(old) = &old
            && report.seq <= old.report.seq
        {
            return Err(Refusal::Replay { seq: report.seq, last: old.report.seq });
        }
        let id: Arc<str> = old.as_ref().map_or_else(|| id.into(), |d| Arc::clone(&d.id));
        self.interner.report(&mut report);
        let (bound, conflicts) = identity::claims(&id, &report, &self.table);
        let failures = self.failures_of(&report, &conflicts, wall);
        let mut device = Device::reported(id, report, now, wall);
        self.conflicts.extend(conflicts.iter().cloned());
        device.conflicts = conflicts;
        self.settle(&mut device, old.as_deref(), failures, now, wall);
        self.store(device, old.as_deref(), Cause::Telemetry, now, wall, Some(&bound));
        Ok(())
    }

    /// The failures of `report` under the policies in force, and the
    /// built-in `identity-conflict` when it claimed another device's identity.
    fn failures_of(&self, report: &Report, conflicts: &[Conflict], wall: UnixMillis) -> Vec<Failure> {
        let mut failures = decide(&self.policies, report, wall).failures;
        if !conflicts.is_empty() {
            failures.push(identity::failure(&self.identity_policy, conflicts, wall));
        }
        failures
    }

    /// The next refused identity claim, if any.
    pub fn poll_conflict(&mut self) -> Option<Conflict> {
        self.conflicts.pop_front()
    }

    /// Puts a new policy set in force and re-evaluates every device that has
    /// a current report (stale devices stay unknown until they report).
    pub fn handle_policies(&mut self, policies: PolicySet, now: Instant, wall: UnixMillis) {
        self.policies = policies;
        for id in self.table.sorted_ids() {
            let Some(old) = self.table.get(&id) else {
                continue;
            };
            if old.verdict == Verdict::Unknown {
                continue;
            }
            let mut device = (*old).clone();
            let failures = self.failures_of(&device.report, &device.conflicts, wall);
            self.settle(&mut device, Some(&old), failures, now, wall);
            self.store(device, Some(&old), Cause::PolicyReload, now, wall, None);
        }
    }

    /// Expires stale devices and ends grace periods due by `now`.
    pub fn handle_timeout(&mut self, now: Instant, wall: UnixMillis) {
        while let Some((at, _)) = self.deadlines.first()
            && *at <= now
        {
            let Some((_, id)) = self.deadlines.pop_first() else {
                break;
            };
            let Some(old) = self.table.get(&id) else {
                continue;
            };
            let mut device = (*old).clone();
            device.deadline = None;
            if now.saturating_duration_since(device.seen_at) >= self.stale_after {
                device.verdict = Verdict::Unknown;
                device.failures = Vec::new();
                device.enforce = Enforce::default();
                device.since = wall;
                self.store(device, Some(&old), Cause::Stale, now, wall, None);
            } else {
                let failures = std::mem::take(&mut device.failures);
                self.settle(&mut device, Some(&old), failures, now, wall);
                self.store(device, Some(&old), Cause::GraceExpired, now, wall, None);
            }
        }
    }

    /// Puts a device restored from a snapshot back, without an event: the
    /// planes have not started yet. `age` is how long ago (wall clock) its
    /// last report arrived; a device older than `stale_after` comes back unknown.
    pub fn restore(
        &mut self,
        id: &str,
        mut report: Report,
        last_seen: UnixMillis,
        prior: &[(String, UnixMillis)],
        now: Instant,
        wall: UnixMillis,
    ) {
        let age = Duration::from_millis(u64::try_from(wall.saturating_sub(last_seen)).unwrap_or(0));
        let seen_at = now.checked_sub(age).unwrap_or(now);
        self.interner.report(&mut report);
        let id: Arc<str> = id.into();
        let mut device = Device::reported(Arc::clone(&id), report, seen_at, last_seen);
        device.since = wall;
        let (bound, conflicts) = identity::claims(&id, &device.report, &self.table);
        device.conflicts = conflicts;
        if age < self.stale_after {
            let mut failures = self.failures_of(&device.report, &device.conflicts, wall);
            for f in &mut failures {
                if let Some((_, since)) = prior.iter().find(|(k, _)| *k == f.key()) {
                    f.since = *since;
                }
            }
            self.settle(&mut device, None, failures, now, wall);
        }
        let old = self.table.get(&id);
        self.store(device, old.as_deref(), Cause::Telemetry, now, wall, Some(&bound));
        self.events.clear();
        self.conflicts.clear();
    }

    /// The next verdict change, if any.
    pub fn poll_event(&mut self) -> Option<Change> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Fills in verdict, failures (keeping when each started failing),
    /// enforcement and the next deadline.
    fn settle(
        &self,
        device: &mut Device,
        old: Option<&Device>,
        mut failures: Vec<Failure>,
        now: Instant,
        wall: UnixMillis,
    ) {
        if let Some(old) = old {
            for f in &mut failures {
                if let Some(prev) = old.failures.iter().find(|p| p.same_rule(f)) {
                    f.since = prev.since;
                }
            }
        }
        let (enforce, grace_end) = Enforce::of(&failures, wall);
        device.verdict = if failures.is_empty() { Verdict::Compliant } else { Verdict::Noncompliant };
        device.failures = failures;
        device.enforce = enforce;
        device.since = match old {
            Some(old) if old.verdict == device.verdict => old.since,
            _ => wall,
        };
        let stale_at = device.seen_at + self.stale_after;
        let grace_at = grace_end.map(|end| now + Duration::from_millis(u64::try_from(end - wall).unwrap_or(0)));
        device.deadline = Some(grace_at.map_or(stale_at, |g| g.min(stale_at)));
    }

    /// Writes `device` to the table, keeps the deadline set and the counts
    /// in step, and queues a [`Change`] if anything a plane acts on changed.
    fn store(
        &mut self,
        device: Device,
        old: Option<&Device>,
        cause: Cause,
        now: Instant,
        wall: UnixMillis,
        bound: Option<&Bound>,
    ) {
        if let Some(old) = old {
            if let Some(at) = old.deadline {
                self.deadlines.remove(&(at, Arc::clone(&old.id)));
            }
            self.counts[old.verdict.index()] -= 1;
        }
        if let Some(at) = device.deadline {
            self.deadlines.insert((at, Arc::clone(&device.id)));
        }
        self.counts[device.verdict.index()] += 1;
        let old_verdict = old.map_or(Verdict::Unknown, |o| o.verdict);
        let changed = match old {
            None => true,
            Some(o) => {
                o.verdict != device.verdict
                    || o.enforce != device.enforce
                    || o.failures.len() != device.failures.len()
                    || o.failures.iter().zip(&device.failures).any(|(a, b)| !a.same_rule(b))
            }
        };
        if changed {
            self.events.push_back(Change {
                device: Arc::clone(&device.id),
                old: old_verdict,
                new: device.verdict,
                failures: device.failures.clone(),
                enforce: device.enforce,
                cause,
                at: now,
                wall,
            });
        }
        self.generation += 1;
        let device = Arc::new(device);
        match bound {
            Some(bound) => self.table.put(device, old, bound),
            None => self.table.replace(device),
        }
    }
}
