//! Policies: what a compliant device looks like, loaded from `policies/*.toml`.
//!
//! Loading compiles each file into a [`Policy`] (every check typed and every
//! attribute name resolved) so that evaluation ([`decide`]) never parses and
//! never fails.

pub mod cases;
mod check;
mod eval;
pub mod groups;
pub mod plan;
pub mod version;

pub use check::{Attr, Check, Op, Scalar};
pub use eval::{Evaluation, Failure, decide};
pub use groups::{Group, Groups};
pub use plan::{Plan, Step};

use crate::diag::Located;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How bad a violation is (PRODUCT.md: minor never quarantines).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Minor,
    Major,
    Critical,
}

/// When a policy is enforced: an MDM's "when to apply".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Continuously: a violation cuts an existing session.
    #[default]
    Always,
    /// Only when a session starts.
    Admission,
    /// Recorded and reported, never enforced.
    Monitor,
}

/// Which devices a policy applies to. Empty lists mean "any".
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliesTo {
    /// Groups the device reports itself in, or dynamic groups (from
    /// `groups.toml`) decided by its report alone.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub os: Vec<String>,
    /// The names in `groups` that are dynamic groups, resolved at load.
    #[serde(skip)]
    pub dynamic: Vec<Arc<Group>>,
}

/// One rule of a policy.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
    pub check: Check,
    /// The command sent to the device when this rule fails.
    #[serde(default)]
    pub remediation: Option<String>,
    /// The name of the remediation plan (in the same file) that runs while
    /// this rule fails; a rule with a `remediation` and no plan sends its
    /// command once, at once.
    #[serde(default)]
    pub plan: Option<String>,
    /// The plan resolved at load: `None` when the rule asks nothing of the
    /// device.
    #[serde(skip)]
    pub resolved_plan: Option<Arc<Plan>>,
}

/// A compiled policy.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub applies_to: AppliesTo,
    pub severity: Severity,
    #[serde(default)]
    pub enforcement: Enforcement,
    /// How long a violation may last before it is enforced.
    #[serde(default, with = "crate::diag::duration")]
    pub grace: Duration,
    pub rules: Vec<Rule>,
    /// Remediation plans, as written (compiled into the rules' `resolved_plan`).
    #[serde(default)]
    plans: Vec<plan::PlanText>,
    /// The file it came from, for messages.
    #[serde(skip)]
    pub source: PathBuf,
}

impl Policy {
    /// Parses and validates one policy file's text.
    pub fn parse(file: &Path, text: &str) -> Result<Self, Located> {
        let mut policy: Policy = toml::from_str(text).map_err(|e| Located::toml(file, text, &e))?;
        policy.source = file.to_path_buf();
        let src = crate::diag::Source::new(file, text);
        if policy.name.trim().is_empty() {
            return Err(src.error(&["name"], "policy name must not be empty"));
        }
        if policy.rules.is_empty() {
            return Err(Located::at(file, text, 0, "a policy needs at least one [[rules]]"));
        }
        if policy.rules.len() > usize::from(u16::MAX) {
            return Err(Located::at(file, text, 0, "too many rules in one policy"));
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            let id_at = || src.offset(&["rules", &i.to_string(), "id"]);
            if rule.id.trim().is_empty() || rule.id.contains('/') {
                return Err(src.error_at(id_at(), "rule id must be non-empty and contain no '/'"));
            }
            if policy.rules[..i].iter().any(|r| r.id == rule.id) {
                return Err(src.error_at(id_at(), format!("duplicate rule id {:?}", rule.id)));
            }
        }
        policy.resolve_plans(&src)?;
        Ok(policy)
    }

    /// Compiles the plans and gives each rule its own.
    fn resolve_plans(&mut self, src: &crate::diag::Source) -> Result<(), Located> {
        let mut plans: Vec<Arc<Plan>> = Vec::new();
        for (i, p) in std::mem::take(&mut self.plans).into_iter().enumerate() {
            let p = Plan::compile(p, src, i)?;
            if plans.iter().any(|o| o.name == p.name) {
                let at = src.offset(&["plans", &i.to_string(), "name"]);
                return Err(src.error_at(at, format!("duplicate plan name {:?}", p.name)));
            }
            plans.push(Arc::new(p));
        }
        let fix = Arc::new(Plan::fix_at_once());
        for (i, rule) in self.rules.iter_mut().enumerate() {
            let at = || src.offset(&["rules", &i.to_string(), "plan"]);
            rule.resolved_plan = match (&rule.plan, &rule.remediation) {
                (Some(name), _) => {
                    let Some(p) = plans.iter().find(|p| &p.name == name) else {
                        return Err(
                            src.error_at(at(), format!("rule {:?}: no plan named {name:?} in this file", rule.id))
                        );
                    };
                    if p.needs_fix() && rule.remediation.is_none() {
                        return Err(src.error_at(
                            at(),
                            format!(
                                "rule {:?}: plan {name:?} has a `fix` step, and the rule no `remediation` command",
                                rule.id
                            ),
                        ));
                    }
                    Some(Arc::clone(p))
                }
                (None, Some(_)) => Some(Arc::clone(&fix)),
                (None, None) => None,
            };
        }
        Ok(())
    }

    /// Resolves the dynamic groups named in `applies_to`: each must be
    /// decided by the report alone.
    fn resolve_groups(&mut self, groups: &Groups, file: &Path, text: &str) -> Result<(), Located> {
        let src = crate::diag::Source::new(file, text);
        for (i, name) in self.applies_to.groups.iter().enumerate() {
            let Some((_, g)) = groups.get(name) else { continue };
            if !g.when.report_only() {
                return Err(src.error(
                    &["applies_to", "groups", &i.to_string()],
                    format!(
                        "group {name:?} depends on verdicts or remediation; a policy can only apply to a group decided by the report alone"
                    ),
                ));
            }
            self.applies_to.dynamic.push(Arc::clone(g));
        }
        Ok(())
    }

    /// Does this policy apply to a device reporting `report`?
    pub fn applies(&self, report: &crate::telemetry::Report, now: crate::telemetry::UnixMillis) -> bool {
        let groups_ok = self.applies_to.groups.is_empty()
            || report.in_any_group(&self.applies_to.groups)
            || self.applies_to.dynamic.iter().any(|g| g.when.report_passes(report, now));
        let os_ok = self.applies_to.os.is_empty()
            || report.os.as_deref().is_some_and(|os| self.applies_to.os.iter().any(|o| o.eq_ignore_ascii_case(os)));
        groups_ok && os_ok
    }
}

/// Every policy in force, in name order (so evaluation is deterministic),
/// and the dynamic groups.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    pub policies: Vec<Arc<Policy>>,
    pub groups: Arc<Groups>,
}

impl PolicySet {
    /// Loads every `*.toml` directly in `dir` (not `dir/tests/`). All files are
    /// checked; every error found is returned, not just the first.
    pub fn load_dir(dir: &Path) -> Result<Self, Vec<Located>> {
        let files = toml_files(dir).map_err(|e| vec![e])?;
        let groups = Groups::load(dir).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let mut policies: Vec<Arc<Policy>> = Vec::new();
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(Located::file(&file, format!("cannot read: {e}")));
                    continue;
                }
            };
            match Policy::parse(&file, &text).and_then(|mut p| p.resolve_groups(&groups, &file, &text).map(|()| p)) {
                Ok(p) => {
                    if let Some(other) = policies.iter().find(|o| o.name == p.name) {
                        errors.push(crate::diag::Source::new(&file, &text).error(
                            &["name"],
                            format!("policy name {:?} is also used by {}", p.name, other.source.display()),
                        ));
                    } else {
                        policies.push(Arc::new(p));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { policies, groups: Arc::new(groups) })
    }

    /// Number of rules across all policies.
    pub fn rule_count(&self) -> usize {
        self.policies.iter().map(|p| p.rules.len()).sum()
    }
}

/// The `*.toml` files directly in `dir`, sorted by name.
pub(crate) fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, Located> {
    let entries = std::fs::read_dir(dir).map_err(|e| Located::file(dir, format!("cannot read directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| p.file_name().is_none_or(|n| n != groups::FILE))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, String> {
        Policy::parse(Path::new("p.toml"), text).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"
name = "pos-baseline"
applies_to = { groups = ["pos"] }
severity = "critical"
grace = "0s"

[[rules]]
id = "disk-encrypted"
check = { attr = "encrypted", eq = true }
remediation = "enable_encryption"
"#;

    #[test]
    fn parses_a_policy() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.name, "pos-baseline");
        assert_eq!(p.enforcement, Enforcement::Always);
        assert_eq!(p.rules[0].remediation.as_deref(), Some("enable_encryption"));
    }

    #[test]
    fn errors_are_located() {
        let cases = [
            (GOOD.replace("severity = \"critical\"", "severity = \"urgent\""), "p.toml:4:12:"),
            (GOOD.replace("grace = \"0s\"", "grace = \"soon\""), "p.toml:5:9:"),
            (GOOD.replace("attr = \"encrypted\"", "attr = \"encrypted_disk\""), "p.toml:9:9:"),
            (GOOD.replace("eq = true", "eq = true, ne = false"), "p.toml:9:9:"),
            (GOOD.replace("remediation", "remedy"), "p.toml:10:1:"),
            (
                format!("{GOOD}\n[[rules]]\nid = \"disk-encrypted\"\ncheck = {{ attr = \"rooted\", eq = false }}\n"),
                "p.toml:13:6:",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.starts_with(want), "want {want}, got {err}");
        }
    }
    /// A policy may apply to a dynamic group decided by the report alone
    /// (and `groups.toml` is not read as a policy); one that depends on
    /// verdicts is refused, located.
    #[test]
    fn applies_to_names_report_only_dynamic_groups() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("groups.toml"),
            "[[groups]]\nname = \"old-android\"\nwhen = { checks = [{ attr = \"os_version\", version_lt = \"14\" }] }\n\
             [[groups]]\nname = \"stale\"\nwhen = { verdict = [\"unknown\"] }\n",
        )
        .unwrap();
        let policy = "name = \"p\"\nseverity = \"major\"\napplies_to = { groups = [\"old-android\"] }\n\
                      [[rules]]\nid = \"r\"\ncheck = { attr = \"encrypted\", eq = true }\n";
        std::fs::write(dir.path().join("p.toml"), policy).unwrap();
        let set = PolicySet::load_dir(dir.path()).unwrap();
        assert_eq!(set.policies.len(), 1, "groups.toml is not a policy");
        assert_eq!(set.groups.groups.len(), 2);
        let report = |v: &str| -> crate::telemetry::Report {
            serde_json::from_value(serde_json::json!({"seq": 1, "ts": "2026-12-03T10:00:00Z", "os_version": v}))
                .unwrap()
        };
        assert!(set.policies[0].applies(&report("13.0"), 0));
        assert!(!set.policies[0].applies(&report("14.1"), 0));
        std::fs::write(dir.path().join("p.toml"), policy.replace("old-android", "stale")).unwrap();
        let errors = PolicySet::load_dir(dir.path()).unwrap_err();
        assert!(errors[0].to_string().contains("depends on verdicts"), "{}", errors[0]);
        assert!(errors[0].to_string().contains("p.toml:3:"), "{}", errors[0]);
    }
}
