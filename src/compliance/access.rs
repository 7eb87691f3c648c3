//! The one access model: from a device's verdict and enforcement to the
//! access a session or tunnel should have. Every plane maps this one value
//! to its own action (RADIUS: VLAN, reject, CoA or Disconnect; WireGuard:
//! the ACL state) and nothing else re-derives it.

use super::device::{Device, Verdict};
use serde::Deserialize;

/// What to do with a device the table knows nothing current about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownDevice {
    Reject,
    #[default]
    Quarantine,
    Allow,
}

/// What a device may do on the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Access {
    /// Its normal network (RADIUS: the compliant VLAN; WireGuard: forward).
    Full = 0,
    /// Only remediation (RADIUS: the quarantine VLAN; WireGuard: the
    /// remediation destinations).
    Quarantine = 1,
    /// Nothing (RADIUS: reject, or disconnect a running session; WireGuard:
    /// every packet dropped).
    Deny = 2,
}

impl Access {
    pub const ALL: [Access; 3] = [Access::Full, Access::Quarantine, Access::Deny];

    /// The inverse of `as u8`; anything out of range is the narrowest.
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Access::Full,
            1 => Access::Quarantine,
            _ => Access::Deny,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Access::Full => "full",
            Access::Quarantine => "quarantine",
            Access::Deny => "deny",
        }
    }

    /// Is `self` narrower than `other` (a restriction, not a restoration)?
    pub fn narrower_than(self, other: Access) -> bool {
        self > other
    }
}

/// When access is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A session or tunnel starts (an Access-Request, a new WireGuard
    /// handshake): `admission` failures count as much as `always` ones.
    Admission,
    /// A running session or tunnel that was last given `applied`. Only an
    /// enforced `always` failure restricts it; a restriction it got at
    /// admission stays until the failures that caused it clear (an
    /// `admission` failure does not cut a session, and does not lift the
    /// quarantine it was admitted into either).
    Running { applied: Access },
}

/// The settings that shape access, from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// What a device with no current verdict gets (`policy.unknown_device`).
    pub unknown_device: UnknownDevice,
    /// What an enforced failure gives: `Quarantine`, or `Deny` where the
    /// plane is told to reject (`radius.noncompliant = "reject"`).
    pub restrict: Access,
}

impl Rules {
    pub fn new(unknown_device: UnknownDevice) -> Self {
        Self { unknown_device, restrict: Access::Quarantine }
    }
}

/// Why a device got its access, for logs and RADIUS Reply-Message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    Compliant,
    /// Noncompliant, but monitor-only, minor, in grace, or an `admission`
    /// failure on a running session admitted before it.
    NotEnforced,
    /// An enforced failure (`always`, or `admission` at admission).
    Enforced,
    /// The table has the device, but no current report (stale).
    Stale,
    /// The table does not know the device.
    UnknownDevice,
    /// An administrator's `exempt` override.
    Exempt,
    /// An administrator's `quarantine` override.
    Overridden,
}

/// The access decided, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub access: Access,
    pub why: Why,
}

/// The access `device` (absent: unknown to the table) should have at `stage`.
pub fn grant(device: Option<&Device>, stage: Stage, rules: &Rules) -> Grant {
    let unknown = |why| {
        let access = match rules.unknown_device {
            UnknownDevice::Allow => Access::Full,
            UnknownDevice::Quarantine => Access::Quarantine,
            UnknownDevice::Reject => Access::Deny,
        };
        Grant { access, why }
    };
    let Some(d) = device else { return unknown(Why::UnknownDevice) };
    let full = |why| Grant { access: Access::Full, why };
    let enforced = Grant { access: rules.restrict, why: Why::Enforced };
    // An override decides, whatever the reports say, until it expires.
    match d.admin_override.as_deref().map(|o| o.mode) {
        Some(super::overrides::Mode::Exempt) => return full(Why::Exempt),
        Some(super::overrides::Mode::Quarantine) => return Grant { access: rules.restrict, why: Why::Overridden },
        None => {}
    }
    match d.verdict {
        Verdict::Compliant => full(Why::Compliant),
        Verdict::Unknown => unknown(Why::Stale),
        Verdict::Noncompliant if d.enforce.quarantine => enforced,
        Verdict::Noncompliant if d.enforce.deny_admission => match stage {
            Stage::Admission => enforced,
            // Admitted restricted: stays so while the failure lasts.
            Stage::Running { applied } if applied != Access::Full => enforced,
            Stage::Running { .. } => full(Why::NotEnforced),
        },
        Verdict::Noncompliant => full(Why::NotEnforced),
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests seed simulated time from the real clock
mod tests {
    use super::*;
    use crate::compliance::Enforce;
    use std::sync::Arc;

    fn overridden(verdict: Verdict, mode: crate::compliance::overrides::Mode) -> Device {
        let mut d = device(verdict, true, true);
        let o = crate::compliance::overrides::Override::new(mode, 0, 1000, "test", "t").unwrap();
        d.admin_override = Some(Arc::new(o));
        d
    }

    fn device(verdict: Verdict, quarantine: bool, deny_admission: bool) -> Device {
        let mut d = Device::reported(Arc::from("d"), Default::default(), std::time::Instant::now(), 0);
        d.verdict = verdict;
        d.enforce = Enforce { quarantine, deny_admission };
        d
    }

    use Access::{Deny as D, Full as F, Quarantine as Q};

    /// Every combination of verdict, enforcement and stage, with the
    /// default rules (unknown devices quarantined, failures quarantine).
    #[test]
    fn the_access_table() {
        let adm = Stage::Admission;
        let run = |applied| Stage::Running { applied };
        let nc = Verdict::Noncompliant;
        #[rustfmt::skip]
        let rows: &[(Option<Device>, Stage, Access, Why)] = &[
            // device                                   stage       access  why
            (Some(device(Verdict::Compliant, false, false)), adm,    F, Why::Compliant),
            (Some(device(Verdict::Compliant, false, false)), run(Q), F, Why::Compliant),
            (Some(device(Verdict::Compliant, false, false)), run(D), F, Why::Compliant),
            // monitor, minor or in grace
            (Some(device(nc, false, false)),                 adm,    F, Why::NotEnforced),
            (Some(device(nc, false, false)),                 run(Q), F, Why::NotEnforced),
            // an `admission` failure
            (Some(device(nc, false, true)),                  adm,    Q, Why::Enforced),
            (Some(device(nc, false, true)),                  run(F), F, Why::NotEnforced),
            (Some(device(nc, false, true)),                  run(Q), Q, Why::Enforced),
            (Some(device(nc, false, true)),                  run(D), Q, Why::Enforced),
            // an `always` failure
            (Some(device(nc, true, true)),                   adm,    Q, Why::Enforced),
            (Some(device(nc, true, true)),                   run(F), Q, Why::Enforced),
            (Some(device(nc, true, true)),                   run(Q), Q, Why::Enforced),
            // stale, and never seen
            (Some(device(Verdict::Unknown, false, false)),   adm,    Q, Why::Stale),
            (Some(device(Verdict::Unknown, false, false)),   run(F), Q, Why::Stale),
            (None,                                           adm,    Q, Why::UnknownDevice),
            (None,                                           run(F), Q, Why::UnknownDevice),
        ];
        let rules = Rules::new(UnknownDevice::Quarantine);
        for (i, (d, stage, access, why)) in rows.iter().enumerate() {
            assert_eq!(grant(d.as_ref(), *stage, &rules), Grant { access: *access, why: *why }, "row {i}");
        }
    }

    /// `unknown_device` decides for unknown devices only; `restrict`
    /// decides for enforced failures only; both at every stage.
    #[test]
    fn rules_apply_where_they_should() {
        let stages = [
            Stage::Admission,
            Stage::Running { applied: F },
            Stage::Running { applied: Q },
            Stage::Running { applied: D },
        ];
        let devices = [
            Some(device(Verdict::Compliant, false, false)),
            Some(device(Verdict::Noncompliant, false, false)),
            Some(device(Verdict::Noncompliant, false, true)),
            Some(device(Verdict::Noncompliant, true, true)),
            Some(device(Verdict::Unknown, false, false)),
            Some(overridden(Verdict::Compliant, crate::compliance::overrides::Mode::Quarantine)),
            Some(overridden(Verdict::Noncompliant, crate::compliance::overrides::Mode::Exempt)),
            Some(overridden(Verdict::Unknown, crate::compliance::overrides::Mode::Exempt)),
            None,
        ];
        for (unknown_device, expect_unknown) in
            [(UnknownDevice::Allow, F), (UnknownDevice::Quarantine, Q), (UnknownDevice::Reject, D)]
        {
            for restrict in [Q, D] {
                let rules = Rules { unknown_device, restrict };
                let base = Rules::new(UnknownDevice::Quarantine);
                for d in &devices {
                    for stage in stages {
                        let g = grant(d.as_ref(), stage, &rules);
                        let b = grant(d.as_ref(), stage, &base);
                        match g.why {
                            Why::Stale | Why::UnknownDevice => assert_eq!(g.access, expect_unknown),
                            Why::Enforced | Why::Overridden => assert_eq!(g.access, restrict),
                            Why::Compliant | Why::NotEnforced | Why::Exempt => assert_eq!(g.access, F),
                        }
                        assert_eq!(g.why, b.why, "the reason does not depend on the rules");
                    }
                }
            }
        }
    }

    #[test]
    fn order_and_round_trip() {
        assert!(Q.narrower_than(F) && D.narrower_than(Q) && !F.narrower_than(Q));
        for a in Access::ALL {
            assert_eq!(Access::from_u8(a as u8), a);
        }
        assert_eq!(Access::from_u8(200), D, "out of range is the narrowest");
    }
}
