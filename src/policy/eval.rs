//! The pure evaluation: a policy set and a report in, the failed rules out.

use super::check::{Attr, Check, Op, Scalar};
use super::{Policy, PolicySet};
use crate::telemetry::{Report, UnixMillis};
use std::sync::Arc;

/// A rule a device fails.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub policy: Arc<Policy>,
    /// Index into `policy.rules`.
    pub rule: u16,
    /// What the device reported, rendered for people (`absent` when missing).
    pub observed: Box<str>,
    /// When this rule started failing (wall clock): grace runs from here.
    pub since: UnixMillis,
}

impl Failure {
    pub fn rule(&self) -> &super::Rule {
        // `rule` was produced by enumerating `policy.rules` of this very policy.
        &self.policy.rules[usize::from(self.rule)]
    }

    /// `policy/rule`, the failure's name in reports and tests.
    pub fn key(&self) -> String {
        format!("{}/{}", self.policy.name, self.rule().id)
    }

    /// Same policy and rule (ignoring the observed value and since).
    pub fn same_rule(&self, other: &Failure) -> bool {
        self.rule == other.rule && self.policy.name == other.policy.name
    }
}

/// The outcome of evaluating one report: empty means compliant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub failures: Vec<Failure>,
}

impl Evaluation {
    pub fn compliant(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Evaluates every applicable policy against `report`. Pure: `now` is only
/// used by `within`. Allocates nothing for a compliant device.
pub fn decide(set: &PolicySet, report: &Report, now: UnixMillis) -> Evaluation {
    let mut failures = Vec::new();
    for policy in &set.policies {
        if !policy.applies(report, now) {
            continue;
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            if let Some(observed) = fails(&rule.check, report, now) {
                failures.push(Failure {
                    policy: Arc::clone(policy),
                    rule: i as u16, // Policy::parse caps rules at u16::MAX
                    observed,
                    since: now,
                });
            }
        }
    }
    Evaluation { failures }
}

/// `None` when the check passes, else the observed value for the report.
pub(crate) fn fails(check: &Check, report: &Report, now: UnixMillis) -> Option<Box<str>> {
    let value = observe(&check.attr, report);
    if let Some(v) = &value
        && passes(&check.op, v, now)
    {
        return None;
    }
    Some(value.map_or_else(|| "absent".into(), |v| v.render().into_boxed_str()))
}

/// A borrowed view of one attribute's value.
#[derive(Debug)]
enum Value<'a> {
    Bool(bool),
    Num(f64),
    Str(&'a str),
    Strs(&'a [Arc<str>]),
    Ports(&'a [u16]),
    Time(UnixMillis),
    Json(&'a serde_json::Value),
}

fn observe<'a>(attr: &Attr, r: &'a Report) -> Option<Value<'a>> {
    let s = |v: &'a Option<Arc<str>>| v.as_deref().map(Value::Str);
    let l = |v: &'a Option<Arc<[Arc<str>]>>| v.as_deref().map(Value::Strs);
    match attr {
        Attr::Ts => Some(Value::Time(r.ts)),
        Attr::Os => s(&r.os),
        Attr::OsVersion => s(&r.os_version),
        Attr::SecurityPatch => s(&r.security_patch),
        Attr::Encrypted => r.encrypted.map(Value::Bool),
        Attr::Passcode => r.passcode.map(Value::Bool),
        Attr::Firewall => r.firewall.map(Value::Bool),
        Attr::Rooted => r.rooted.map(Value::Bool),
        Attr::KioskMode => r.kiosk_mode.map(Value::Bool),
        Attr::AppsInstalled => l(&r.apps_installed),
        Attr::AppsRunning => l(&r.apps_running),
        Attr::WifiSsid => s(&r.wifi_ssid),
        Attr::OpenPorts => r.open_ports.as_deref().map(Value::Ports),
        Attr::MacAddresses => l(&r.mac_addresses),
        Attr::WgPublicKey => s(&r.wg_public_key),
        Attr::CertIdentity => s(&r.cert_identity),
        Attr::Groups => l(&r.groups),
        Attr::AgentVersion => s(&r.agent_version),
        Attr::Extra(key) => match r.attributes.as_ref()?.get(&**key)? {
            serde_json::Value::Null => None,
            serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
            serde_json::Value::Number(n) => n.as_f64().map(Value::Num),
            serde_json::Value::String(s) => Some(Value::Str(s)),
            other => Some(Value::Json(other)),
        },
    }
}

/// One element of a list, or a scalar, compared with a policy literal.
#[derive(Clone, Copy, Debug)]
enum Item<'a> {
    Bool(bool),
    Num(f64),
    Str(&'a str),
}

impl Item<'_> {
    fn matches(self, want: &Scalar) -> bool {
        match (self, want) {
            (Item::Bool(a), Scalar::Bool(b)) => a == *b,
            (Item::Num(a), Scalar::Int(b)) => a == *b as f64,
            (Item::Num(a), Scalar::Float(b)) => a == *b,
            (Item::Str(a), Scalar::Str(b)) => a == b,
            _ => false,
        }
    }

    fn from_json(v: &serde_json::Value) -> Option<Item<'_>> {
        match v {
            serde_json::Value::Bool(b) => Some(Item::Bool(*b)),
            serde_json::Value::Number(n) => n.as_f64().map(Item::Num),
            serde_json::Value::String(s) => Some(Item::Str(s)),
            _ => None,
        }
    }
}

impl<'a> Value<'a> {
    fn scalar(&self) -> Option<Item<'a>> {
        match *self {
            Value::Bool(b) => Some(Item::Bool(b)),
            Value::Num(n) => Some(Item::Num(n)),
            Value::Str(s) => Some(Item::Str(s)),
            _ => None,
        }
    }

    /// The elements, when this is a list. A non-scalar element makes the
    /// whole list incomparable (the rule fails).
    fn items(&self) -> Option<Vec<Item<'a>>> {
        match *self {
            Value::Strs(v) => Some(v.iter().map(|s| Item::Str(s)).collect()),
            Value::Ports(v) => Some(v.iter().map(|p| Item::Num(f64::from(*p))).collect()),
            Value::Json(serde_json::Value::Array(v)) => v.iter().map(Item::from_json).collect(),
            _ => None,
        }
    }

    /// Any element matches; without allocating for the built-in lists.
    fn any(&self, want: &Scalar) -> Option<bool> {
        match *self {
            Value::Strs(v) => Some(v.iter().any(|s| Item::Str(s).matches(want))),
            Value::Ports(v) => Some(v.iter().any(|p| Item::Num(f64::from(*p)).matches(want))),
            _ => self.items().map(|items| items.into_iter().any(|i| i.matches(want))),
        }
    }

    fn time(&self) -> Option<UnixMillis> {
        match *self {
            Value::Time(t) => Some(t),
            Value::Str(s) => parse_time(s),
            _ => None,
        }
    }

    fn render(&self) -> String {
        match self {
            Value::Bool(b) => b.to_string(),
            Value::Num(n) => n.to_string(),
            Value::Str(s) => format!("{s:?}"),
            Value::Strs(v) => serde_json::to_string(v).unwrap_or_default(),
            Value::Ports(v) => serde_json::to_string(v).unwrap_or_default(),
            Value::Time(t) => crate::telemetry::report::format_rfc3339(*t),
            Value::Json(v) => v.to_string(),
        }
    }
}

fn passes(op: &Op, value: &Value<'_>, now: UnixMillis) -> bool {
    let scalar = value.scalar();
    match op {
        Op::Eq(want) => scalar.is_some_and(|v| v.matches(want)),
        Op::Ne(want) => scalar.is_some_and(|v| !v.matches(want)),
        Op::OneOf(set) => scalar.is_some_and(|v| set.iter().any(|w| v.matches(w))),
        Op::NotOneOf(set) => scalar.is_some_and(|v| !set.iter().any(|w| v.matches(w))),
        Op::Contains(want) => match (value, want) {
            (Value::Str(s), Scalar::Str(w)) => s.contains(w.as_str()),
            _ => value.any(want) == Some(true),
        },
        Op::NotContains(want) => match (value, want) {
            (Value::Str(s), Scalar::Str(w)) => !s.contains(w.as_str()),
            _ => value.any(want) == Some(false),
        },
        Op::SubsetOf(set) => value.items().is_some_and(|items| items.iter().all(|i| set.iter().any(|w| i.matches(w)))),
        Op::VersionGte(want) => version(value).is_some_and(|v| v >= *want),
        Op::VersionLt(want) => version(value).is_some_and(|v| v < *want),
        Op::Gte(x) => matches!(scalar, Some(Item::Num(n)) if n >= *x),
        Op::Lte(x) => matches!(scalar, Some(Item::Num(n)) if n <= *x),
        Op::Present => true,
        Op::Within(max) => {
            value.time().is_some_and(|t| now.saturating_sub(t) <= i64::try_from(max.as_millis()).unwrap_or(i64::MAX))
        }
    }
}

fn version(value: &Value<'_>) -> Option<super::version::Version> {
    match value {
        Value::Str(s) => super::version::Version::parse(s),
        Value::Num(n) => super::version::Version::parse(&n.to_string()),
        _ => None,
    }
}

/// A timestamp in a string attribute: RFC 3339, or a date (`2026-10-05`, taken
/// as midnight UTC), as MDMs report security patch levels.
fn parse_time(s: &str) -> Option<UnixMillis> {
    use time::format_description::well_known::Rfc3339;
    use time::{Date, OffsetDateTime, macros::format_description};
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok();
    }
    let date = Date::parse(s, format_description!("[year]-[month]-[day]")).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp() * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const NOW: UnixMillis = 1_795_000_000_000; // 2026-11-18T11:06:40Z

    fn report(json: &str) -> Report {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["seq"] = 1.into();
        v["ts"] = crate::telemetry::report::format_rfc3339(NOW).into();
        serde_json::from_value(v).unwrap()
    }

    /// Evaluates one check (written as TOML) against a report (written as JSON).
    fn check(check: &str, json: &str) -> bool {
        let text = format!("name = \"t\"\nseverity = \"major\"\n[[rules]]\nid = \"r\"\ncheck = {check}\n");
        let policy = super::super::Policy::parse(Path::new("t.toml"), &text).unwrap();
        let set = PolicySet { policies: vec![Arc::new(policy)], ..Default::default() };
        decide(&set, &report(json), NOW).compliant()
    }

    #[test]
    fn eq_and_ne() {
        assert!(check(r#"{ attr = "encrypted", eq = true }"#, r#"{"encrypted":true}"#));
        assert!(!check(r#"{ attr = "encrypted", eq = true }"#, r#"{"encrypted":false}"#));
        assert!(!check(r#"{ attr = "encrypted", eq = true }"#, r#"{}"#));
        assert!(check(r#"{ attr = "os", eq = "android" }"#, r#"{"os":"android"}"#));
        assert!(!check(r#"{ attr = "os", eq = "android" }"#, r#"{"os":"ios"}"#));
        assert!(check(r#"{ attr = "rooted", ne = true }"#, r#"{"rooted":false}"#));
        assert!(!check(r#"{ attr = "rooted", ne = true }"#, r#"{"rooted":true}"#));
        assert!(!check(r#"{ attr = "rooted", ne = true }"#, r#"{}"#), "absence never passes");
        assert!(!check(r#"{ attr = "encrypted", eq = "true" }"#, r#"{"encrypted":true}"#), "types differ");
        assert!(check(r#"{ attr = "attributes.battery", eq = 80 }"#, r#"{"attributes":{"battery":80}}"#));
        assert!(!check(r#"{ attr = "apps_running", eq = "a" }"#, r#"{"apps_running":["a"]}"#), "a list is no scalar");
    }

    #[test]
    fn one_of_and_not_one_of() {
        let c = r#"{ attr = "wifi_ssid", one_of = ["ACME-STORE", "ACME-STORE-5G"] }"#;
        assert!(check(c, r#"{"wifi_ssid":"ACME-STORE-5G"}"#));
        assert!(!check(c, r#"{"wifi_ssid":"Starbucks"}"#));
        assert!(!check(c, r#"{}"#));
        let c = r#"{ attr = "os", not_one_of = ["windows-xp"] }"#;
        assert!(check(c, r#"{"os":"android"}"#));
        assert!(!check(c, r#"{"os":"windows-xp"}"#));
        assert!(!check(c, r#"{}"#));
    }

    #[test]
    fn contains_and_not_contains() {
        let c = r#"{ attr = "apps_running", contains = "com.acme.pos" }"#;
        assert!(check(c, r#"{"apps_running":["x","com.acme.pos"]}"#));
        assert!(!check(c, r#"{"apps_running":["x"]}"#));
        assert!(!check(c, r#"{"apps_running":[]}"#));
        assert!(!check(c, r#"{}"#));
        let c = r#"{ attr = "apps_installed", not_contains = "com.evil" }"#;
        assert!(check(c, r#"{"apps_installed":["x"]}"#));
        assert!(check(c, r#"{"apps_installed":[]}"#));
        assert!(!check(c, r#"{"apps_installed":["com.evil"]}"#));
        assert!(!check(c, r#"{}"#));
        assert!(check(r#"{ attr = "open_ports", contains = 443 }"#, r#"{"open_ports":[443]}"#));
        assert!(check(r#"{ attr = "os_version", contains = "LTS" }"#, r#"{"os_version":"22.04 LTS"}"#));
        assert!(check(r#"{ attr = "attributes.tags", contains = "a" }"#, r#"{"attributes":{"tags":["a"]}}"#));
    }

    #[test]
    fn subset_of() {
        let c = r#"{ attr = "open_ports", subset_of = [443, 8443] }"#;
        assert!(check(c, r#"{"open_ports":[443]}"#));
        assert!(check(c, r#"{"open_ports":[]}"#));
        assert!(!check(c, r#"{"open_ports":[443, 22]}"#));
        assert!(!check(c, r#"{}"#));
        assert!(!check(c, r#"{"attributes":{}}"#));
    }

    #[test]
    fn versions() {
        let c = r#"{ attr = "os_version", version_gte = "14.0" }"#;
        assert!(check(c, r#"{"os_version":"14.0.1"}"#));
        assert!(check(c, r#"{"os_version":"14"}"#));
        assert!(!check(c, r#"{"os_version":"13.9.9"}"#));
        assert!(!check(c, r#"{"os_version":"9"}"#));
        assert!(!check(c, r#"{"os_version":"unknown"}"#));
        assert!(!check(c, r#"{}"#));
        let c = r#"{ attr = "agent_version", version_lt = "10" }"#;
        assert!(check(c, r#"{"agent_version":"9.5"}"#));
        assert!(!check(c, r#"{"agent_version":"10.0"}"#));
    }

    #[test]
    fn gte_and_lte() {
        assert!(check(r#"{ attr = "attributes.battery", gte = 20 }"#, r#"{"attributes":{"battery":20}}"#));
        assert!(!check(r#"{ attr = "attributes.battery", gte = 20 }"#, r#"{"attributes":{"battery":19.5}}"#));
        assert!(check(r#"{ attr = "attributes.temp", lte = 70.5 }"#, r#"{"attributes":{"temp":70}}"#));
        assert!(!check(r#"{ attr = "attributes.temp", lte = 70.5 }"#, r#"{"attributes":{"temp":"cold"}}"#));
        assert!(!check(r#"{ attr = "attributes.temp", lte = 70.5 }"#, r#"{}"#));
    }

    #[test]
    fn present() {
        assert!(check(r#"{ attr = "cert_identity", present = true }"#, r#"{"cert_identity":"x"}"#));
        assert!(!check(r#"{ attr = "cert_identity", present = true }"#, r#"{"cert_identity":null}"#));
        assert!(!check(r#"{ attr = "cert_identity", present = true }"#, r#"{}"#));
    }

    #[test]
    fn within() {
        let c = r#"{ attr = "security_patch", within = "90days" }"#;
        assert!(check(c, r#"{"security_patch":"2026-10-05"}"#));
        assert!(!check(c, r#"{"security_patch":"2026-01-05"}"#));
        assert!(!check(c, r#"{"security_patch":"last tuesday"}"#));
        assert!(check(r#"{ attr = "ts", within = "1m" }"#, r#"{}"#));
        assert!(check(
            r#"{ attr = "attributes.scan", within = "1h" }"#,
            r#"{"attributes":{"scan":"2026-11-18T10:30:00Z"}}"#
        ));
        assert!(!check(
            r#"{ attr = "attributes.scan", within = "10m" }"#,
            r#"{"attributes":{"scan":"2026-11-18T10:30:00Z"}}"#
        ));
    }

    #[test]
    fn applies_to_filters_devices() {
        let text = "name = \"t\"\nseverity = \"major\"\napplies_to = { groups = [\"pos\"], os = [\"android\"] }\n[[rules]]\nid = \"r\"\ncheck = { attr = \"encrypted\", eq = true }\n";
        let policy = super::super::Policy::parse(Path::new("t.toml"), text).unwrap();
        let set = PolicySet { policies: vec![Arc::new(policy)], ..Default::default() };
        let bad = |extra: &str| decide(&set, &report(&format!("{{\"encrypted\":false{extra}}}")), NOW).failures.len();
        assert_eq!(bad(r#","groups":["pos"],"os":"android""#), 1);
        assert_eq!(bad(r#","groups":["pos"],"os":"Android""#), 1);
        assert_eq!(bad(r#","groups":["laptops"],"os":"android""#), 0);
        assert_eq!(bad(r#","groups":["pos"],"os":"ios""#), 0);
        assert_eq!(bad(r#","os":"android""#), 0);
    }

    #[test]
    fn failures_say_what_was_observed() {
        let text = "name = \"t\"\nseverity = \"major\"\n[[rules]]\nid = \"min-os\"\ncheck = { attr = \"os_version\", version_gte = \"14.0\" }\n[[rules]]\nid = \"enc\"\ncheck = { attr = \"encrypted\", eq = true }\n";
        let policy = super::super::Policy::parse(Path::new("t.toml"), text).unwrap();
        let set = PolicySet { policies: vec![Arc::new(policy)], ..Default::default() };
        let eval = decide(&set, &report(r#"{"os_version":"13.1"}"#), NOW);
        let got: Vec<(String, &str, String)> =
            eval.failures.iter().map(|f| (f.key(), &*f.observed, f.rule().check.expected())).collect();
        assert_eq!(
            got,
            vec![("t/min-os".into(), "\"13.1\"", ">= 14.0".into()), ("t/enc".into(), "absent", "== true".into())]
        );
    }
}
