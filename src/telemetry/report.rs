//! The device report: one telemetry message, as the compliance table keeps it.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Milliseconds since the Unix epoch (wall clock). Kept as an integer so the
/// cores never read the clock themselves: the shell passes "now" in.
pub type UnixMillis = i64;

/// One telemetry report. Field names are the wire names of PRODUCT.md.
///
/// Strings and lists are `Arc` slices rather than `String`/`Vec`: a fleet of a
/// million devices keeps one report each, most of whose values (OS, versions,
/// app lists, groups) are the same across the fleet. The engine interns those
/// (see `compliance::intern`) so each distinct value is stored once, and the
/// indexes share the identity strings instead of copying them
/// (bench/RESULTS.md, memory per device).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Strictly increasing per device; required.
    pub seq: u64,
    /// When the agent produced the report (RFC 3339 on the wire); required.
    #[serde(with = "rfc3339_millis")]
    pub ts: UnixMillis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_patch: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passcode: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firewall: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kiosk_mode: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apps_installed: Option<Arc<[Arc<str>]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apps_running: Option<Arc<[Arc<str>]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wifi_ssid: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_ports: Option<Arc<[u16]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_addresses: Option<Arc<[Arc<str>]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wg_public_key: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_identity: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Arc<[Arc<str>]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<Arc<str>>,
    /// Free-form extras, addressed in policies as `attributes.<key>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

impl Report {
    /// Does the device belong to any of `groups`?
    pub fn in_any_group(&self, groups: &[String]) -> bool {
        self.groups.as_deref().is_some_and(|mine| mine.iter().any(|g| groups.iter().any(|w| **g == **w)))
    }
}

/// RFC 3339 timestamps on the wire, Unix milliseconds in memory.
mod rfc3339_millis {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use time::{OffsetDateTime, format_description::well_known::Rfc3339};

    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_rfc3339(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        // Borrowing would fail on escaped strings; a timestamp is short anyway.
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let at =
            OffsetDateTime::parse(&text, &Rfc3339).map_err(|_| D::Error::custom("ts: not an RFC 3339 timestamp"))?;
        i64::try_from(at.unix_timestamp_nanos() / 1_000_000).map_err(|_| D::Error::custom("ts: out of range"))
    }
}

/// Parses an RFC 3339 time into Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Result<UnixMillis, String> {
    use time::{OffsetDateTime, format_description::well_known::Rfc3339};
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
        .map_err(|_| format!("{s:?} is not an RFC 3339 timestamp"))
}

/// Formats Unix milliseconds as RFC 3339 UTC (`2026-11-22T10:15:00.000Z`).
pub fn format_rfc3339(ms: UnixMillis) -> String {
    use time::{OffsetDateTime, format_description::well_known::Rfc3339};
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}
