//! One rule's check: an attribute and an operator, typed at load time.

use super::version::Version;
use serde::Deserialize;
use std::time::Duration;

/// An attribute of a device report that a rule can test.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Attr {
    Ts,
    Os,
    OsVersion,
    SecurityPatch,
    Encrypted,
    Passcode,
    Firewall,
    Rooted,
    KioskMode,
    AppsInstalled,
    AppsRunning,
    WifiSsid,
    OpenPorts,
    MacAddresses,
    WgPublicKey,
    CertIdentity,
    Groups,
    AgentVersion,
    /// `attributes.<key>`: a free-form extra.
    Extra(Box<str>),
}

impl Attr {
    const NAMED: [(&'static str, Attr); 18] = [
        ("ts", Attr::Ts),
        ("os", Attr::Os),
        ("os_version", Attr::OsVersion),
        ("security_patch", Attr::SecurityPatch),
        ("encrypted", Attr::Encrypted),
        ("passcode", Attr::Passcode),
        ("firewall", Attr::Firewall),
        ("rooted", Attr::Rooted),
        ("kiosk_mode", Attr::KioskMode),
        ("apps_installed", Attr::AppsInstalled),
        ("apps_running", Attr::AppsRunning),
        ("wifi_ssid", Attr::WifiSsid),
        ("open_ports", Attr::OpenPorts),
        ("mac_addresses", Attr::MacAddresses),
        ("wg_public_key", Attr::WgPublicKey),
        ("cert_identity", Attr::CertIdentity),
        ("groups", Attr::Groups),
        ("agent_version", Attr::AgentVersion),
    ];

    /// Resolves a name from a policy file.
    pub fn parse(name: &str) -> Result<Self, String> {
        if let Some(key) = name.strip_prefix("attributes.") {
            if key.is_empty() {
                return Err("attributes.<key> needs a key".into());
            }
            return Ok(Attr::Extra(key.into()));
        }
        Self::NAMED.iter().find(|(n, _)| *n == name).map(|(_, a)| a.clone()).ok_or_else(|| {
            let known: Vec<&str> = Self::NAMED.iter().map(|(n, _)| *n).collect();
            format!("unknown attribute {name:?}; known: {}, or attributes.<key>", known.join(", "))
        })
    }

    /// The name as written in policies.
    pub fn name(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Attr::Extra(k) => format!("attributes.{k}").into(),
            other => Self::NAMED.iter().find(|(_, a)| a == other).map_or("?", |(n, _)| n).into(),
        }
    }
}

/// A literal value in a policy.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// The comparison a rule makes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Eq(Scalar),
    Ne(Scalar),
    OneOf(Vec<Scalar>),
    NotOneOf(Vec<Scalar>),
    /// A list holds the value, or a string holds the substring.
    Contains(Scalar),
    NotContains(Scalar),
    /// Every element of the list is one of these.
    SubsetOf(Vec<Scalar>),
    VersionGte(Version),
    VersionLt(Version),
    Gte(f64),
    Lte(f64),
    Present,
    /// The timestamp is at most this old.
    Within(Duration),
}

/// A compiled check: `{ attr = "...", <op> = ... }`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "RawCheck")]
pub struct Check {
    pub attr: Attr,
    pub op: Op,
}

impl Check {
    /// What the rule expects, in words, for reports and the API.
    pub fn expected(&self) -> String {
        let list = |v: &[Scalar]| v.iter().map(Scalar::to_string).collect::<Vec<_>>().join(", ");
        match &self.op {
            Op::Eq(s) => format!("== {s}"),
            Op::Ne(s) => format!("!= {s}"),
            Op::OneOf(v) => format!("one of [{}]", list(v)),
            Op::NotOneOf(v) => format!("none of [{}]", list(v)),
            Op::Contains(s) => format!("contains {s}"),
            Op::NotContains(s) => format!("does not contain {s}"),
            Op::SubsetOf(v) => format!("subset of [{}]", list(v)),
            Op::VersionGte(v) => format!(">= {v}"),
            Op::VersionLt(v) => format!("< {v}"),
            Op::Gte(x) => format!(">= {x}"),
            Op::Lte(x) => format!("<= {x}"),
            Op::Present => "present".into(),
            Op::Within(d) => format!("within {}", humantime::format_duration(*d)),
        }
    }
}

/// The check as written: an attribute and exactly one operator key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    attr: String,
    eq: Option<Scalar>,
    ne: Option<Scalar>,
    one_of: Option<Vec<Scalar>>,
    not_one_of: Option<Vec<Scalar>>,
    contains: Option<Scalar>,
    not_contains: Option<Scalar>,
    subset_of: Option<Vec<Scalar>>,
    version_gte: Option<String>,
    version_lt: Option<String>,
    gte: Option<f64>,
    lte: Option<f64>,
    present: Option<bool>,
    within: Option<String>,
}

impl TryFrom<RawCheck> for Check {
    type Error = String;

    fn try_from(raw: RawCheck) -> Result<Self, String> {
        let attr = Attr::parse(&raw.attr)?;
        let version = |v: String| Version::parse(&v).ok_or_else(|| format!("{v:?} is not a version"));
        let mut ops: Vec<Op> = Vec::new();
        ops.extend(raw.eq.map(Op::Eq));
        ops.extend(raw.ne.map(Op::Ne));
        ops.extend(raw.one_of.map(Op::OneOf));
        ops.extend(raw.not_one_of.map(Op::NotOneOf));
        ops.extend(raw.contains.map(Op::Contains));
        ops.extend(raw.not_contains.map(Op::NotContains));
        ops.extend(raw.subset_of.map(Op::SubsetOf));
        if let Some(v) = raw.version_gte {
            ops.push(Op::VersionGte(version(v)?));
        }
        if let Some(v) = raw.version_lt {
            ops.push(Op::VersionLt(version(v)?));
        }
        ops.extend(raw.gte.map(Op::Gte));
        ops.extend(raw.lte.map(Op::Lte));
        match raw.present {
            Some(true) => ops.push(Op::Present),
            // Absence never passes a rule, so "must be absent" cannot be said.
            Some(false) => {
                return Err("present = false is not supported: a missing attribute always fails".into());
            }
            None => {}
        }
        if let Some(w) = raw.within {
            ops.push(Op::Within(crate::diag::parse_duration(&w)?));
        }
        match ops.len() {
            1 => Ok(Check { attr, op: ops.remove(0) }),
            0 => Err(format!(
                "check on {:?} has no operator (eq, ne, one_of, not_one_of, contains, not_contains, subset_of, version_gte, version_lt, gte, lte, present, within)",
                raw.attr
            )),
            _ => Err(format!("check on {:?} has more than one operator; write one rule per operator", raw.attr)),
        }
    }
}
