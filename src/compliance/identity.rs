//! Identities (MAC addresses, WireGuard keys, certificate identities) and
//! who they belong to.
//!
//! An identity belongs to one device. A report claiming an identity that is
//! bound to another *live* device (one with a current verdict) does not get
//! it: the earlier binding stays, and the claim is a [`Conflict`], which
//! fails the built-in critical rule `warden/identity-conflict` for the
//! claimant. A certificate identity equal to another live device's id is
//! that device's, whether or not it claimed it. A device that reports
//! without an identity releases it; so does a device that is forgotten.
//! A stale device's bindings may be taken over by a live claimant.

use super::device::{Device, Verdict};
use crate::mac::Mac;
use crate::policy::{Failure, Policy};
use crate::telemetry::{Report, UnixMillis};
use std::sync::Arc;

/// Which kind of identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Mac,
    WgKey,
    Cert,
}

impl Kind {
    /// The `kind` label of `warden_identity_conflicts_total`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Mac => "mac",
            Kind::WgKey => "wg_key",
            Kind::Cert => "cert",
        }
    }
}

/// A claim refused because another live device holds the identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The device whose claim was refused.
    pub claimant: Arc<str>,
    pub kind: Kind,
    pub identity: Arc<str>,
    /// The device the identity stays bound to.
    pub owner: Arc<str>,
}

/// Conflicts kept per report (each refused claim is refused all the same).
pub const MAX_CONFLICTS: usize = 16;

/// The identities a report binds to its device (the claims that were not
/// conflicts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bound {
    pub macs: Vec<Mac>,
    pub wg_key: Option<Arc<str>>,
    pub cert: Option<Arc<str>>,
}

/// Who holds an identity now, as the table's indexes say.
pub trait Owners {
    fn mac_owner(&self, mac: Mac) -> Option<Arc<Device>>;
    fn wg_key_owner(&self, key: &str) -> Option<Arc<Device>>;
    fn cert_owner(&self, identity: &str) -> Option<Arc<Device>>;
    fn device(&self, id: &str) -> Option<Arc<Device>>;
}

/// Does `owner` keep its identities against another claimant?
fn live(owner: &Device) -> bool {
    owner.verdict != Verdict::Unknown
}

/// Splits `report`'s claims for device `id` into what it may bind and what
/// conflicts with another live device.
pub fn claims(id: &Arc<str>, report: &Report, owners: &impl Owners) -> (Bound, Vec<Conflict>) {
    let mut bound = Bound::default();
    let mut conflicts = Vec::new();
    let mut check = |kind: Kind, identity: &dyn std::fmt::Display, owner: Option<Arc<Device>>| -> bool {
        match owner {
            Some(o) if o.id != *id && live(&o) => {
                // A report is at most 64 KiB, thousands of MACs: every claim is
                // refused, the first few are kept to be reported.
                if conflicts.len() < MAX_CONFLICTS {
                    conflicts.push(Conflict {
                        claimant: Arc::clone(id),
                        kind,
                        identity: identity.to_string().into(),
                        owner: Arc::clone(&o.id),
                    });
                }
                false
            }
            _ => true,
        }
    };
    // Sorted and deduplicated: one claim per MAC, whatever the report repeats.
    let mut macs: Vec<Mac> = report.mac_addresses.iter().flat_map(|v| v.iter()).filter_map(|m| Mac::parse(m)).collect();
    macs.sort_unstable();
    macs.dedup();
    for mac in macs {
        if check(Kind::Mac, &mac, owners.mac_owner(mac)) {
            bound.macs.push(mac);
        }
    }
    if let Some(k) = &report.wg_public_key
        && check(Kind::WgKey, &k, owners.wg_key_owner(k))
    {
        bound.wg_key = Some(Arc::clone(k));
    }
    if let Some(c) = &report.cert_identity {
        // The device the certificate names outright comes first: the
        // claimant itself, or a live other device.
        let owner =
            if **c == **id { None } else { owners.device(c).filter(|d| live(d)).or_else(|| owners.cert_owner(c)) };
        if check(Kind::Cert, &c, owner) {
            bound.cert = Some(Arc::clone(c));
        }
    }
    (bound, conflicts)
}

/// The source the built-in policy reports (no file).
pub const BUILT_IN: &str = "<built-in>";

/// The key (`policy/rule`) of the failure a conflict causes.
pub const FAILURE_KEY: &str = "warden/identity-conflict";

/// The built-in policy whose one rule, `identity-conflict`, fails for a
/// device that claimed another live device's identity.
pub fn policy() -> Arc<Policy> {
    const TEXT: &str = r#"
name = "warden"
description = "Built in: an identity (MAC, WireGuard key, certificate) belongs to one device"
severity = "critical"
enforcement = "always"

[[rules]]
id = "identity-conflict"
description = "The device claimed an identity bound to another live device"
# Never evaluated: the engine fails this rule itself.
check = { attr = "cert_identity", present = true }
"#;
    // A constant, parsed by the unit test below: it cannot fail here.
    let policy = Policy::parse(std::path::Path::new(BUILT_IN), TEXT)
        .unwrap_or_else(|e| panic!("the built-in identity policy: {e}"));
    Arc::new(policy)
}

/// The failure for `conflicts` (not empty), starting at `since`.
pub fn failure(policy: &Arc<Policy>, conflicts: &[Conflict], since: UnixMillis) -> Failure {
    let observed: Vec<String> =
        conflicts.iter().map(|c| format!("{} {} (bound to {})", c.kind.label(), c.identity, c.owner)).collect();
    Failure { policy: Arc::clone(policy), rule: 0, observed: observed.join(", ").into(), since }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests seed simulated time from the real clock
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_built_in_policy_parses() {
        let p = policy();
        assert_eq!(format!("{}/{}", p.name, p.rules[0].id), FAILURE_KEY);
        assert_eq!(p.severity, crate::policy::Severity::Critical);
    }

    #[test]
    fn a_report_full_of_claims_is_refused_in_full_and_reported_in_part() {
        use crate::compliance::{Engine, Table};
        let table = Table::default();
        let mut engine = Engine::new(table.clone(), Default::default(), std::time::Duration::from_secs(3600));
        let now = std::time::Instant::now();
        let all: Vec<Arc<str>> = (0..3000u32)
            .map(|i| format!("02:00:00:{:02x}:{:02x}:{:02x}", i >> 16, (i >> 8) & 0xff, i & 0xff).into())
            .collect();
        let owner = Report { seq: 1, mac_addresses: Some(all.clone().into()), ..Default::default() };
        engine.handle_telemetry("owner", owner, now, 0).unwrap();
        // The same 3000 MACs, each twice.
        let twice: Vec<Arc<str>> = all.iter().chain(all.iter()).cloned().collect();
        let claimant = Report { seq: 1, mac_addresses: Some(twice.into()), ..Default::default() };
        engine.handle_telemetry("claimant", claimant, now, 0).unwrap();
        assert_eq!(std::iter::from_fn(|| engine.poll_conflict()).count(), MAX_CONFLICTS);
        let mac = Mac::parse(&all[2999]).unwrap();
        assert_eq!(table.by_mac(mac).map(|d| d.id.to_string()).as_deref(), Some("owner"), "none moved");
        assert!(table.get("claimant").unwrap().failures.iter().any(|f| f.key() == FAILURE_KEY));
    }

    /// The reference model: identity → owner, by the rules in the module
    /// doc, with no indexes and no sharing.
    #[derive(Default)]
    struct Model {
        owner: BTreeMap<(Kind, String), String>,
        claims: BTreeMap<String, Vec<(Kind, String)>>,
        live: BTreeMap<String, bool>,
    }

    impl Model {
        fn report(&mut self, id: &str, claims: &[(Kind, String)]) -> Vec<(Kind, String)> {
            // Release what it no longer claims.
            let before = self.claims.remove(id).unwrap_or_default();
            for c in before.iter().filter(|c| !claims.contains(c)) {
                if self.owner.get(c).is_some_and(|o| o == id) {
                    self.owner.remove(c);
                }
            }
            let mut refused = Vec::new();
            for c in claims {
                // A certificate identity naming a device is that device's:
                // the claimant itself, or a live other device.
                let holder = if c.0 == Kind::Cert && (c.1 == id || self.live.get(&c.1) == Some(&true)) {
                    Some(c.1.clone())
                } else {
                    self.owner.get(c).cloned()
                };
                match holder {
                    Some(o) if o != id && self.live.get(&o) == Some(&true) => refused.push(c.clone()),
                    _ => {
                        self.owner.insert(c.clone(), id.to_string());
                    }
                }
            }
            self.claims.insert(id.to_string(), claims.to_vec());
            self.live.insert(id.to_string(), true);
            refused
        }
    }

    fn op() -> impl Strategy<Value = (u8, Vec<(u8, u8)>, bool)> {
        // (device 0..4, claims of (kind 0..3, identity 0..3), goes stale after)
        (0u8..4, proptest::collection::vec((0u8..3, 0u8..3), 0..4), proptest::bool::weighted(0.2))
    }

    proptest! {
        /// The engine's bindings and conflicts match the reference model
        /// through any sequence of reports and devices going stale.
        #[test]
        fn bindings_match_the_reference(ops in proptest::collection::vec(op(), 1..40)) {
            use crate::compliance::{Engine, Table, Verdict};
            let table = Table::default();
            let mut engine = Engine::new(table.clone(), Default::default(), std::time::Duration::from_secs(3600));
            let mut model = Model::default();
            let mut now = std::time::Instant::now();
            for (seq, (dev, raw, stale)) in ops.into_iter().enumerate() {
                let id = format!("d{dev}");
                let mut claims: Vec<(Kind, String)> = Vec::new();
                for (k, i) in raw {
                    let c = match k {
                        0 => (Kind::Mac, format!("aa:bb:cc:00:00:0{i}")),
                        1 => (Kind::WgKey, format!("key{i}")),
                        // Certificate identities may name a device.
                        _ => (Kind::Cert, format!("d{i}")),
                    };
                    // One key and one certificate identity per report.
                    if (c.0 == Kind::Mac || !claims.iter().any(|x| x.0 == c.0)) && !claims.contains(&c) {
                        claims.push(c);
                    }
                }
                let mut report = Report { seq: seq as u64 + 1, ts: 0, ..Default::default() };
                let macs: Vec<Arc<str>> = claims.iter().filter(|c| c.0 == Kind::Mac).map(|c| c.1.as_str().into()).collect();
                report.mac_addresses = (!macs.is_empty()).then(|| macs.into());
                report.wg_public_key = claims.iter().find(|c| c.0 == Kind::WgKey).map(|c| c.1.as_str().into());
                report.cert_identity = claims.iter().find(|c| c.0 == Kind::Cert).map(|c| c.1.as_str().into());
                now += std::time::Duration::from_secs(1);
                engine.handle_telemetry(&id, report, now, 0).unwrap();
                let mut got: Vec<(Kind, String)> = std::iter::from_fn(|| engine.poll_conflict())
                    .map(|c| (c.kind, c.identity.to_string())).collect();
                while engine.poll_event().is_some() {}
                let mut want = model.report(&id, &claims);
                got.sort(); want.sort();
                prop_assert_eq!(&got, &want, "conflicts of {}", id);
                let d = table.get(&id).unwrap();
                prop_assert_eq!(d.failures.iter().any(|f| f.key() == "warden/identity-conflict"), !want.is_empty());
                if stale {
                    // Everyone goes stale: their bindings may be taken over.
                    now += std::time::Duration::from_secs(3601);
                    engine.handle_timeout(now, 0);
                    while engine.poll_event().is_some() {}
                    for v in model.live.values_mut() {
                        *v = false;
                    }
                    for d in model.live.keys() {
                        prop_assert_eq!(table.get(d).map(|d| d.verdict), Some(Verdict::Unknown));
                    }
                }
                // Every binding in the model is the table's.
                for ((kind, identity), owner) in &model.owner {
                    let found = match kind {
                        Kind::Mac => table.by_mac(Mac::parse(identity).unwrap()),
                        Kind::WgKey => table.by_wg_key(identity),
                        Kind::Cert => table.by_cert_identity(identity),
                    };
                    prop_assert_eq!(found.map(|d| d.id.to_string()), Some(owner.clone()), "{:?} {}", kind, identity);
                }
            }
        }
    }
}
