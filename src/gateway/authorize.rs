//! Where the compliance verdict becomes a RADIUS answer. Neither core knows
//! the other: the RADIUS server asks, the table answers, this decides.

use crate::compliance::{Access, Device, Rules, Stage, Table, Why, grant};
use crate::config::{Noncompliant, UnknownDevice};
use crate::mac::Mac;
use crate::metrics::{RadiusKind, RadiusResult};
use crate::radius::server::{AccessRequest, Decision};
use crate::users::{User, Users};
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

    /// The VLAN and Filter-Id a session with `access` gets: its device's
    /// first group with one (a quarantined session only from a group that
    /// holds restricted devices alone), else the access's own VLAN.
    pub fn placement<'a>(&'a self, device: Option<&'a Device>, access: Access) -> (Option<&'a str>, Option<&'a str>) {
        let Some(base) = self.vlan(access) else { return (None, None) };
        let restricted = access != Access::Full;
        let Some(d) = device.filter(|d| d.groups != 0) else { return (Some(base), None) };
        let vlan = d.group_set.vlan(d.groups, restricted).unwrap_or(base);
        (Some(vlan), d.group_set.filter_id(d.groups, restricted))
    }

    /// A number for a session's group placement, to tell whether a running
    /// session has it: 0 when no group changes what `access` alone gives
    /// (so sessions admitted or restored without groups need nothing).
    pub fn profile(&self, device: Option<&Device>, access: Access) -> u64 {
        match self.placement(device, access) {
            (vlan, None) if vlan == self.vlan(access) => 0,
            (vlan, filter) => {
                use std::hash::BuildHasher;
                foldhash::quality::FixedState::with_seed(0).hash_one((vlan, filter)) | 1
            }
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
    // The user found above: a second lookup by name cost 5% of PAP's CPU.
    let device = device_of(user, req.calling_station_id.as_deref(), table);
    by_verdict(RadiusKind::Pap, device.as_deref(), policy)
}

/// The device of an authenticated user: its `device_id`, else the
/// Calling-Station-Id MAC.
pub fn user_device(name: &str, calling_station: Option<&str>, table: &Table, users: &Users) -> Option<Arc<Device>> {
    device_of(users.get(name), calling_station, table)
}

/// [`user_device`] for a user already looked up.
fn device_of(user: Option<&User>, calling_station: Option<&str>, table: &Table) -> Option<Arc<Device>> {
    user.and_then(|u| u.device_id.as_deref())
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
        Why::Exempt => "exempt by an administrator".to_string(),
        Why::Overridden => "quarantined by an administrator".to_string(),
    };
    let outcome = |result| Outcome {
        kind,
        result,
        reason: reason.clone(),
        device: device.map(|d| Arc::clone(&d.id)),
        access: g.access,
    };
    match p.placement(device, g.access) {
        (Some(vlan), filter_id) => {
            let result = if g.access == Access::Full { RadiusResult::Accept } else { RadiusResult::Quarantine };
            let (vlan, filter_id) = (Some(vlan.to_string()), filter_id.map(str::to_string));
            (Decision::Accept { vlan, filter_id, reply_message: None, eap: None }, outcome(result))
        }
        (None, _) => (Decision::Reject { reply_message: reason.clone(), eap: None }, outcome(RadiusResult::Reject)),
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

/// The decisions without a socket: a table written by the engine, a users
/// file, and Access-Requests as the server core hands them over.
#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests seed simulated time from the real clock
mod tests {
    use super::*;
    use crate::compliance::Engine;
    use crate::config::{Noncompliant, UnknownDevice};
    use crate::policy::{Policy, PolicySet};
    use crate::radius::server::DecisionId;
    use crate::telemetry::Report;
    use std::time::{Duration, Instant};

    fn policy(noncompliant: Noncompliant) -> AccessPolicy {
        AccessPolicy::new("100".into(), "999".into(), noncompliant, UnknownDevice::Quarantine)
    }

    /// d-ok (encrypted) and d-bad (not), each with one MAC.
    fn table() -> Table {
        let rule = "name = \"enc\"\nseverity = \"critical\"\n[[rules]]\nid = \"enc\"\ncheck = { attr = \"encrypted\", eq = true }\n";
        let set = PolicySet {
            policies: vec![Arc::new(Policy::parse(std::path::Path::new("t.toml"), rule).unwrap())],
            ..Default::default()
        };
        let table = Table::default();
        let mut engine = Engine::new(table.clone(), set, Duration::from_secs(3600));
        let (now, wall) = (Instant::now(), 1_795_000_000_000);
        for (id, mac, encrypted) in [("d-ok", "aa:bb:cc:00:00:01", true), ("d-bad", "aa:bb:cc:00:00:02", false)] {
            let r = Report {
                seq: 1,
                ts: wall,
                encrypted: Some(encrypted),
                mac_addresses: Some(Arc::from(vec![Arc::from(mac)])),
                ..Report::default()
            };
            engine.handle_telemetry(id, r, now, wall).unwrap();
        }
        table
    }

    fn users() -> (Users, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(
            &path,
            "[[users]]\nname = \"alice\"\npassword = \"correct horse\"\ndevice_id = \"d-bad\"\n\
             [[users]]\nname = \"bob\"\npassword = \"battery\"\n",
        )
        .unwrap();
        (Users::load(&path).unwrap(), dir)
    }

    fn request(user: &str, password: Option<&str>) -> AccessRequest {
        AccessRequest {
            id: DecisionId::none(),
            client: "lab".into(),
            user_name: Some(user.into()),
            password: password.map(|p| zeroize::Zeroizing::new(p.as_bytes().to_vec())),
            calling_station_id: None,
            service_type: None,
            nas_ip: None,
            nas_port_id: None,
            eap: false,
            chap: false,
            eap_message: None,
            state: None,
            framed_mtu: None,
        }
    }

    fn vlan(d: &Decision) -> Option<&str> {
        match d {
            Decision::Accept { vlan, .. } => vlan.as_deref(),
            _ => None,
        }
    }

    #[test]
    fn mab_answers_from_the_device_s_verdict() {
        let (table, (users, _dir)) = (table(), users());
        let p = policy(Noncompliant::Quarantine);
        // The MAC as User-Name and password, in any common format.
        let (d, o) = authorize(&request("AA-BB-CC-00-00-01", Some("aabbcc000001")), &table, &users, &p, None);
        assert_eq!(
            (vlan(&d), o.kind, o.result, o.access),
            (Some("100"), RadiusKind::Mab, RadiusResult::Accept, Access::Full)
        );
        assert_eq!(o.device.as_deref(), Some("d-ok"));
        let (d, o) = authorize(&request("aabb.cc00.0002", None), &table, &users, &p, None);
        assert_eq!((vlan(&d), o.result), (Some("999"), RadiusResult::Quarantine));
        assert_eq!(o.reason, "noncompliant: enc/enc");
        // Unknown: policy.unknown_device (quarantine).
        let (d, o) = authorize(&request("aa:bb:cc:00:00:09", None), &table, &users, &p, None);
        assert_eq!((vlan(&d), o.reason.as_str(), o.device), (Some("999"), "unknown device", None));
        // Reject mode: no VLAN, a Reject naming the rule.
        let (d, o) =
            authorize(&request("aa:bb:cc:00:00:02", None), &table, &users, &policy(Noncompliant::Reject), None);
        assert!(matches!(d, Decision::Reject { ref reply_message, .. } if reply_message.contains("enc/enc")), "{d:?}");
        assert_eq!(o.access, Access::Deny);
    }

    #[test]
    fn pap_checks_the_password_then_the_user_s_device() {
        let (table, (users, _dir)) = (table(), users());
        let p = policy(Noncompliant::Quarantine);
        // alice's device_id is d-bad: right password, quarantined.
        let (d, o) = authorize(&request("alice", Some("correct horse")), &table, &users, &p, None);
        assert_eq!((vlan(&d), o.kind, o.device.as_deref()), (Some("999"), RadiusKind::Pap, Some("d-bad")));
        for (user, password) in [("alice", "correct horsE"), ("mallory", "correct horse")] {
            let (d, o) = authorize(&request(user, Some(password)), &table, &users, &p, None);
            assert!(matches!(d, Decision::Reject { .. }), "{user}");
            assert_eq!((o.reason.as_str(), o.access), ("invalid credentials", Access::Deny));
        }
        // bob has no device_id: the Calling-Station-Id MAC names it.
        let mut req = request("bob", Some("battery"));
        req.calling_station_id = Some("AA:BB:CC:00:00:01".into());
        let (d, o) = authorize(&req, &table, &users, &p, None);
        assert_eq!((vlan(&d), o.device.as_deref()), (Some("100"), Some("d-ok")));
        // A slow check done elsewhere decides, not the password here.
        let (_, o) = authorize(&request("alice", Some("wrong")), &table, &users, &p, Some(true));
        assert_eq!(o.result, RadiusResult::Quarantine);
    }

    #[test]
    fn chap_and_eap_without_a_plane_are_refused_with_a_reason() {
        let (table, (users, _dir)) = (table(), users());
        let p = policy(Noncompliant::Quarantine);
        let mut chap = request("alice", None);
        chap.chap = true;
        let (_, o) = authorize(&chap, &table, &users, &p, None);
        assert_eq!((o.kind, o.result), (RadiusKind::Chap, RadiusResult::Reject));
        let mut eap = request("alice", None);
        eap.eap = true;
        let (_, o) = authorize(&eap, &table, &users, &p, None);
        assert_eq!((o.kind, o.reason.as_str()), (RadiusKind::Eap, "EAP is not enabled on this server"));
        let (_, o) = authorize(&request("alice", None), &table, &users, &p, None);
        assert_eq!(o.reason, "no User-Name and User-Password");
    }
    /// Dynamic groups place sessions: a restrictive group's VLAN and
    /// Filter-Id for a quarantined device, a group that may hold compliant
    /// devices only for full access (it never widens a quarantine).
    #[test]
    fn groups_place_sessions_and_never_widen_a_quarantine() {
        let rule = "name = \"enc\"\nseverity = \"critical\"\n[[rules]]\nid = \"enc\"\ncheck = { attr = \"encrypted\", eq = true }\n";
        let groups = "[[groups]]\nname = \"failing-enc\"\nwhen = { failed_rule = [\"enc/enc\"] }\nvlan = \"950\"\nfilter_id = \"portal\"\n\
                      [[groups]]\nname = \"android\"\nwhen = { checks = [{ attr = \"os\", eq = \"android\" }] }\nvlan = \"200\"\n";
        let set = PolicySet {
            policies: vec![Arc::new(Policy::parse(std::path::Path::new("t.toml"), rule).unwrap())],
            groups: Arc::new(crate::policy::Groups::parse(std::path::Path::new("groups.toml"), groups).unwrap()),
        };
        let table = Table::default();
        let mut engine = Engine::new(table.clone(), set, Duration::from_secs(3600));
        let (now, wall) = (Instant::now(), 1_795_000_000_000);
        for (id, encrypted, os) in
            [("ok-android", true, "android"), ("bad-android", false, "android"), ("ok-ios", true, "ios")]
        {
            let r = Report { seq: 1, ts: wall, encrypted: Some(encrypted), os: Some(os.into()), ..Report::default() };
            engine.handle_telemetry(id, r, now, wall).unwrap();
        }
        let p = policy(Noncompliant::Quarantine);
        let answer = |id: &str| match by_verdict(RadiusKind::Mab, table.get(id).as_deref(), &p).0 {
            Decision::Accept { vlan, filter_id, .. } => (vlan, filter_id),
            other => panic!("{other:?}"),
        };
        assert_eq!(answer("ok-android"), (Some("200".into()), None), "full access: the group's VLAN");
        assert_eq!(answer("bad-android"), (Some("950".into()), Some("portal".into())), "the portal, not 200");
        assert_eq!(answer("ok-ios"), (Some("100".into()), None));
        let d = table.get("ok-ios").unwrap();
        assert_eq!(p.profile(Some(&d), Access::Full), 0, "no group placement: nothing to track");
        let d = table.get("bad-android").unwrap();
        assert_ne!(p.profile(Some(&d), Access::Quarantine), 0);
        assert_ne!(
            p.profile(Some(&d), Access::Quarantine),
            p.profile(table.get("ok-android").as_deref(), Access::Full)
        );
    }
}
