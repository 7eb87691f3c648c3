//! Dynamic groups (`policies/groups.toml`): devices fall into groups by
//! their compliance state and their reports, and the groups drive what
//! they may reach (a per-group VLAN and `Filter-Id` in RADIUS answers).
//!
//! A group's conditions all must hold (an empty condition holds for every
//! device). Membership is a pure function of a [`Subject`], so the engine
//! recomputes it on every change of a device, and a policy reload
//! recomputes it for every device.

use super::check::Check;
use super::{Failure, Severity};
use crate::diag::Located;
use crate::telemetry::{Report, UnixMillis};
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

/// The file in the policy directory.
pub const FILE: &str = "groups.toml";

/// Groups a set may have: membership is a 64-bit set per device.
pub const MAX_GROUPS: usize = 64;

/// What a group condition looks at: one device as the engine has it.
pub struct Subject<'a> {
    /// `compliant`, `noncompliant` or `unknown`.
    pub verdict: &'a str,
    pub failures: &'a [Failure],
    /// Its failures cut running sessions now.
    pub quarantined: bool,
    pub held: bool,
    /// `exempt` or `quarantine` while an override is in force.
    pub override_mode: Option<&'a str>,
    /// A remediation plan is running for one of its rules.
    pub remediating: bool,
    /// One of its plans ran out of steps with the rule still failing.
    pub escalated: bool,
    pub report: &'a Report,
    pub now: UnixMillis,
}

/// `override = ...` in a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverrideIs {
    Exempt,
    Quarantine,
    /// Either.
    Any,
    /// No override in force.
    None,
}

/// `remediation = ...` in a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemediationIs {
    /// A plan is running (escalated or not).
    Running,
    Escalated,
    /// No plan running.
    None,
}

/// A group's conditions, as written.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// Any of these verdicts.
    #[serde(default)]
    pub verdict: Vec<String>,
    /// Any of these rules (`policy/rule`) fails.
    #[serde(default)]
    pub failed_rule: Vec<String>,
    /// Some failure is at least this severe.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Its failures cut running sessions now (after grace and mode).
    #[serde(default)]
    pub quarantined: Option<bool>,
    /// Held through a telemetry outage.
    #[serde(default)]
    pub held: Option<bool>,
    #[serde(default, rename = "override")]
    pub override_is: Option<OverrideIs>,
    #[serde(default)]
    pub remediation: Option<RemediationIs>,
    /// Checks on the report's attributes, as in a policy rule; all must pass.
    #[serde(default)]
    pub checks: Vec<Check>,
}

impl Conditions {
    /// True when only the report decides: such a group may be named in a
    /// policy's `applies_to` (one that depends on verdicts would make a
    /// policy decide whether it applies to itself).
    pub fn report_only(&self) -> bool {
        self.verdict.is_empty()
            && self.failed_rule.is_empty()
            && self.severity.is_none()
            && self.quarantined.is_none()
            && self.held.is_none()
            && self.override_is.is_none()
            && self.remediation.is_none()
    }

    /// True when only a restricted device can be a member (its conditions
    /// require a failure, a quarantine, a running plan or a quarantine
    /// override): such a group's VLAN may also place quarantined sessions.
    /// Any other group's VLAN is for members with full access only, so a
    /// group can narrow a quarantine (a remediation portal) but never
    /// widen one.
    pub fn restrictive(&self) -> bool {
        (!self.verdict.is_empty() && !self.verdict.iter().any(|v| v == "compliant"))
            || !self.failed_rule.is_empty()
            || self.severity.is_some()
            || self.quarantined == Some(true)
            || matches!(self.remediation, Some(RemediationIs::Running | RemediationIs::Escalated))
            || self.override_is == Some(OverrideIs::Quarantine)
    }

    /// Do the report's attributes pass every check?
    pub fn report_passes(&self, report: &Report, now: UnixMillis) -> bool {
        self.checks.iter().all(|c| super::eval::fails(c, report, now).is_none())
    }

    pub fn holds(&self, s: &Subject<'_>) -> bool {
        let verdict = self.verdict.is_empty() || self.verdict.iter().any(|v| v == s.verdict);
        let failed = self.failed_rule.is_empty()
            || s.failures.iter().any(|f| {
                let rule = &f.rule().id;
                self.failed_rule.iter().any(|k| k.split_once('/') == Some((f.policy.name.as_str(), rule.as_str())))
            });
        let severity = self.severity.is_none_or(|min| s.failures.iter().any(|f| f.policy.severity >= min));
        let quarantined = self.quarantined.is_none_or(|q| q == s.quarantined);
        let held = self.held.is_none_or(|h| h == s.held);
        let overridden = match self.override_is {
            None => true,
            Some(OverrideIs::Exempt) => s.override_mode == Some("exempt"),
            Some(OverrideIs::Quarantine) => s.override_mode == Some("quarantine"),
            Some(OverrideIs::Any) => s.override_mode.is_some(),
            Some(OverrideIs::None) => s.override_mode.is_none(),
        };
        let remediation = match self.remediation {
            None => true,
            Some(RemediationIs::Running) => s.remediating,
            Some(RemediationIs::Escalated) => s.escalated,
            Some(RemediationIs::None) => !s.remediating,
        };
        verdict
            && failed
            && severity
            && quarantined
            && held
            && overridden
            && remediation
            && self.report_passes(s.report, s.now)
    }
}

/// One group.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub when: Conditions,
    /// The VLAN its members' RADIUS sessions get (the first group in the
    /// file with one wins), unless they are denied.
    #[serde(default)]
    pub vlan: Option<String>,
    /// A `Filter-Id` (RFC 2865 §5.11) for its members' sessions (the first
    /// group in the file with one wins).
    #[serde(default)]
    pub filter_id: Option<String>,
}

/// Every group in force, in file order (which is the order of precedence
/// for `vlan` and `filter_id`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Groups {
    pub groups: Vec<Arc<Group>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    groups: Vec<Group>,
}

impl Groups {
    /// Parses and validates `groups.toml`'s text.
    pub fn parse(file: &Path, text: &str) -> Result<Self, Located> {
        let f: File = toml::from_str(text).map_err(|e| Located::toml(file, text, &e))?;
        if f.groups.len() > MAX_GROUPS {
            return Err(Located::at(file, text, 0, format!("{} groups; at most {MAX_GROUPS}", f.groups.len())));
        }
        let src = crate::diag::Source::new(file, text);
        let mut groups: Vec<Arc<Group>> = Vec::new();
        for (i, g) in f.groups.into_iter().enumerate() {
            let at = src.offset(&["groups", &i.to_string(), "name"]);
            let err = |m: String| Err(src.error_at(at, m));
            let name_ok = !g.name.is_empty()
                && g.name.len() <= 64
                && g.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !name_ok {
                return err(format!("group name {:?}: 1 to 64 of [A-Za-z0-9._-]", g.name));
            }
            if groups.iter().any(|o| o.name == g.name) {
                return Err(src.error_at(at, format!("duplicate group name {:?}", g.name)));
            }
            for v in &g.when.verdict {
                if !["compliant", "noncompliant", "unknown"].contains(&v.as_str()) {
                    return err(format!("group {:?}: verdict {v:?} is not compliant, noncompliant or unknown", g.name));
                }
            }
            for k in &g.when.failed_rule {
                if k.split_once('/').is_none_or(|(p, r)| p.is_empty() || r.is_empty()) {
                    return err(format!("group {:?}: failed_rule {k:?} is not \"policy/rule\"", g.name));
                }
            }
            if g.vlan.as_ref().is_some_and(|v| v.is_empty() || v.len() > 32) {
                return err(format!("group {:?}: vlan must be 1 to 32 characters", g.name));
            }
            // RFC 2865 §5.11: at least one octet; an attribute holds 253.
            if g.filter_id.as_ref().is_some_and(|v| v.is_empty() || v.len() > 253) {
                return err(format!("group {:?}: filter_id must be 1 to 253 bytes", g.name));
            }
            groups.push(Arc::new(g));
        }
        Ok(Self { groups })
    }

    /// Loads `dir/groups.toml`; none when there is no such file.
    pub fn load(dir: &Path) -> Result<Self, Located> {
        let file = dir.join(FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) => Self::parse(&file, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Located::file(&file, format!("cannot read: {e}"))),
        }
    }

    /// The groups `s` is in, as a bit set (bit i: `groups[i]`).
    pub fn of(&self, s: &Subject<'_>) -> u64 {
        self.groups.iter().enumerate().filter(|(_, g)| g.when.holds(s)).fold(0, |set, (i, _)| set | 1 << i)
    }

    /// The names of the groups in `set`.
    pub fn names(&self, set: u64) -> impl Iterator<Item = &str> {
        self.groups.iter().enumerate().filter(move |(i, _)| set & (1 << i) != 0).map(|(_, g)| g.name.as_str())
    }

    /// The VLAN of the first group in `set` that has one and may place a
    /// session (`restricted`: a quarantined one; see
    /// [`Conditions::restrictive`]).
    pub fn vlan(&self, set: u64, restricted: bool) -> Option<&str> {
        self.first(set, restricted, |g| g.vlan.as_deref())
    }

    /// The `Filter-Id` of the first such group that has one.
    pub fn filter_id(&self, set: u64, restricted: bool) -> Option<&str> {
        self.first(set, restricted, |g| g.filter_id.as_deref())
    }

    fn first<'a>(&'a self, set: u64, restricted: bool, f: impl Fn(&'a Group) -> Option<&'a str>) -> Option<&'a str> {
        self.groups
            .iter()
            .enumerate()
            .filter(|(i, g)| set & (1 << i) != 0 && (!restricted || g.when.restrictive()))
            .find_map(|(_, g)| f(g))
    }

    pub fn get(&self, name: &str) -> Option<(usize, &Arc<Group>)> {
        self.groups.iter().enumerate().find(|(_, g)| g.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUPS: &str = r#"
[[groups]]
name = "escalated"
description = "Plans that ran out: to the remediation portal"
when = { remediation = "escalated" }
vlan = "950"
filter_id = "portal-only"

[[groups]]
name = "quarantined-critical"
when = { verdict = ["noncompliant"], severity = "critical", quarantined = true }
vlan = "999"

[[groups]]
name = "stale"
when = { verdict = ["unknown"] }

[[groups]]
name = "android-14"
when = { checks = [{ attr = "os", eq = "android" }, { attr = "os_version", version_gte = "14" }] }

[[groups]]
name = "exempted"
when = { override = "exempt" }
"#;

    fn groups() -> Groups {
        Groups::parse(Path::new("groups.toml"), GROUPS).unwrap()
    }

    fn report(os: &str, version: &str) -> Report {
        serde_json::from_value(
            serde_json::json!({"seq": 1, "ts": "2026-12-03T10:00:00Z", "os": os, "os_version": version}),
        )
        .unwrap()
    }

    fn subject<'a>(verdict: &'a str, report: &'a Report) -> Subject<'a> {
        Subject {
            verdict,
            failures: &[],
            quarantined: false,
            held: false,
            override_mode: None,
            remediating: false,
            escalated: false,
            report,
            now: 0,
        }
    }

    /// Membership against a reference written out condition by condition.
    #[test]
    fn membership_matches_a_reference_model() {
        let g = groups();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let verdict = ["compliant", "noncompliant", "unknown"][rng.usize(..3)];
            let report = report(["android", "ios"][rng.usize(..2)], ["13.1", "14.0.2", "15"][rng.usize(..3)]);
            let mut s = subject(verdict, &report);
            s.quarantined = rng.bool();
            s.escalated = rng.bool();
            s.remediating = s.escalated || rng.bool();
            s.override_mode = [None, Some("exempt"), Some("quarantine")][rng.usize(..3)];
            let set = g.of(&s);
            let want = [
                s.escalated,
                // No failures here: severity never holds.
                false,
                verdict == "unknown",
                report.os.as_deref() == Some("android") && report.os_version.as_deref() != Some("13.1"),
                s.override_mode == Some("exempt"),
            ];
            for (i, w) in want.iter().enumerate() {
                assert_eq!(set & (1 << i) != 0, *w, "group {} for {verdict} {:?}", g.groups[i].name, report.os_version);
            }
        }
    }

    #[test]
    fn the_first_group_with_a_vlan_or_filter_wins() {
        let g = groups();
        assert_eq!(g.vlan(0b11, true), Some("950"));
        assert_eq!(g.vlan(0b10, true), Some("999"));
        assert_eq!(g.filter_id(0b10, false), None);
        assert_eq!(g.filter_id(0b01, false), Some("portal-only"));
        let open = Groups::parse(Path::new("g.toml"), "[[groups]]\nname = \"a\"\nvlan = \"200\"\n").unwrap();
        assert_eq!(open.vlan(1, false), Some("200"), "full access: any group's VLAN");
        assert_eq!(open.vlan(1, true), None, "a group that may hold compliant devices never widens a quarantine");
        assert_eq!(g.names(0b1001).collect::<Vec<_>>(), ["escalated", "android-14"]);
        assert!(g.groups[3].when.report_only() && !g.groups[2].when.report_only());
    }

    #[test]
    fn bad_groups_are_refused_with_their_location() {
        for (text, want) in [
            ("[[groups]]\nname = \"a b\"\n", "1 to 64"),
            ("[[groups]]\nname = \"a\"\n[[groups]]\nname = \"a\"\n", "duplicate"),
            ("[[groups]]\nname = \"a\"\nwhen = { verdict = [\"bad\"] }\n", "verdict"),
            ("[[groups]]\nname = \"a\"\nwhen = { failed_rule = [\"norule\"] }\n", "policy/rule"),
            ("[[groups]]\nname = \"a\"\nvlan = \"\"\n", "vlan"),
            ("[[groups]]\nname = \"a\"\nwhen = { colour = \"red\" }\n", "unknown field"),
        ] {
            let e = Groups::parse(Path::new("groups.toml"), text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let many: String = (0..65).map(|i| format!("[[groups]]\nname = \"g{i}\"\n")).collect();
        assert!(Groups::parse(Path::new("groups.toml"), &many).unwrap_err().to_string().contains("at most 64"));
        let e = Groups::parse(Path::new("groups.toml"), "[[groups]]\nname = \"a\"\n[[groups]]\nname = \"a\"\n");
        assert!(e.unwrap_err().to_string().starts_with("groups.toml:4:8:"));
    }
}
