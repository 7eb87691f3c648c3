//! Drift reports, computed from the audit trail (sans-IO): the caller feeds
//! the trail's lines in order ([`Builder::line`]) and gets a [`Report`]
//! ([`Builder::finish`]); `render` turns it into JSON, CSV or one
//! self-contained HTML page.
//!
//! The whole trail is replayed, not only the window: the fleet's state at
//! the window's start (who was failing what, which overrides were in
//! force) comes from the entries before it. One pass, memory bounded by
//! the devices (their last verdict, failed rules and groups), never by the
//! entries.

pub mod config;
pub mod render;
pub mod schedule;
/// The reports listed in `dir/index.json` (none when it is missing or
/// damaged): what the shell that writes them and the console read.
pub fn read_index(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read(dir.join("index.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("reports").and_then(serde_json::Value::as_array).cloned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;

use crate::telemetry::UnixMillis;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What a report covers.
#[derive(Clone, Debug)]
pub struct Options {
    /// The window: entries at or after `since` and before `until`.
    pub since: UnixMillis,
    pub until: UnixMillis,
    /// Only this policy's rules (drifts, remediation, failing devices).
    pub policy: Option<String>,
    /// Only devices in this group (reported or dynamic, at their last change).
    pub group: Option<String>,
    /// The series' step (a day by default).
    pub step: UnixMillis,
}

pub const DAY: UnixMillis = 24 * 3600 * 1000;

/// A device's state as the trail left it.
#[derive(Default)]
struct DeviceState {
    verdict: Verdict,
    /// When the current verdict began.
    since: UnixMillis,
    /// Failed rules (`policy/rule`), as of the last change.
    failed: Vec<Arc<str>>,
    member_of: Vec<Arc<str>>,
    /// Counted in the series (in scope for the group filter).
    counted: Option<Class>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Compliant,
    Noncompliant,
    #[default]
    Unknown,
}

/// How the series counts a device: with a policy filter, noncompliant
/// means failing a rule of that policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Compliant,
    Noncompliant,
    Unknown,
}

/// One point of the fleet-over-time series.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Point {
    /// RFC 3339: the state at this moment.
    pub at: String,
    pub compliant: u64,
    pub noncompliant: u64,
    pub unknown: u64,
}

/// Per rule: how often it started failing, how long fixes took, escalations.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RuleStats {
    /// `policy/rule`.
    pub rule: String,
    /// Devices that began failing it in the window.
    pub drifts: u64,
    /// Plans ended by a passing report in the window.
    pub remediated: u64,
    /// Time to remediate, seconds (median, 90th percentile).
    pub ttr_median_s: Option<f64>,
    pub ttr_p90_s: Option<f64>,
    pub escalations: u64,
}

/// A device failing at the window's end.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failing {
    pub device: String,
    /// RFC 3339: when its noncompliant verdict began.
    pub since: String,
    pub failed_rules: Vec<String>,
}

/// An override in force at the window's end.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OverrideInForce {
    pub device: String,
    pub mode: String,
    pub by: String,
    pub reason: String,
    /// RFC 3339.
    pub until: String,
}

/// Enforcement actions in the window: plane, action (CoA, Disconnect, or a
/// WireGuard flip's new access), result, how many.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Enforcement {
    pub plane: String,
    pub action: String,
    pub result: String,
    pub count: u64,
}

/// The report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// RFC 3339.
    pub since: String,
    pub until: String,
    pub policy: Option<String>,
    pub group: Option<String>,
    /// Devices the trail knows (in scope), and verdict changes in the window.
    pub devices: u64,
    pub changes: u64,
    pub series: Vec<Point>,
    pub rules: Vec<RuleStats>,
    pub failing: Vec<Failing>,
    pub overrides: Vec<OverrideInForce>,
    pub enforcement: Vec<Enforcement>,
    /// Trail lines that could not be read (damage), skipped.
    pub unreadable: u64,
}

/// One trail line, as much of it as a report needs (borrowed: no copy of
/// what is skipped).
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    at: Option<&'a str>,
    #[serde(borrow)]
    kind: Option<&'a str>,
    #[serde(borrow)]
    device: Option<&'a str>,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct VerdictData {
    to: Verdict,
    #[serde(default)]
    failed_rules: Vec<String>,
    #[serde(default)]
    member_of: Vec<String>,
}

#[derive(Deserialize)]
struct RuleData {
    rule: String,
    #[serde(default)]
    took_ms: Option<u64>,
    #[serde(default)]
    took_s: Option<u64>,
}

#[derive(Deserialize)]
struct OverrideData {
    #[serde(default)]
    mode: String,
    #[serde(default)]
    by: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    until: String,
}

#[derive(Deserialize)]
struct EnforcementData {
    plane: String,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    result: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

struct OverrideState {
    mode: String,
    by: String,
    reason: String,
    until: UnixMillis,
}

/// The report being built.
pub struct Builder {
    opts: Options,
    devices: HashMap<Arc<str>, DeviceState>,
    /// Interned rule keys and group names.
    names: HashMap<Box<str>, Arc<str>>,
    counts: [u64; 3],
    series: Vec<Point>,
    next_point: UnixMillis,
    rules: BTreeMap<Arc<str>, (u64, Vec<u64>, u64)>,
    overrides: HashMap<Arc<str>, OverrideState>,
    enforcement: BTreeMap<(String, String, String), u64>,
    changes: u64,
    unreadable: u64,
}

impl Builder {
    pub fn new(opts: Options) -> Self {
        let next_point = opts.since;
        Self {
            opts,
            devices: HashMap::new(),
            names: HashMap::new(),
            counts: [0; 3],
            series: Vec::new(),
            next_point,
            rules: BTreeMap::new(),
            overrides: HashMap::new(),
            enforcement: BTreeMap::new(),
            changes: 0,
            unreadable: 0,
        }
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(s.into(), Arc::clone(&a));
        a
    }

    /// Takes one trail line (entries in sequence order; checkpoints and
    /// other lines are passed over).
    pub fn line(&mut self, text: &[u8]) {
        let Ok(line) = serde_json::from_slice::<Line>(text) else {
            self.unreadable += 1;
            return;
        };
        let (Some(at), Some(kind)) = (line.at, line.kind) else { return }; // a checkpoint
        let Ok(at) = crate::telemetry::report::parse_rfc3339(at) else {
            self.unreadable += 1;
            return;
        };
        if at >= self.opts.until {
            return;
        }
        self.points_until(at);
        let in_window = at >= self.opts.since;
        let data = line.data.map_or("null", |d| d.get());
        let device = line.device.unwrap_or("");
        match kind {
            "warden.verdict.changed" => match serde_json::from_str::<VerdictData>(data) {
                Ok(v) => self.verdict(device, at, v, in_window),
                Err(_) => self.unreadable += 1,
            },
            "warden.remediation.completed" | "warden.remediation.escalated" if in_window => {
                let Ok(r) = serde_json::from_str::<RuleData>(data) else {
                    self.unreadable += 1;
                    return;
                };
                if !self.rule_in_scope(&r.rule) || !self.device_in_scope(device) {
                    return;
                }
                let key = self.intern(&r.rule);
                let stats = self.rules.entry(key).or_default();
                if kind == "warden.remediation.escalated" {
                    stats.2 += 1;
                } else if let Some(ms) = r.took_ms.or(r.took_s.map(|s| s * 1000)) {
                    stats.1.push(ms);
                }
            }
            "warden.override.set" => {
                if let Ok(o) = serde_json::from_str::<OverrideData>(data) {
                    let until = crate::telemetry::report::parse_rfc3339(&o.until).unwrap_or(UnixMillis::MAX);
                    let id = self.intern_device(device);
                    self.overrides.insert(id, OverrideState { mode: o.mode, by: o.by, reason: o.reason, until });
                }
            }
            "warden.override.cleared" | "warden.override.expired" => {
                self.overrides.remove(device);
            }
            "warden.device.forgotten" => {
                if let Some(d) = self.devices.remove(device)
                    && let Some(c) = d.counted
                {
                    self.counts[c as usize] -= 1;
                }
                self.overrides.remove(device);
            }
            "warden.enforcement.applied" if in_window => {
                if !self.device_in_scope(device) {
                    return;
                }
                if let Ok(e) = serde_json::from_str::<EnforcementData>(data) {
                    let (action, result) = match (e.action, e.result, e.to) {
                        (Some(a), Some(r), _) => (a, r),
                        (_, _, Some(to)) => (format!("to {to}"), "applied".into()),
                        _ => ("?".into(), "?".into()),
                    };
                    *self.enforcement.entry((e.plane, action, result)).or_default() += 1;
                }
            }
            _ => {}
        }
    }

    fn intern_device(&mut self, device: &str) -> Arc<str> {
        match self.devices.get_key_value(device) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(device),
        }
    }

    fn rule_in_scope(&self, rule: &str) -> bool {
        self.opts.policy.as_deref().is_none_or(|p| rule.split_once('/').is_some_and(|(policy, _)| policy == p))
    }

    fn device_in_scope(&self, device: &str) -> bool {
        let Some(g) = self.opts.group.as_deref() else { return true };
        self.devices.get(device).is_some_and(|d| d.member_of.iter().any(|m| &**m == g))
    }

    fn class(&self, d: &DeviceState) -> Option<Class> {
        if let Some(g) = self.opts.group.as_deref()
            && !d.member_of.iter().any(|m| &**m == g)
        {
            return None;
        }
        Some(match (d.verdict, &self.opts.policy) {
            (Verdict::Unknown, _) => Class::Unknown,
            (_, Some(_)) if d.failed.iter().any(|r| self.rule_in_scope(r)) => Class::Noncompliant,
            (_, Some(_)) => Class::Compliant,
            (Verdict::Noncompliant, None) => Class::Noncompliant,
            (Verdict::Compliant, None) => Class::Compliant,
        })
    }

    fn verdict(&mut self, device: &str, at: UnixMillis, v: VerdictData, in_window: bool) {
        let failed: Vec<Arc<str>> = v.failed_rules.iter().map(|r| self.intern(r)).collect();
        let member_of: Vec<Arc<str>> = v.member_of.iter().map(|g| self.intern(g)).collect();
        let id = self.intern_device(device);
        let mut d = self.devices.remove(&id).unwrap_or_default();
        if in_window && self.opts.group.as_deref().is_none_or(|g| member_of.iter().any(|m| &**m == g)) {
            self.changes += 1;
            // Each rule that was not failing before is a drift.
            for r in failed.iter().filter(|r| !d.failed.contains(r)) {
                if self.rule_in_scope(r) {
                    self.rules.entry(Arc::clone(r)).or_default().0 += 1;
                }
            }
        }
        if d.verdict != v.to {
            d.since = at;
        }
        d.verdict = v.to;
        d.failed = failed;
        d.member_of = member_of;
        if let Some(c) = d.counted.take() {
            self.counts[c as usize] -= 1;
        }
        d.counted = self.class(&d);
        if let Some(c) = d.counted {
            self.counts[c as usize] += 1;
        }
        self.devices.insert(id, d);
    }

    /// Series points for every step boundary at or before `at`.
    fn points_until(&mut self, at: UnixMillis) {
        while self.next_point <= at && self.next_point < self.opts.until {
            self.point(self.next_point);
            self.next_point += self.opts.step.max(1);
        }
    }

    fn point(&mut self, at: UnixMillis) {
        let [compliant, noncompliant, unknown] = self.counts;
        self.series.push(Point { at: crate::telemetry::report::format_rfc3339(at), compliant, noncompliant, unknown });
    }

    /// The report, as of the window's end.
    #[allow(clippy::disallowed_methods)] // hash order: every list is sorted before it leaves
    pub fn finish(mut self) -> Report {
        self.points_until(self.opts.until - 1);
        self.point(self.opts.until);
        let fmt = crate::telemetry::report::format_rfc3339;
        let mut failing: Vec<Failing> = self
            .devices
            .iter()
            .filter(|(_, d)| d.counted == Some(Class::Noncompliant))
            .map(|(id, d)| Failing {
                device: id.to_string(),
                since: fmt(d.since),
                failed_rules: d.failed.iter().filter(|r| self.rule_in_scope(r)).map(|r| r.to_string()).collect(),
            })
            .collect();
        failing.sort_by(|a, b| (&a.since, &a.device).cmp(&(&b.since, &b.device)));
        let mut overrides: Vec<OverrideInForce> = self
            .overrides
            .iter()
            .filter(|(id, o)| o.until > self.opts.until && self.device_in_scope(id))
            .map(|(id, o)| OverrideInForce {
                device: id.to_string(),
                mode: o.mode.clone(),
                by: o.by.clone(),
                reason: o.reason.clone(),
                until: fmt(o.until),
            })
            .collect();
        overrides.sort_by(|a, b| a.device.cmp(&b.device));
        let rules = std::mem::take(&mut self.rules)
            .into_iter()
            .map(|(rule, (drifts, mut took, escalations))| {
                took.sort_unstable();
                RuleStats {
                    rule: rule.to_string(),
                    drifts,
                    remediated: took.len() as u64,
                    ttr_median_s: quantile(&took, 0.5),
                    ttr_p90_s: quantile(&took, 0.9),
                    escalations,
                }
            })
            .collect();
        Report {
            since: fmt(self.opts.since),
            until: fmt(self.opts.until),
            policy: self.opts.policy.clone(),
            group: self.opts.group.clone(),
            devices: self.counts.iter().sum(),
            changes: self.changes,
            series: self.series,
            rules,
            failing,
            overrides,
            enforcement: self
                .enforcement
                .into_iter()
                .map(|((plane, action, result), count)| Enforcement { plane, action, result, count })
                .collect(),
            unreadable: self.unreadable,
        }
    }
}

/// The nearest-rank quantile of sorted milliseconds, in seconds.
fn quantile(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as f64 / 1000.0)
}
