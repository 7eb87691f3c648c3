//! The writer side of the compliance table, as a sans-IO state machine.
//!
//! Drive it: feed one input (`handle_telemetry`, `handle_policies`,
//! `handle_source`, `confirm`, `handle_timeout`), then drain `poll_event`,
//! `poll_conflict`, `poll_outage`, `poll_breaker` and `poll_forgotten` until
//! each returns `None` (and `take_seq_gaps`), then sleep until `poll_timeout`
//! or the next input. It reads no clock: every input carries `now`
//! (monotonic, for deadlines) and `wall` (Unix milliseconds, for timestamps
//! people read and for `ts` checks).
//!
//! Longer than most files here because every input shares the same private
//! state (the deadline set, the held devices, the held batch); the pure
//! parts live beside it (`access`, `identity`, `outage`).

use super::device::{Device, Enforce, Verdict};
use super::identity::{self, Bound, Conflict};
use super::intern::Interner;
use super::judge::{Judge, Restorer, Settled};
use super::outage;
use super::overrides::Override;
use super::table::Table;
use crate::policy::{Failure, PolicySet, decide};
use crate::telemetry::{Refusal, Report, UnixMillis};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
    /// An administrator set or cleared an override.
    Override,
    /// An override reached its expiry.
    OverrideExpired,
    /// Not a change: the current verdict, published again at start for
    /// the status topic (a broker may have lost it, or warden may have
    /// stopped before publishing it).
    Restart,
    /// A remediation plan began, ended or escalated (its groups may change).
    Remediation,
}

impl Cause {
    pub fn label(self) -> &'static str {
        match self {
            Cause::Telemetry => "telemetry",
            Cause::Stale => "inactive",
            Cause::PolicyReload => "policy_reload",
            Cause::GraceExpired => "grace_expired",
            Cause::Override => "override",
            Cause::OverrideExpired => "override_expired",
            Cause::Restart => "restart",
            Cause::Remediation => "remediation",
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
    /// The dynamic groups it is in now (bits of `group_set`).
    pub groups: u64,
    pub group_set: Arc<crate::policy::Groups>,
}

impl Change {
    /// The names of the groups the device is in now.
    pub fn group_names(&self) -> Vec<&str> {
        self.group_set.names(self.groups).collect()
    }
}

/// The one writer of the [`Table`].
pub struct Engine {
    table: Table,
    /// The policies, `stale_after` and `forget_after`.
    judge: Judge,
    /// (deadline, slot) → device: staleness or the end of a grace period.
    /// Keyed by the device's slot, not its id: at 1,000,000 devices with
    /// many equal deadlines (a restore), id compares were a fifth of the
    /// restart (bench/RESULTS.md).
    deadlines: BTreeMap<(Instant, u64), Arc<str>>,
    /// The next device slot.
    next_slot: u64,
    /// (expiry, device): overrides, apart from the staleness deadlines;
    /// and each device's entry in it, to remove it exactly.
    override_expiries: BTreeSet<(Instant, Arc<str>)>,
    override_at: std::collections::HashMap<Arc<str>, Instant, foldhash::fast::RandomState>,
    /// Overrides that ended by themselves, for the audit trail.
    expired_overrides: VecDeque<(Arc<str>, Arc<crate::compliance::overrides::Override>)>,
    events: VecDeque<Change>,
    /// Identity claims refused, for the shell to count and log.
    conflicts: VecDeque<Conflict>,
    counts: [usize; 3],
    interner: super::intern::Interner,
    /// Bumped by every write to the table: a snapshot is only worth writing
    /// when it moved.
    generation: u64,
    /// Whether warden can hear its devices at all.
    outage: outage::Tracker,
    outage_events: VecDeque<OutageEvent>,
    /// Devices whose verdict is held while the source is out.
    parked: BTreeMap<u64, Arc<str>>,
    /// The most devices held at once in the outage in progress.
    parked_peak: usize,
    /// Staleness waiting out the mass-silence window: (fired, device, the
    /// `seen_at` it was judged on).
    pending: VecDeque<(Instant, Arc<str>, Instant)>,
    /// The circuit breaker: its share, the batch it holds, its events.
    max_restrict_fraction: f64,
    held: Option<(Held, PolicySet)>,
    next_held: u64,
    breaker_events: VecDeque<BreakerEvent>,
    /// Restrictions applied by reloads in the last [`BREAKER_WINDOW`].
    recent_reloads: VecDeque<(Instant, usize)>,
    forgotten: VecDeque<Arc<str>>,
    /// Jumps in a device's `seq` since the shell last took them.
    seq_gaps: u64,
}

/// Devices under a new policy set: each with its failures.
type Evaluated = Vec<(Arc<Device>, Vec<Failure>)>;

/// The circuit breaker adds up the restrictions of reloads this close together.
const BREAKER_WINDOW: Duration = Duration::from_secs(60);

/// What a held batch came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldCause {
    /// A policy reload (the compliance engine).
    PolicyReload,
    /// A reconciliation pass of an enforcement plane (the one at start).
    Reconciliation,
}

impl HeldCause {
    pub fn label(self) -> &'static str {
        match self {
            HeldCause::PolicyReload => "policy_reload",
            HeldCause::Reconciliation => "reconciliation",
        }
    }
}

/// A batch of restrictions the circuit breaker holds until confirmed.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    pub id: u64,
    pub cause: HeldCause,
    /// Devices (or sessions) it would newly restrict.
    pub restricting: usize,
    /// Devices with a current verdict (or sessions) when it was held.
    pub live: usize,
    /// When it was held (wall clock).
    pub since: UnixMillis,
}

/// What the circuit breaker did.
#[derive(Clone, Debug, PartialEq)]
pub enum BreakerEvent {
    Held(Held),
    Confirmed(Held),
    /// A newer policy set replaced it.
    Superseded(Held),
}

/// What the shell reports about the telemetry source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OutageEvent {
    /// Verdicts are held from now on.
    Began { cause: outage::Cause },
    /// `outage_grace` has passed with `held` devices held.
    Expired { fail_mode: outage::FailMode, held: usize },
    /// The source is back; `released` devices got their deadlines back.
    Ended { cause: outage::Cause, lasted: Duration, released: usize },
}

impl Engine {
    pub fn new(table: Table, policies: PolicySet, stale_after: Duration) -> Self {
        Self {
            table,
            judge: Judge { policies, identity_policy: identity::policy(), stale_after, forget_after: None },
            deadlines: BTreeMap::new(),
            next_slot: 0,
            override_expiries: BTreeSet::new(),
            override_at: Default::default(),
            expired_overrides: VecDeque::new(),
            events: VecDeque::new(),
            conflicts: VecDeque::new(),
            counts: [0; 3],
            interner: Default::default(),
            generation: 0,
            outage: outage::Tracker::default(),
            outage_events: VecDeque::new(),
            parked: BTreeMap::new(),
            parked_peak: 0,
            pending: VecDeque::new(),
            // Off unless configured: the engine alone never holds.
            max_restrict_fraction: 1.0,
            held: None,
            next_held: 0,
            breaker_events: VecDeque::new(),
            recent_reloads: VecDeque::new(),
            forgotten: VecDeque::new(),
            seq_gaps: 0,
        }
    }

    /// The jumps in `seq` seen since the last call (each a report, or
    /// several, lost before warden got it).
    pub fn take_seq_gaps(&mut self) -> u64 {
        std::mem::take(&mut self.seq_gaps)
    }

    /// Devices with no report for `after` (silence heard, as for
    /// staleness) are removed from the table, releasing their identities.
    pub fn with_forget_after(mut self, after: Duration) -> Self {
        self.judge.forget_after = Some(after);
        self
    }

    /// The next device forgotten, if any.
    pub fn poll_forgotten(&mut self) -> Option<Arc<str>> {
        self.forgotten.pop_front()
    }

    /// The outage settings (`[policy]`); the default otherwise.
    pub fn with_outage(mut self, settings: outage::Settings) -> Self {
        self.outage = outage::Tracker::new(settings);
        self
    }

    /// The read handle this engine writes to.
    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn policies(&self) -> &PolicySet {
        &self.judge.policies
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
        // Agents number reports consecutively: a jump means reports were
        // lost on the way (a broker queue that overflowed, for one).
        if let Some(old) = &old
            && report.seq > old.report.seq.saturating_add(1)
        {
            self.seq_gaps += 1;
        }
        let id: Arc<str> = old.as_ref().map_or_else(|| id.into(), |d| Arc::clone(&d.id));
        self.interner.report(&mut report);
        let (bound, conflicts) = identity::claims(&id, &report, &self.table);
        let failures = self.judge.failures_of(&report, &conflicts, wall);
        let mut device = Device::reported(id, report, now, wall);
        device.slot = self.slot(old.as_deref());
        self.conflicts.extend(conflicts.iter().cloned());
        device.conflicts = conflicts.into_boxed_slice();
        // An override outlasts reports: only its expiry or an admin ends it.
        device.admin_override = old.as_ref().and_then(|o| o.admin_override.clone());
        self.settle(&mut device, old.as_deref(), failures, now, wall);
        let unparked = self.parked.remove(&device.slot).is_some();
        self.store(device, old.as_deref(), Cause::Telemetry, now, wall, Some(&bound));
        // A fleet-wide silence ends when most of the silent fleet is back.
        if unparked
            && self.outage.current().is_some_and(|c| c.cause == outage::Cause::FleetSilent)
            && self.parked.len() * 2 <= self.parked_peak
        {
            self.end_outage(now, wall);
        }
        Ok(())
    }

    /// The slot of a device: its old one, or the next for a new device.
    fn slot(&mut self, old: Option<&Device>) -> u64 {
        old.map_or_else(
            || {
                self.next_slot += 1;
                self.next_slot
            },
            |o| o.slot,
        )
    }

    /// The next refused identity claim, if any.
    pub fn poll_conflict(&mut self) -> Option<Conflict> {
        self.conflicts.pop_front()
    }

    /// A new policy set. It is put in force and every device with a
    /// current report re-evaluated (stale devices stay unknown until they
    /// report) unless it would newly quarantine more than the circuit
    /// breaker's share of them: then nothing changes, and the set waits as a
    /// [`Held`] batch for [`Engine::confirm`]. A newer set replaces a held one.
    pub fn handle_policies(&mut self, policies: PolicySet, now: Instant, wall: UnixMillis) {
        let (evaluated, restricting) = self.evaluate(&policies, wall);
        let live = evaluated.len();
        // Reloads within a minute add up: a large change cut into small
        // reloads is still a large change.
        while self.recent_reloads.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) >= BREAKER_WINDOW) {
            self.recent_reloads.pop_front();
        }
        let recent: usize = self.recent_reloads.iter().map(|(_, n)| n).sum();
        // Single-device changes never wait.
        if restricting >= 2 && (restricting + recent) as f64 > self.max_restrict_fraction * live as f64 {
            self.next_held += 1;
            let held = Held { id: self.next_held, cause: HeldCause::PolicyReload, restricting, live, since: wall };
            self.breaker_events.push_back(BreakerEvent::Held(held.clone()));
            self.held = Some((held, policies));
            return;
        }
        if let Some((superseded, _)) = self.held.take() {
            self.breaker_events.push_back(BreakerEvent::Superseded(superseded));
        }
        if restricting > 0 {
            self.recent_reloads.push_back((now, restricting));
        }
        self.apply_evaluated(policies, evaluated, now, wall);
    }

    /// Applies the held batch `id`, as an operator confirmed it.
    pub fn confirm(&mut self, id: u64, now: Instant, wall: UnixMillis) -> Option<Held> {
        if self.held.as_ref().is_none_or(|(h, _)| h.id != id) {
            return None;
        }
        let (held, policies) = self.held.take()?;
        self.breaker_events.push_back(BreakerEvent::Confirmed(held.clone()));
        self.apply_policies(policies, now, wall);
        Some(held)
    }

    /// The batches the circuit breaker holds.
    pub fn held_changes(&self) -> Vec<Held> {
        self.held.iter().map(|(h, _)| h.clone()).collect()
    }

    /// The next circuit-breaker event, if any.
    pub fn poll_breaker(&mut self) -> Option<BreakerEvent> {
        self.breaker_events.pop_front()
    }

    /// The circuit breaker's share (`policy.max_restrict_fraction`).
    pub fn with_breaker(mut self, max_restrict_fraction: f64) -> Self {
        self.max_restrict_fraction = max_restrict_fraction;
        self
    }

    /// Every device with a current verdict, evaluated under `policies`
    /// (in id order, failure start times kept), and how many of them it
    /// would newly quarantine (cutting their running sessions). Evaluated
    /// once: the breaker counts from it, and applying it reuses it.
    fn evaluate(&self, policies: &PolicySet, wall: UnixMillis) -> (Evaluated, usize) {
        let mut devices = Vec::new();
        let mut restricting = 0;
        self.table.for_each(|d| {
            if d.verdict == Verdict::Unknown {
                return;
            }
            let mut failures = decide(policies, &d.report, wall).failures;
            if !d.conflicts.is_empty() {
                failures.push(identity::failure(&self.judge.identity_policy, &d.conflicts, wall));
            }
            for f in &mut failures {
                if let Some(prev) = d.failures.iter().find(|p| p.same_rule(f)) {
                    f.since = prev.since;
                }
            }
            if !d.enforce.quarantine && Enforce::of(&failures, wall).0.quarantine {
                restricting += 1;
            }
            devices.push((Arc::clone(d), failures));
        });
        devices.sort_unstable_by(|a, b| a.0.id.cmp(&b.0.id));
        (devices, restricting)
    }

    fn apply_policies(&mut self, policies: PolicySet, now: Instant, wall: UnixMillis) {
        let (evaluated, _) = self.evaluate(&policies, wall);
        self.apply_evaluated(policies, evaluated, now, wall);
    }

    fn apply_evaluated(&mut self, policies: PolicySet, evaluated: Evaluated, now: Instant, wall: UnixMillis) {
        self.judge.policies = policies;
        for (old, failures) in evaluated {
            let mut device = (*old).clone();
            self.settle(&mut device, Some(&old), failures, now, wall);
            self.store(device, Some(&old), Cause::PolicyReload, now, wall, None);
        }
    }

    /// Sets (`Some`) or clears (`None`) device `id`'s override. False when
    /// the table does not know the device (an override needs one).
    pub fn set_override(&mut self, id: &str, o: Option<Override>, now: Instant, wall: UnixMillis) -> bool {
        let Some(old) = self.table.get(id) else { return false };
        self.put_override(&old, o.map(Arc::new), Cause::Override, now, wall);
        true
    }

    /// Puts back an override restored from the state files, without an
    /// event (the planes start from the table); one that expired while
    /// warden was down is dropped.
    pub fn restore_override(&mut self, id: &str, o: Override, now: Instant, wall: UnixMillis) {
        if o.until <= wall {
            return;
        }
        if let Some(old) = self.table.get(id) {
            self.put_override(&old, Some(Arc::new(o)), Cause::Override, now, wall);
            self.events.clear();
        }
    }

    fn put_override(
        &mut self,
        old: &Arc<Device>,
        o: Option<Arc<Override>>,
        cause: Cause,
        now: Instant,
        wall: UnixMillis,
    ) {
        if let Some(at) = self.override_at.remove(&old.id) {
            self.override_expiries.remove(&(at, Arc::clone(&old.id)));
        }
        if let Some(o) = &o {
            let at = now + Duration::from_millis(u64::try_from(o.until.saturating_sub(wall)).unwrap_or(0));
            self.override_expiries.insert((at, Arc::clone(&old.id)));
            self.override_at.insert(Arc::clone(&old.id), at);
        }
        let mut device = (**old).clone();
        device.admin_override = o;
        self.store(device, Some(old), cause, now, wall, None);
    }

    /// The next override that ended at its expiry (whether or not the
    /// device's access changed with it).
    pub fn poll_override_expired(&mut self) -> Option<(Arc<str>, Arc<crate::compliance::overrides::Override>)> {
        self.expired_overrides.pop_front()
    }

    /// Expires stale devices and ends grace periods due by `now`; applies
    /// the outage grace and the mass-silence window.
    pub fn handle_timeout(&mut self, now: Instant, wall: UnixMillis) {
        while let Some((at, _)) = self.override_expiries.first()
            && *at <= now
        {
            let Some((_, id)) = self.override_expiries.pop_first() else { break };
            self.override_at.remove(&id);
            if let Some(old) = self.table.get(&id)
                && let Some(ended) = &old.admin_override
            {
                self.expired_overrides.push_back((Arc::clone(&id), Arc::clone(ended)));
                let mut device = (*old).clone();
                device.admin_override = None;
                self.store(device, Some(&old), Cause::OverrideExpired, now, wall, None);
            }
        }
        if self.outage.expire(now) {
            let fail_mode = self.outage.settings.fail_mode;
            self.outage_events.push_back(OutageEvent::Expired { fail_mode, held: self.parked.len() });
            if !self.outage.holding() {
                // `unknown`: silence counts again; held devices are re-armed.
                self.release_parked(now, wall);
            }
        }
        while let Some(((at, _), _)) = self.deadlines.first_key_value()
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
            let silence = self.outage.silence(device.seen_at, now);
            if device.verdict == Verdict::Unknown {
                // A stale device: its deadline is when it is forgotten.
                match self.judge.forget_after {
                    Some(after) if silence >= after => self.forget(&old),
                    Some(after) => {
                        device.deadline = Some(now + (after - silence));
                        self.store(device, Some(&old), Cause::Stale, now, wall, None);
                    }
                    None => {}
                }
                continue;
            }
            if silence >= self.judge.stale_after {
                let live = self.counts[Verdict::Compliant.index()] + self.counts[Verdict::Noncompliant.index()];
                if !self.outage.detecting(live) {
                    self.go_stale(device, &old, now, wall);
                    continue;
                }
                // A large fleet: staleness waits out the window, in case
                // this is the start of a fleet-wide silence.
                let seen_at = device.seen_at;
                self.store(device, Some(&old), Cause::Stale, now, wall, None);
                self.pending.push_back((now, Arc::clone(&id), seen_at));
                if let Some(from) = self.outage.expiry(now, live) {
                    self.begin_fleet_silence(from, now, wall);
                }
            } else if now.saturating_duration_since(device.seen_at) >= self.judge.stale_after {
                // Silent only while the source was out.
                if self.outage.holding() {
                    self.park(device, &old, now, wall);
                } else {
                    device.deadline = Some(now + (self.judge.stale_after - silence));
                    self.store(device, Some(&old), Cause::Stale, now, wall, None);
                }
            } else {
                let failures = std::mem::take(&mut device.failures);
                self.settle(&mut device, Some(&old), failures, now, wall);
                self.store(device, Some(&old), Cause::GraceExpired, now, wall, None);
            }
        }
        let window = self.outage.settings.window;
        while let Some((fired, _, _)) = self.pending.front()
            && *fired + window <= now
        {
            let Some((_, id, seen_at)) = self.pending.pop_front() else { break };
            // Not if it reported meanwhile.
            if let Some(old) = self.table.get(&id)
                && old.seen_at == seen_at
                && old.verdict != Verdict::Unknown
            {
                let device = (*old).clone();
                self.go_stale(device, &old, now, wall);
            }
        }
    }

    /// The telemetry source went down (`up` false: the connection or the
    /// subscription is lost) or came back.
    pub fn handle_source(&mut self, up: bool, now: Instant, wall: UnixMillis) {
        if !up {
            if self.outage.begin(outage::Cause::SourceDown, now, wall) {
                self.outage_events.push_back(OutageEvent::Began { cause: outage::Cause::SourceDown });
            }
            return;
        }
        if self.outage.current().is_some_and(|c| c.cause == outage::Cause::SourceDown) {
            self.end_outage(now, wall);
        }
    }

    /// The outage in progress, if any.
    pub fn outage(&self) -> Option<outage::Current> {
        self.outage.current()
    }

    /// Devices whose verdict is held now.
    pub fn held(&self) -> usize {
        self.parked.len()
    }

    /// Reports produced after this (wall clock) are accepted however late
    /// they arrive: the latest outage began then.
    pub fn accept_since(&self) -> Option<UnixMillis> {
        self.outage.last_began_wall()
    }

    /// The next outage event, if any.
    pub fn poll_outage(&mut self) -> Option<OutageEvent> {
        self.outage_events.pop_front()
    }

    fn go_stale(&mut self, mut device: Device, old: &Device, now: Instant, wall: UnixMillis) {
        device.verdict = Verdict::Unknown;
        device.failures = Vec::new();
        device.enforce = Enforce::default();
        device.since = wall;
        let silence = self.outage.silence(device.seen_at, now);
        device.deadline = self.judge.forget_after.map(|after| now + after.saturating_sub(silence));
        self.store(device, Some(old), Cause::Stale, now, wall, None);
    }

    /// Removes a long-silent device and releases its identities.
    fn forget(&mut self, device: &Device) {
        if let Some(at) = device.deadline {
            self.deadlines.remove(&(at, device.slot));
        }
        if let Some(at) = self.override_at.remove(&device.id) {
            self.override_expiries.remove(&(at, Arc::clone(&device.id)));
        }
        self.parked.remove(&device.slot);
        self.counts[device.verdict.index()] -= 1;
        self.table.remove(device);
        self.generation += 1;
        self.forgotten.push_back(Arc::clone(&device.id));
    }

    /// Holds a device's verdict while the source is out: no deadline until
    /// the outage ends.
    fn park(&mut self, mut device: Device, old: &Device, now: Instant, wall: UnixMillis) {
        device.held = true;
        device.deadline = None;
        self.parked.insert(device.slot, Arc::clone(&device.id));
        self.parked_peak = self.parked_peak.max(self.parked.len());
        self.store(device, Some(old), Cause::Stale, now, wall, None);
    }

    fn begin_fleet_silence(&mut self, from: Instant, now: Instant, wall: UnixMillis) {
        let began_wall = wall - i64::try_from(now.saturating_duration_since(from).as_millis()).unwrap_or(0);
        if !self.outage.begin(outage::Cause::FleetSilent, from, began_wall) {
            return;
        }
        for (_, id, seen_at) in std::mem::take(&mut self.pending) {
            if let Some(old) = self.table.get(&id)
                && old.seen_at == seen_at
                && old.verdict != Verdict::Unknown
            {
                let device = (*old).clone();
                self.park(device, &old, now, wall);
            }
        }
        self.outage_events.push_back(OutageEvent::Began { cause: outage::Cause::FleetSilent });
    }

    fn end_outage(&mut self, now: Instant, wall: UnixMillis) {
        let Some(ended) = self.outage.end(now) else { return };
        let released = self.parked.len();
        if ended.cause == outage::Cause::FleetSilent {
            // Most of the fleet is back; those still silent are silent.
            for id in std::mem::take(&mut self.parked).into_values() {
                if let Some(old) = self.table.get(&id) {
                    let mut device = (*old).clone();
                    device.held = false;
                    self.go_stale(device, &old, now, wall);
                }
            }
        }
        self.release_parked(now, wall);
        self.outage_events.push_back(OutageEvent::Ended {
            cause: ended.cause,
            lasted: now.saturating_duration_since(ended.began),
            released,
        });
    }

    /// Held devices get their staleness deadline back, counting only the
    /// silence heard while the source was up.
    fn release_parked(&mut self, now: Instant, wall: UnixMillis) {
        for id in std::mem::take(&mut self.parked).into_values() {
            let Some(old) = self.table.get(&id) else { continue };
            let mut device = (*old).clone();
            device.held = false;
            let silence = self.outage.silence(device.seen_at, now);
            if silence >= self.judge.stale_after {
                // Silence counts again (`unknown` after the grace).
                self.go_stale(device, &old, now, wall);
            } else {
                device.deadline = Some(now + (self.judge.stale_after - silence));
                self.store(device, Some(&old), Cause::Stale, now, wall, None);
            }
        }
        self.parked_peak = 0;
    }

    /// Puts a device restored from a snapshot back, without an event: the
    /// planes have not started yet. A device silent for `stale_after` comes
    /// back unknown, not counting the time no one could hear it (the outage
    /// begun with [`Engine::handle_source`] from when warden went down):
    /// such a device comes back held.
    pub fn restore(
        &mut self,
        id: &str,
        report: Report,
        last_seen: UnixMillis,
        prior: &[(String, UnixMillis)],
        now: Instant,
        wall: UnixMillis,
    ) {
        let settled =
            self.judge.restored(&self.outage, &mut self.interner, id, report, last_seen, prior.to_vec(), now, wall);
        self.install(settled, now, wall);
    }

    /// The half of a restore that needs no table, to run on the thread
    /// that reads the snapshot while this engine installs what it settled.
    /// Made after the outage of the time warden was down has begun.
    pub fn restorer(&self, now: Instant, wall: UnixMillis) -> Restorer {
        Restorer { judge: self.judge.clone(), outage: self.outage.clone(), interner: Interner::default(), now, wall }
    }

    /// Takes the restorer back when the snapshot is read: the values it
    /// interned become this engine's.
    pub fn finish_restore(&mut self, restorer: Restorer) {
        self.interner.absorb(restorer.interner);
    }

    /// Stores a device settled by a [`Restorer`] (or by [`Engine::restore`]),
    /// binding the identities it claims, without an event. A claim on an
    /// identity another live device holds is refused, and the device judged
    /// again with the `identity-conflict` rule failing.
    pub fn install(&mut self, settled: Settled, now: Instant, wall: UnixMillis) {
        let Settled { mut device, forgotten, prior, admin_override } = settled;
        if forgotten {
            self.forgotten.push_back(Arc::clone(&device.id));
            return;
        }
        let old = self.table.get(&device.id);
        let (bound, conflicts) = identity::claims(&device.id, &device.report, &self.table);
        // Not shared yet: no copy is made.
        let d = Arc::make_mut(&mut device);
        d.slot = self.slot(old.as_deref());
        if !conflicts.is_empty() {
            d.conflicts = conflicts.into_boxed_slice();
            if d.verdict != Verdict::Unknown {
                let mut failures = self.judge.failures_of(&d.report, &d.conflicts, wall);
                for f in &mut failures {
                    if let Some((_, since)) = prior.iter().find(|(k, _)| *k == f.key()) {
                        f.since = *since;
                    }
                }
                self.judge.settle(&self.outage, d, None, failures, now, wall);
                if d.held {
                    d.deadline = None;
                }
                d.groups = self.judge.groups_of(d, wall);
            }
        }
        if d.held {
            self.parked.insert(d.slot, Arc::clone(&d.id));
            self.parked_peak = self.parked_peak.max(self.parked.len());
        }
        let id = Arc::clone(&device.id);
        self.write(device, old.as_deref(), Cause::Telemetry, now, wall, Some(&bound), false);
        if let Some(o) = admin_override {
            self.restore_override(&id, o, now, wall);
        }
    }

    /// What the remediation core says of a device: a plan running, one
    /// escalated. Stored (with its groups) when it differs.
    pub fn set_remediation(&mut self, id: &str, remediating: bool, escalated: bool, now: Instant, wall: UnixMillis) {
        let Some(old) = self.table.get(id) else { return };
        if old.remediating == remediating && old.escalated == escalated {
            return;
        }
        let mut device = (*old).clone();
        device.remediating = remediating;
        device.escalated = escalated;
        self.store(device, Some(&old), Cause::Remediation, now, wall, None);
    }

    /// The next verdict change, if any.
    pub fn poll_event(&mut self) -> Option<Change> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let window = self.outage.settings.window;
        let pending = self.pending.front().map(|(fired, _, _)| *fired + window);
        let expiry = self.override_expiries.first().map(|(at, _)| *at);
        self.deadlines
            .first_key_value()
            .map(|((at, _), _)| *at)
            .into_iter()
            .chain(pending)
            .chain(self.outage.expires_at())
            .chain(expiry)
            .min()
    }

    /// Fills in verdict, failures, enforcement and the next deadline.
    fn settle(
        &self,
        device: &mut Device,
        old: Option<&Device>,
        failures: Vec<Failure>,
        now: Instant,
        wall: UnixMillis,
    ) {
        self.judge.settle(&self.outage, device, old, failures, now, wall);
    }

    /// Writes `device` to the table, keeps the deadline set and the counts
    /// in step, and queues a [`Change`] if anything a plane acts on changed.
    fn store(
        &mut self,
        mut device: Device,
        old: Option<&Device>,
        cause: Cause,
        now: Instant,
        wall: UnixMillis,
        bound: Option<&Bound>,
    ) {
        device.groups = self.judge.groups_of(&device, wall);
        if !Arc::ptr_eq(&device.group_set, &self.judge.policies.groups) {
            device.group_set = Arc::clone(&self.judge.policies.groups);
        }
        self.write(Arc::new(device), old, cause, now, wall, bound, true);
    }

    /// [`Engine::store`] for a device whose groups are settled; `notify`
    /// false for a restore, which the planes learn of when they start.
    #[allow(clippy::too_many_arguments)] // store's, and whether to tell
    fn write(
        &mut self,
        device: Arc<Device>,
        old: Option<&Device>,
        cause: Cause,
        now: Instant,
        wall: UnixMillis,
        bound: Option<&Bound>,
        notify: bool,
    ) {
        if let Some(old) = old {
            if let Some(at) = old.deadline {
                self.deadlines.remove(&(at, old.slot));
            }
            self.counts[old.verdict.index()] -= 1;
        }
        if let Some(at) = device.deadline {
            self.deadlines.insert((at, device.slot), Arc::clone(&device.id));
        }
        self.counts[device.verdict.index()] += 1;
        let old_verdict = old.map_or(Verdict::Unknown, |o| o.verdict);
        let changed = match old {
            None => true,
            Some(o) => {
                o.verdict != device.verdict
                    || o.enforce != device.enforce
                    || o.admin_override != device.admin_override
                    || o.failures.len() != device.failures.len()
                    || o.failures.iter().zip(&device.failures).any(|(a, b)| !a.same_rule(b))
                    || o.groups != device.groups
            }
        };
        if changed && notify {
            self.events.push_back(Change {
                device: Arc::clone(&device.id),
                old: old_verdict,
                new: device.verdict,
                failures: device.failures.clone(),
                enforce: device.enforce,
                cause,
                at: now,
                wall,
                groups: device.groups,
                group_set: Arc::clone(&self.judge.policies.groups),
            });
        }
        self.generation += 1;
        match bound {
            Some(bound) => self.table.put(device, old, bound),
            None => self.table.replace(device),
        }
    }
}
