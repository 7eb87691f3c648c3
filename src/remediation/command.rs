//! What goes to a device and what comes back: the command on
//! `command_topic` and the acknowledgement on `devices/{id}/acks`
//! (docs/telemetry.md, "Remediation commands").

use crate::telemetry::UnixMillis;
use crate::telemetry::report::format_rfc3339;
use serde::Deserialize;
use std::sync::Arc;

/// A command to publish on the device's command topic (QoS 1, not retained:
/// the retained message on that topic is the WireGuard configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    pub device: Arc<str>,
    pub id: String,
    /// The command's name, as the device's agent knows it (`fix` already
    /// replaced by the rule's `remediation`).
    pub action: Arc<str>,
    pub args: serde_json::Value,
    pub policy: Arc<str>,
    pub rule: Arc<str>,
    pub issued: UnixMillis,
    pub expires: UnixMillis,
    /// 1 for the first send; more for a send again of an unanswered one.
    pub attempt: u8,
}

impl Command {
    /// The JSON body (PRODUCT.md: id, action, args, policy, rule, issued,
    /// expires).
    pub fn payload(&self) -> String {
        serde_json::json!({
            "id": self.id,
            "action": &*self.action,
            "args": self.args,
            "policy": &*self.policy,
            "rule": &*self.rule,
            "issued": format_rfc3339(self.issued),
            "expires": format_rfc3339(self.expires),
        })
        .to_string()
    }
}

/// What a device says about a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Received; it is being carried out (no more sends).
    Accepted,
    /// Carried out. Whether it fixed anything, the next report tells.
    Done,
    /// Could not be carried out.
    Failed,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// An acknowledgement as received.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Ack {
    pub id: String,
    pub status: Status,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The longest `reason` kept (a device's free text, shown in the API).
pub const MAX_REASON: usize = 500;

/// Why an acknowledgement changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckRefusal {
    /// Not JSON of the documented shape.
    Malformed(String),
    /// No command of this device has that id (an old process's, or made up).
    Unknown,
}

impl AckRefusal {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "ack_malformed",
            Self::Unknown => "ack_unknown",
        }
    }
}

impl std::fmt::Display for AckRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(e) => write!(f, "malformed acknowledgement: {e}"),
            Self::Unknown => f.write_str("acknowledgement for no command of this device"),
        }
    }
}

/// Parses an acknowledgement; the reason is cut to [`MAX_REASON`] bytes.
pub fn parse_ack(payload: &[u8]) -> Result<Ack, AckRefusal> {
    let mut ack: Ack = serde_json::from_slice(payload).map_err(|e| AckRefusal::Malformed(e.to_string()))?;
    if let Some(r) = &mut ack.reason
        && r.len() > MAX_REASON
    {
        let mut cut = MAX_REASON;
        while !r.is_char_boundary(cut) {
            cut -= 1;
        }
        r.truncate(cut);
    }
    Ok(ack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_has_every_documented_field() {
        let c = Command {
            device: "pos-1".into(),
            id: "c1a2-7".into(),
            action: "enable_encryption".into(),
            args: serde_json::json!({"x": 1}),
            policy: "pos-baseline".into(),
            rule: "disk-encrypted".into(),
            issued: 1_764_000_000_000,
            expires: 1_764_000_900_000,
            attempt: 1,
        };
        let v: serde_json::Value = serde_json::from_str(&c.payload()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": "c1a2-7", "action": "enable_encryption", "args": {"x": 1},
                "policy": "pos-baseline", "rule": "disk-encrypted",
                "issued": "2025-11-24T16:00:00Z", "expires": "2025-11-24T16:15:00Z",
            })
        );
    }

    #[test]
    fn acks_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_ack(br#"{"id":"c-1","status":"failed","reason":"no disk"}"#).unwrap(),
            Ack { id: "c-1".into(), status: Status::Failed, reason: Some("no disk".into()) }
        );
        assert_eq!(parse_ack(br#"{"id":"c-1","status":"done"}"#).unwrap().status, Status::Done);
        for bad in [&b"{}"[..], b"not json", br#"{"id":"c-1","status":"maybe"}"#, br#"{"id":1,"status":"done"}"#] {
            assert!(matches!(parse_ack(bad), Err(AckRefusal::Malformed(_))), "{}", String::from_utf8_lossy(bad));
        }
        let long = format!(r#"{{"id":"c","status":"failed","reason":"{}"}}"#, "é".repeat(400));
        assert!(parse_ack(long.as_bytes()).unwrap().reason.unwrap().len() <= MAX_REASON);
    }
}
