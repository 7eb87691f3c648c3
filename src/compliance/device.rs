//! One device's entry in the table, and what it means for enforcement.

use crate::policy::{Enforcement, Failure, Severity};
use crate::telemetry::{Report, UnixMillis};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// The compliance verdict of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Compliant,
    Noncompliant,
    /// Never reported, or stale (no report for `stale_after`: violation "inactive").
    Unknown,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Compliant, Verdict::Noncompliant, Verdict::Unknown];

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Compliant => "compliant",
            Verdict::Noncompliant => "noncompliant",
            Verdict::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.label() == s)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// What the failures of a noncompliant device require of the planes now,
/// after severity, grace and enforcement mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Enforce {
    /// Cut or restrict existing sessions (an enforced `always` failure).
    pub quarantine: bool,
    /// Refuse normal access when a session starts (`always` or `admission`).
    pub deny_admission: bool,
}

impl Enforce {
    /// Enforcement at `now`, and when it next changes (a grace period ending).
    pub fn of(failures: &[Failure], now: UnixMillis) -> (Self, Option<UnixMillis>) {
        let mut out = Self::default();
        let mut next: Option<UnixMillis> = None;
        for f in failures {
            let p = &f.policy;
            if p.severity == Severity::Minor || p.enforcement == Enforcement::Monitor {
                continue;
            }
            let due = f.since.saturating_add(i64::try_from(p.grace.as_millis()).unwrap_or(i64::MAX));
            if now < due {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            out.deny_admission = true;
            out.quarantine |= p.enforcement == Enforcement::Always;
        }
        (out, next)
    }
}

/// A device as the table holds it. Readers get an `Arc` and never a lock.
#[derive(Clone, Debug)]
pub struct Device {
    pub id: Arc<str>,
    /// The last accepted report (kept when the device goes stale).
    pub report: Report,
    pub verdict: Verdict,
    /// The failed rules; empty unless `verdict` is noncompliant.
    pub failures: Vec<Failure>,
    pub enforce: Enforce,
    /// When the verdict last changed (wall clock).
    pub since: UnixMillis,
    /// When the last accepted report arrived (wall clock).
    pub last_seen: UnixMillis,
    /// The same instant on the monotonic clock: staleness runs from here.
    pub(crate) seen_at: Instant,
    /// The engine's next deadline for this device (staleness or grace).
    pub(crate) deadline: Option<Instant>,
    /// The engine's number for it, fixed for its life in the table: the
    /// engine's timers and held set are keyed by it, so ties between equal
    /// deadlines are broken by an integer rather than by comparing ids.
    pub(crate) slot: u64,
    /// Identities its report claimed that belong to other live devices.
    /// A boxed slice, not a `Vec`: rarely anything, and the 8 bytes saved
    /// keep a `Device` in its Arc at 384 bytes, mimalloc's size class
    /// below 448 (64 MB at 1,000,000 devices).
    pub conflicts: Box<[super::identity::Conflict]>,
    /// Silent for `stale_after`, but only while the telemetry source was
    /// out: its verdict is held, not expired.
    pub held: bool,
    /// An administrator's override, until it expires (the engine removes
    /// it then). It decides access; the verdict stays what reports say.
    pub admin_override: Option<Arc<super::overrides::Override>>,
    /// A remediation plan is running for one of its rules.
    pub remediating: bool,
    /// One of its plans ran out of steps with the rule still failing.
    pub escalated: bool,
    /// The dynamic groups it is in (bits of `group_set`).
    pub groups: u64,
    /// The groups in force when `groups` was computed.
    pub group_set: Arc<crate::policy::Groups>,
}

impl Device {
    /// A device whose `report` arrived at `seen_at` (`last_seen` on the wall
    /// clock), before any verdict: the engine settles it next.
    pub(crate) fn reported(id: Arc<str>, report: Report, seen_at: Instant, last_seen: UnixMillis) -> Self {
        Self {
            id,
            report,
            verdict: Verdict::Unknown,
            failures: Vec::new(),
            enforce: Enforce::default(),
            since: last_seen,
            last_seen,
            seen_at,
            deadline: None,
            slot: 0,
            conflicts: Box::default(),
            held: false,
            admin_override: None,
            remediating: false,
            escalated: false,
            groups: 0,
            group_set: Arc::default(),
        }
    }
}
