//! What the API answers, as types: each body is one of these serialized,
//! and the same types describe it in the OpenAPI document
//! (`/api/v1/openapi.json`), so the document cannot drift from the answers.

use crate::compliance::{Device, Verdict};
use crate::telemetry::report::format_rfc3339;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// A verdict, as the API names it.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerdictName {
    Compliant,
    Noncompliant,
    Unknown,
}

impl From<Verdict> for VerdictName {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Compliant => Self::Compliant,
            Verdict::Noncompliant => Self::Noncompliant,
            Verdict::Unknown => Self::Unknown,
        }
    }
}

/// An error: RFC 9457 problem details (`application/problem+json`). Some
/// answers add members (a device never heard of: `id`, `verdict`).
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem.
    #[schema(example = "about:blank")]
    pub r#type: String,
    /// The status's standard phrase.
    #[schema(example = "Not Found")]
    pub title: String,
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
}

/// A rule a device fails, with what was observed and what was expected.
#[derive(Serialize, ToSchema)]
pub struct FailedRule {
    pub policy: String,
    pub rule: String,
    /// The reported value (or what stands for it).
    pub observed: String,
    /// What the rule wants, e.g. `>= 14.0`.
    pub expected: String,
    /// `minor`, `major` or `critical`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// `always`, `admission` or `monitor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<String>,
    /// The command that fixes it, if the rule names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remediation: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<String>,
}

/// What the verdict enforces.
#[derive(Serialize, ToSchema)]
pub struct EnforceView {
    /// Existing sessions are cut or restricted.
    pub quarantine: bool,
    /// Normal access is refused when a session starts.
    pub deny_admission: bool,
}

/// An administrator's override.
#[derive(Serialize, ToSchema)]
pub struct OverrideView {
    /// `exempt` or `quarantine`.
    pub mode: String,
    pub reason: String,
    /// The API token's name that set it.
    pub by: String,
    /// RFC 3339.
    pub set: String,
    /// RFC 3339: it ends by itself then.
    pub until: String,
}

/// Who a device is on the network.
#[derive(Serialize, ToSchema)]
pub struct Identities {
    pub mac_addresses: Option<Vec<String>>,
    pub wg_public_key: Option<String>,
    pub cert_identity: Option<String>,
}

/// A device: its verdict, why, since when, who it is, what is being done.
#[derive(Serialize, ToSchema)]
pub struct DeviceView {
    pub id: String,
    pub verdict: VerdictName,
    /// The verdict is held (the telemetry source is out).
    pub held: bool,
    pub failed_rules: Vec<FailedRule>,
    pub enforce: EnforceView,
    pub r#override: Option<OverrideView>,
    /// RFC 3339: when the verdict began.
    pub since: String,
    /// RFC 3339: the last report.
    pub last_seen: String,
    /// The last report's sequence number.
    pub seq: u64,
    /// The groups the device reported.
    pub groups: Option<Vec<String>>,
    /// The dynamic groups it is in.
    pub member_of: Vec<String>,
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub identities: Identities,
    /// Its running remediation plans (plan, next step and when, commands).
    #[schema(value_type = Option<Object>)]
    pub remediation: Option<Value>,
    /// Its RADIUS sessions and WireGuard peers (`plane` says which); only
    /// in the single-device view.
    #[schema(value_type = Vec<Object>)]
    pub sessions: Vec<Value>,
}

impl DeviceView {
    pub fn of(d: &Device, s: &super::ApiState) -> Self {
        let mut failed: Vec<FailedRule> = d
            .failures
            .iter()
            .map(|f| {
                let rule = f.rule();
                let expected = if f.policy.source.as_os_str() == crate::compliance::identity::BUILT_IN {
                    "no identity bound to another live device".to_string()
                } else {
                    rule.check.expected()
                };
                FailedRule {
                    policy: f.policy.name.to_string(),
                    rule: rule.id.clone(),
                    observed: f.observed.to_string(),
                    expected,
                    severity: Some(label(&f.policy.severity)),
                    enforcement: Some(label(&f.policy.enforcement)),
                    remediation: rule.remediation.clone(),
                    failing_since: Some(format_rfc3339(f.since)),
                }
            })
            .collect();
        if d.verdict == Verdict::Unknown {
            failed.push(FailedRule {
                policy: "warden".into(),
                rule: "inactive".into(),
                observed: format!("last seen {}", format_rfc3339(d.last_seen)),
                expected: format!("a report within {}", humantime::format_duration(s.stale_after)),
                severity: None,
                enforcement: None,
                remediation: None,
                failing_since: None,
            });
        }
        let r = &d.report;
        let strings = |v: &Option<std::sync::Arc<[std::sync::Arc<str>]>>| {
            v.as_ref().map(|v| v.iter().map(|x| x.to_string()).collect())
        };
        Self {
            id: d.id.to_string(),
            verdict: d.verdict.into(),
            held: d.held,
            failed_rules: failed,
            enforce: EnforceView { quarantine: d.enforce.quarantine, deny_admission: d.enforce.deny_admission },
            r#override: d.admin_override.as_deref().map(|o| OverrideView {
                mode: label(&o.mode),
                reason: o.reason.clone(),
                by: o.by.clone(),
                set: format_rfc3339(o.set),
                until: format_rfc3339(o.until),
            }),
            since: format_rfc3339(d.since),
            last_seen: format_rfc3339(d.last_seen),
            seq: r.seq,
            groups: strings(&r.groups),
            member_of: super::member_of(d).map(str::to_string).collect(),
            os: r.os.as_deref().map(str::to_string),
            os_version: r.os_version.as_deref().map(str::to_string),
            identities: Identities {
                mac_addresses: strings(&r.mac_addresses),
                wg_public_key: r.wg_public_key.as_deref().map(str::to_string),
                cert_identity: r.cert_identity.as_deref().map(str::to_string),
            },
            remediation: s.remediation.get(&d.id).and_then(|v| serde_json::from_str::<Value>(v.value()).ok()),
            sessions: Vec::new(),
        }
    }
}

/// A serde unit-variant enum's name (`Severity::Major` → `major`).
fn label<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// A page of devices.
#[derive(Serialize, ToSchema)]
pub struct DevicePage {
    pub devices: Vec<DeviceView>,
    /// How many devices matched in all.
    pub matched: usize,
    /// The next page's `after`; absent on the last page.
    pub next: Option<String>,
}

/// A dynamic group.
#[derive(Serialize, ToSchema)]
pub struct GroupView {
    pub name: String,
    pub description: String,
    /// Devices in it now.
    pub members: usize,
    /// The VLAN its members' sessions get.
    pub vlan: Option<String>,
    /// The Filter-Id its members' sessions get.
    pub filter_id: Option<String>,
}

impl GroupView {
    pub fn of(g: &crate::policy::Group, members: usize) -> Self {
        Self {
            name: g.name.clone(),
            description: g.description.clone(),
            members,
            vlan: g.vlan.clone(),
            filter_id: g.filter_id.clone(),
        }
    }
}

/// Every dynamic group.
#[derive(Serialize, ToSchema)]
pub struct GroupList {
    pub groups: Vec<GroupView>,
}

/// A group and a page of its members.
#[derive(Serialize, ToSchema)]
pub struct GroupPage {
    #[serde(flatten)]
    pub group: GroupView,
    /// Member ids, sorted.
    pub devices: Vec<String>,
    /// The next page's `after`; absent on the last page.
    pub next: Option<String>,
}

/// A batch the circuit breaker holds.
#[derive(Serialize, ToSchema)]
pub struct HeldView {
    pub id: u64,
    /// What caused it, e.g. `policy_reload`.
    pub cause: String,
    /// Devices (or sessions) it would newly restrict.
    pub restricting: usize,
    /// Devices with a verdict (or sessions) when it was held.
    pub devices: usize,
    /// RFC 3339.
    pub held_since: String,
}

impl HeldView {
    pub fn of(h: &crate::compliance::Held) -> Self {
        Self {
            id: h.id,
            cause: h.cause.label().to_string(),
            restricting: h.restricting,
            devices: h.live,
            held_since: format_rfc3339(h.since),
        }
    }
}

/// The held batches.
#[derive(Serialize, ToSchema)]
pub struct ChangeList {
    pub changes: Vec<HeldView>,
}

/// A held batch, confirmed and applied.
#[derive(Serialize, ToSchema)]
pub struct Confirmed {
    pub confirmed: HeldView,
}

/// An audit trail entry: `seq`, `at`, `kind`, `device`, `data`, `prev`,
/// `hash` (see docs/telemetry.md).
#[derive(Serialize, ToSchema)]
pub struct AuditEntry {
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    /// The event type, e.g. `warden.verdict.changed`.
    pub kind: String,
    pub device: Option<String>,
    #[schema(value_type = Object)]
    pub data: Value,
    /// The previous entry's hash (hex SHA-256).
    pub prev: String,
    /// SHA-256 of `prev` and this entry without its hash (hex).
    pub hash: String,
}

/// A page of the audit trail.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    #[schema(value_type = Vec<AuditEntry>)]
    pub entries: Vec<Value>,
    /// The next page's `after`; absent at the end.
    pub next: Option<u64>,
}

/// A CloudEvent 1.0 (structured JSON).
#[derive(Serialize, ToSchema)]
pub struct CloudEvent {
    #[schema(example = "1.0")]
    pub specversion: String,
    /// Unique and stable: the first 32 hex digits of the entry's hash.
    pub id: String,
    pub source: String,
    /// The audit kind, e.g. `warden.verdict.changed`.
    pub r#type: String,
    /// The device.
    pub subject: Option<String>,
    /// RFC 3339.
    pub time: String,
    /// The trail sequence number, zero-padded to 20 digits.
    pub sequence: String,
    #[schema(example = "application/json")]
    pub datacontenttype: String,
    #[schema(value_type = Object)]
    pub data: Value,
}

/// Events after a cursor.
#[derive(Serialize, ToSchema)]
pub struct EventsPage {
    #[schema(value_type = Vec<CloudEvent>)]
    pub events: Vec<Value>,
    /// The next request's `after`.
    pub next: u64,
}

/// Readiness: every configured plane is up.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    /// Each configured plane and whether it is up.
    #[schema(value_type = Object)]
    pub planes: serde_json::Map<String, Value>,
}
