//! Overrides: an administrator's decision that a device be treated as
//! compliant (`exempt`) or noncompliant (`quarantine`) for a while, whatever
//! its reports say. Always with an expiry, a reason and who set it; an
//! input of the one access model (`access::grant`), kept on the device in
//! the table, journaled and snapshotted with it, and expired by the engine.

use crate::telemetry::UnixMillis;
use serde::{Deserialize, Serialize};

/// What an override does to a device's access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Treated as compliant: full access.
    Exempt,
    /// Treated as noncompliant, enforced: restricted.
    Quarantine,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Exempt => "exempt",
            Mode::Quarantine => "quarantine",
        }
    }
}

/// One device's override.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    pub mode: Mode,
    /// When it was set (Unix ms).
    pub set: UnixMillis,
    /// When it ends by itself (Unix ms).
    pub until: UnixMillis,
    pub reason: String,
    /// Who set it: the API token's name.
    pub by: String,
}

/// The longest an override may last: it is meant to bridge a repair or an
/// incident, not to replace a policy.
pub const MAX_DURATION_MS: i64 = 90 * 24 * 3600 * 1000;
/// The longest reason kept.
pub const MAX_REASON: usize = 500;

/// Why an override request is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("an override needs a duration above zero")]
    NoDuration,
    #[error("an override lasts at most 90 days")]
    TooLong,
    #[error("an override needs a reason")]
    NoReason,
    #[error("the reason is longer than 500 characters")]
    ReasonTooLong,
}

impl Override {
    /// A checked override from `set` for `duration_ms`.
    pub fn new(mode: Mode, set: UnixMillis, duration_ms: i64, reason: &str, by: &str) -> Result<Self, Invalid> {
        let reason = reason.trim();
        if duration_ms <= 0 {
            return Err(Invalid::NoDuration);
        }
        if duration_ms > MAX_DURATION_MS {
            return Err(Invalid::TooLong);
        }
        if reason.is_empty() {
            return Err(Invalid::NoReason);
        }
        if reason.chars().count() > MAX_REASON {
            return Err(Invalid::ReasonTooLong);
        }
        Ok(Self { mode, set, until: set.saturating_add(duration_ms), reason: reason.to_string(), by: by.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_needs_a_duration_and_a_reason() {
        let ok = Override::new(Mode::Exempt, 1000, 7_200_000, "  repair ticket 42 ", "alice").unwrap();
        assert_eq!((ok.until, ok.reason.as_str(), ok.by.as_str()), (7_201_000, "repair ticket 42", "alice"));
        assert_eq!(Override::new(Mode::Exempt, 0, 0, "r", "a"), Err(Invalid::NoDuration));
        assert_eq!(Override::new(Mode::Exempt, 0, MAX_DURATION_MS + 1, "r", "a"), Err(Invalid::TooLong));
        assert_eq!(Override::new(Mode::Quarantine, 0, 1, "   ", "a"), Err(Invalid::NoReason));
        assert_eq!(Override::new(Mode::Quarantine, 0, 1, &"x".repeat(501), "a"), Err(Invalid::ReasonTooLong));
    }
}
