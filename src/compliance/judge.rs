//! The pure half of the engine: a device's verdict, failures, enforcement,
//! next deadline and groups, from its report, the rules in force and `now`.
//! It reads nothing of the table, so it can run anywhere.
//!
//! The engine calls it for every input. A restore at start also runs it on
//! the snapshot's reader thread ([`Restorer`]), so the two cores share a
//! 1,000,000-device start: the reader parses and settles each device, the
//! engine only binds its identities and stores it ([`super::Engine::install`]).

use super::device::{Device, Enforce, Verdict};
use super::identity::{self, Conflict};
use super::intern::Interner;
use super::outage::Tracker;
use super::overrides::Override;
use crate::policy::{Failure, Policy, PolicySet, decide};
use crate::telemetry::{Report, UnixMillis};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The rules a device is judged by.
#[derive(Clone)]
pub(super) struct Judge {
    pub policies: PolicySet,
    /// The built-in policy of the `identity-conflict` rule.
    pub identity_policy: Arc<Policy>,
    pub stale_after: Duration,
    /// Devices silent this long are removed (`policy.forget_after`).
    pub forget_after: Option<Duration>,
}

impl Judge {
    /// The failures of `report` under the policies in force, and the
    /// built-in `identity-conflict` when it claimed another device's identity.
    pub fn failures_of(&self, report: &Report, conflicts: &[Conflict], wall: UnixMillis) -> Vec<Failure> {
        let mut failures = decide(&self.policies, report, wall).failures;
        if !conflicts.is_empty() {
            failures.push(identity::failure(&self.identity_policy, conflicts, wall));
        }
        failures
    }

    /// Fills in verdict, failures (keeping when each started failing),
    /// enforcement and the next deadline.
    pub fn settle(
        &self,
        outage: &Tracker,
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
        let stale_at = now + self.stale_after.saturating_sub(outage.silence(device.seen_at, now));
        let grace_at = grace_end.map(|end| now + Duration::from_millis(u64::try_from(end - wall).unwrap_or(0)));
        device.deadline = Some(grace_at.map_or(stale_at, |g| g.min(stale_at)));
    }

    /// The dynamic groups `device` is in.
    pub fn groups_of(&self, device: &Device, wall: UnixMillis) -> u64 {
        let groups = &self.policies.groups;
        if groups.groups.is_empty() {
            return 0;
        }
        groups.of(&crate::policy::groups::Subject {
            verdict: device.verdict.label(),
            failures: &device.failures,
            quarantined: device.enforce.quarantine,
            held: device.held,
            override_mode: device.admin_override.as_ref().map(|o| o.mode.label()),
            remediating: device.remediating,
            escalated: device.escalated,
            report: &device.report,
            now: wall,
        })
    }

    /// A device as it comes back from the snapshot, settled as if it had
    /// no identity conflicts (those need the table; the engine checks them
    /// when it installs the device). A device silent for `stale_after`
    /// comes back unknown, not counting the time no one could hear it (the
    /// outage in `outage`, begun from when warden went down): such a device
    /// comes back held.
    #[allow(clippy::too_many_arguments)] // one device's snapshot entry, unpacked
    pub fn restored(
        &self,
        outage: &Tracker,
        interner: &mut Interner,
        id: &str,
        mut report: Report,
        last_seen: UnixMillis,
        prior: Vec<(String, UnixMillis)>,
        now: Instant,
        wall: UnixMillis,
    ) -> Settled {
        let age = Duration::from_millis(u64::try_from(wall.saturating_sub(last_seen)).unwrap_or(0));
        let seen_at = now.checked_sub(age).unwrap_or(now);
        interner.report(&mut report);
        let mut device = Device::reported(id.into(), report, seen_at, last_seen);
        device.since = wall;
        // The silence heard: while warden was down (the outage the shell
        // began when the snapshot was last written), nobody could be heard.
        let silence = match outage.current() {
            Some(c) if outage.holding() => {
                Duration::from_millis(u64::try_from(c.began_wall.saturating_sub(last_seen)).unwrap_or(0))
            }
            _ => age,
        };
        if let Some(after) = self.forget_after {
            if silence >= after {
                // Forgotten while warden was away: not restored at all.
                return Settled { device: Arc::new(device), forgotten: true, prior: Vec::new(), admin_override: None };
            }
            if silence >= self.stale_after {
                device.deadline = Some(now + (after - silence));
            }
        }
        if silence < self.stale_after {
            let mut failures = self.failures_of(&device.report, &[], wall);
            for f in &mut failures {
                if let Some((_, since)) = prior.iter().find(|(k, _)| *k == f.key()) {
                    f.since = *since;
                }
            }
            self.settle(outage, &mut device, None, failures, now, wall);
            if age >= self.stale_after {
                // Silent only while nobody listened: held until the source is up.
                device.held = true;
                device.deadline = None;
            }
        }
        device.groups = self.groups_of(&device, wall);
        device.group_set = Arc::clone(&self.policies.groups);
        // Allocated here, on the reader's core, and small to hand over.
        Settled { device: Arc::new(device), forgotten: false, prior, admin_override: None }
    }
}

/// A device settled from its snapshot entry, for [`super::Engine::install`].
pub struct Settled {
    pub(super) device: Arc<Device>,
    /// Silent for `forget_after`: not to be restored.
    pub(super) forgotten: bool,
    /// When each failing rule started failing, kept for the rare device
    /// whose identities turn out to be claimed (it is judged again then).
    pub(super) prior: Vec<(String, UnixMillis)>,
    pub(super) admin_override: Option<Override>,
}

impl Settled {
    /// The device's id, shared.
    pub fn id(&self) -> Arc<str> {
        Arc::clone(&self.device.id)
    }
}

/// The engine's rules and clocks at the start of a restore, owned by the
/// thread that reads the snapshot. Made by [`super::Engine::restorer`],
/// handed back with [`super::Engine::finish_restore`] (for its interned values).
pub struct Restorer {
    pub(super) judge: Judge,
    pub(super) outage: Tracker,
    pub(super) interner: Interner,
    pub(super) now: Instant,
    pub(super) wall: UnixMillis,
}

impl Restorer {
    /// Settles one snapshot entry.
    pub fn settle(&mut self, e: super::snapshot::Entry) -> Settled {
        let mut s = self.judge.restored(
            &self.outage,
            &mut self.interner,
            &e.id,
            e.report,
            e.last_seen,
            e.failing_since,
            self.now,
            self.wall,
        );
        s.admin_override = e.admin_override;
        s
    }
}
