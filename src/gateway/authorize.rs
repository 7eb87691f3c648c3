//! Where the compliance verdict becomes a RADIUS answer. Neither core knows
//! the other: the RADIUS server asks, the table answers, this decides.

use crate::compliance::{Access, Device, Rules, Stage, Table, Why, grant};
use crate::config::{Noncompliant, UnknownDevice};
use crate::mac::Mac;
use crate::metrics::{RadiusKind, RadiusResult};
use crate::radius::server::{AccessRequest, Decision};
use crate::users::Users;
use std::sync::Arc;

/// The access rules from `[radius]` and `[policy]`: the one access model's
/// rules, and the VLAN each access maps to.
pub struct AccessPolicy {
    pub compliant_vlan: String,
    pub quarantine_vlan: String,
    pub rules: Rules,
}

impl AccessPolicy {
    pub fn new(
        compliant_vlan: String,
        quarantine_vlan: String,
        noncompliant: Noncompliant,
        unknown: UnknownDevice,
    ) -> Self {
        let restrict = match noncompliant {
            Noncompliant::Quarantine => Access::Quarantine,
            Noncompliant::Reject => Access::Deny,
        };
        Self { compliant_vlan, quarantine_vlan, rules: Rules { unknown_device: unknown, restrict } }
    }

    /// The VLAN a session with `access` belongs in (`Deny`: none, it is
    /// rejected or disconnected).
    pub fn vlan(&self, access: Access) -> Option<&str> {
        match access {
            Access::Full => Some(&self.compliant_vlan),
            Access::Quarantine => Some(&self.quarantine_vlan),
            Access::Deny => None,
        }
    }

    /// The access a running session, last given `applied`, should have now.
    pub fn running(&self, device: Option<&Device>, applied: Access) -> Access {
        grant(device, Stage::Running { applied }, &self.rules).access
    }
}

/// What was decided and why, for the metric labels and the INFO log line.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub kind: RadiusKind,
    /// `Accept`, `Quarantine`, `Reject`.
    pub result: RadiusResult,
    pub reason: String,
    pub device: Option<Arc<str>>,
    /// The access the answer gives (a reject for bad credentials: `Deny`).
    pub access: Access,
}

/// The Argon2 hash to check off the task, when `req` is PAP for such a user.
pub fn slow_check(req: &AccessRequest, users: &Users) -> Option<Arc<str>> {
    if req.eap || req.chap || mab_mac(req).is_some() || req.password.is_none() {
        return None;
    }
    users.get(req.user_name.as_deref()?)?.slow_hash()
}

/// MAC Authentication Bypass: the NAS sends the MAC as User-Name (and,
/// usually, as the password too), or marks it Call-Check (Service-Type 10).
fn mab_mac(req: &AccessRequest) -> Option<Mac> {
    let name = req.user_name.as_deref()?;
    let mac = Mac::parse(name)?;
    let password_is_mac = match req.password.as_deref() {
        None => true,
        Some(p) => std::str::from_utf8(p).ok().and_then(Mac::parse) == Some(mac),
    };
    (req.service_type == Some(10) || password_is_mac).then_some(mac)
}

/// Decides `req`. `verified` is the outcome of a slow (Argon2) password
/// check done elsewhere; `None` checks the password here.
pub fn authorize(
    req: &AccessRequest,
    table: &Table,
    users: &Users,
    policy: &AccessPolicy,
    verified: Option<bool>,
) -> (Decision, Outcome) {
    let reject = |kind, reason: String| {
        (
            Decision::Reject { reply_message: reason.clone(), eap: None },
            Outcome { kind, result: RadiusResult::Reject, reason, device: None, access: Access::Deny },
        )
    };
    if req.eap {
        return reject(RadiusKind::Eap, "EAP is not enabled on this server".into());
    }
    if req.chap {
        return reject(RadiusKind::Chap, "CHAP is not supported; use PAP, MAB or EAP".into());
    }
    if let Some(mac) = mab_mac(req) {
        return by_verdict(RadiusKind::Mab, table.by_mac(mac).as_deref(), policy);
    }
    let (Some(name), Some(password)) = (req.user_name.as_deref(), req.password.as_deref()) else {
        return reject(RadiusKind::Pap, "no User-Name and User-Password".into());
    };
    let user = users.get(name);
    // Verify even for an unknown name, so timing does not tell names apart.
    let ok = match (verified, user) {
        (Some(v), _) => v,
        (None, Some(u)) => u.verify(password),
        (None, None) => {
            // Compare anyway, so timing does not tell unknown names apart.
            let _ = crate::radius::crypto::ct_eq(password, password);
            false
        }
    };
    if !ok {
        return reject(RadiusKind::Pap, "invalid credentials".into());
    }
    let device = user_device(name, req.calling_station_id.as_deref(), table, users);
    by_verdict(RadiusKind::Pap, device.as_deref(), policy)
}

/// The device of an authenticated user: its `device_id`, else the
/// Calling-Station-Id MAC.
pub fn user_device(name: &str, calling_station: Option<&str>, table: &Table, users: &Users) -> Option<Arc<Device>> {
    users
        .get(name)
        .and_then(|u| u.device_id.as_deref())
        .and_then(|id| table.get(id))
        .or_else(|| calling_station.and_then(Mac::parse).and_then(|m| table.by_mac(m)))
}

/// The answer to a device's admission: the one access model at
/// [`Stage::Admission`], mapped to an Accept into a VLAN or a Reject.
pub fn by_verdict(kind: RadiusKind, device: Option<&Device>, p: &AccessPolicy) -> (Decision, Outcome) {
    let g = grant(device, Stage::Admission, &p.rules);
    let reason = match g.why {
        Why::Compliant => "compliant".to_string(),
        Why::NotEnforced => "noncompliant, not enforced".to_string(),
        Why::Enforced => {
            let failed: Vec<String> = device.map(|d| d.failures.iter().map(|f| f.key()).collect()).unwrap_or_default();
            format!("noncompliant: {}", failed.join(", "))
        }
        Why::Stale => "unknown: no recent report".to_string(),
        Why::UnknownDevice => "unknown device".to_string(),
    };
    let outcome = |result| Outcome {
        kind,
        result,
        reason: reason.clone(),
        device: device.map(|d| Arc::clone(&d.id)),
        access: g.access,
    };
    match p.vlan(g.access) {
        Some(vlan) => {
            let result = if g.access == Access::Full { RadiusResult::Accept } else { RadiusResult::Quarantine };
            (Decision::Accept { vlan: Some(vlan.to_string()), reply_message: None, eap: None }, outcome(result))
        }
        None => (Decision::Reject { reply_message: reason.clone(), eap: None }, outcome(RadiusResult::Reject)),
    }
}

/// The device an accounting record's session belongs to: by its MAC, else
/// by the user's `device_id`, else by User-Name as a certificate identity
/// or device id (EAP-TLS sessions are named by the certificate; the device
/// it names outright comes before one that claims it).
pub fn session_device(mac: Option<Mac>, user: Option<&str>, table: &Table, users: &Users) -> Option<Arc<Device>> {
    mac.and_then(|m| table.by_mac(m))
        .or_else(|| user.and_then(|u| users.get(u)).and_then(|u| u.device_id.as_deref()).and_then(|id| table.get(id)))
        .or_else(|| user.and_then(|u| table.get(u).or_else(|| table.by_cert_identity(u))))
}
