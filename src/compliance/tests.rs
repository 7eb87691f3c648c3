//! The engine in simulated time: grace, enforcement modes, indexes, restore,
//! and a property test against a reference model. One file because every
//! test drives the same simulated clock and fixtures.

use super::*;
use crate::mac::Mac;
use crate::policy::{Policy, PolicySet};
use crate::telemetry::Report;
use proptest::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const STALE: Duration = Duration::from_secs(5);
const T0: i64 = 1_795_000_000_000;

fn policies(texts: &[&str]) -> PolicySet {
    let policies = texts.iter().map(|t| Arc::new(Policy::parse(Path::new("t.toml"), t).unwrap())).collect();
    PolicySet { policies, ..Default::default() }
}

fn encrypted_policy(severity: &str, enforcement: &str, grace: &str) -> String {
    format!(
        "name = \"enc-{enforcement}\"\nseverity = \"{severity}\"\nenforcement = \"{enforcement}\"\ngrace = \"{grace}\"\n\
         [[rules]]\nid = \"enc\"\ncheck = {{ attr = \"encrypted\", eq = true }}\n"
    )
}

fn report(seq: u64, encrypted: bool, mac: Option<&str>) -> Report {
    Report {
        seq,
        ts: T0,
        encrypted: Some(encrypted),
        mac_addresses: mac.map(|m| Arc::from(vec![Arc::<str>::from(m)])),
        ..Report::default()
    }
}

/// A simulated clock: monotonic and wall time advance together.
struct Clock {
    start: Instant,
    ms: u64,
}

impl Clock {
    fn new() -> Self {
        Self { start: Instant::now(), ms: 0 }
    }
    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.ms)
    }
    fn wall(&self) -> i64 {
        T0 + self.ms as i64
    }
    fn advance(&mut self, ms: u64) {
        self.ms += ms;
    }
}

fn drain(e: &mut Engine) -> Vec<Change> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

#[test]
fn grace_delays_enforcement_and_a_timeout_ends_it() {
    let mut e = Engine::new(Table::default(), policies(&[&encrypted_policy("major", "always", "1h")]), STALE * 10_000);
    let mut c = Clock::new();
    e.handle_telemetry("d", report(1, false, None), c.now(), c.wall()).unwrap();
    let ev = drain(&mut e);
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].new, ev[0].enforce), (Verdict::Noncompliant, Enforce::default()), "in grace: not enforced");
    assert_eq!(e.poll_timeout(), Some(c.now() + Duration::from_secs(3600)));

    // Still failing 30 minutes later: grace still runs from the first failure.
    c.advance(1_800_000);
    e.handle_telemetry("d", report(2, false, None), c.now(), c.wall()).unwrap();
    assert!(drain(&mut e).is_empty(), "same failures, same enforcement: no event");
    c.advance(1_800_000);
    e.handle_timeout(c.now(), c.wall());
    let ev = drain(&mut e);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].cause, Cause::GraceExpired);
    assert!(ev[0].enforce.quarantine && ev[0].enforce.deny_admission);
    assert!(e.table().get("d").unwrap().enforce.quarantine);
}

#[test]
fn enforcement_modes_and_severities() {
    let cases = [
        (encrypted_policy("critical", "always", "0s"), Enforce { quarantine: true, deny_admission: true }),
        (encrypted_policy("critical", "admission", "0s"), Enforce { quarantine: false, deny_admission: true }),
        (encrypted_policy("critical", "monitor", "0s"), Enforce::default()),
        (encrypted_policy("minor", "always", "0s"), Enforce::default()),
    ];
    for (policy, want) in cases {
        let mut e = Engine::new(Table::default(), policies(&[&policy]), STALE);
        let c = Clock::new();
        e.handle_telemetry("d", report(1, false, None), c.now(), c.wall()).unwrap();
        let d = e.table().get("d").unwrap();
        assert_eq!(d.verdict, Verdict::Noncompliant, "{policy}");
        assert_eq!(d.enforce, want, "{policy}");
    }
}

#[test]
fn identities_follow_reports_and_a_live_owner_keeps_them() {
    let mut e = Engine::new(Table::default(), PolicySet::default(), STALE);
    let c = Clock::new();
    let mut r = report(1, true, Some("AA-BB-CC-00-00-01"));
    r.wg_public_key = Some("key-a".into());
    r.cert_identity = Some("cn-a".into());
    e.handle_telemetry("a", r, c.now(), c.wall()).unwrap();
    let mac = Mac::parse("aa:bb:cc:00:00:01").unwrap();
    assert_eq!(&*e.table().by_mac(mac).unwrap().id, "a");
    assert_eq!(&*e.table().by_wg_key("key-a").unwrap().id, "a");
    assert_eq!(&*e.table().by_cert_identity("cn-a").unwrap().id, "a");

    // New identities replace the old ones.
    let mut r = report(2, true, Some("aabb.cc00.0002"));
    r.wg_public_key = Some("key-b".into());
    e.handle_telemetry("a", r, c.now(), c.wall()).unwrap();
    assert!(e.table().by_mac(mac).is_none());
    assert!(e.table().by_wg_key("key-a").is_none());
    assert!(e.table().by_cert_identity("cn-a").is_none());
    assert_eq!(&*e.table().by_mac(Mac::parse("aa:bb:cc:00:00:02").unwrap()).unwrap().id, "a");

    // A MAC claimed by another live device stays with its owner, and the
    // claimant fails `identity-conflict`.
    e.handle_telemetry("b", report(1, true, Some("aa:bb:cc:00:00:02")), c.now(), c.wall()).unwrap();
    assert_eq!(&*e.table().by_mac(Mac::parse("aa:bb:cc:00:00:02").unwrap()).unwrap().id, "a");
    let b = e.table().get("b").unwrap();
    assert_eq!(b.verdict, Verdict::Noncompliant);
    assert_eq!(b.failures.iter().map(|f| f.key()).collect::<Vec<_>>(), ["warden/identity-conflict"]);
    assert!(b.enforce.quarantine, "critical, always, no grace");
    let conflict = e.poll_conflict().expect("the refused claim is reported");
    assert_eq!((&*conflict.claimant, &*conflict.owner, conflict.kind.label()), ("b", "a", "mac"));
    // Released by its owner, it goes to the next claimant.
    e.handle_telemetry("a", report(3, true, None), c.now(), c.wall()).unwrap();
    e.handle_telemetry("b", report(2, true, Some("aa:bb:cc:00:00:02")), c.now(), c.wall()).unwrap();
    assert_eq!(&*e.table().by_mac(Mac::parse("aa:bb:cc:00:00:02").unwrap()).unwrap().id, "b");
    assert_eq!(e.table().get("b").unwrap().verdict, Verdict::Compliant);
}

#[test]
fn policy_reload_re_evaluates_and_says_so() {
    let mut e = Engine::new(Table::default(), PolicySet::default(), STALE);
    let c = Clock::new();
    e.handle_telemetry("d", report(1, false, None), c.now(), c.wall()).unwrap();
    assert_eq!(drain(&mut e)[0].new, Verdict::Compliant, "no policy: nothing to violate");
    e.handle_policies(policies(&[&encrypted_policy("critical", "always", "0s")]), c.now(), c.wall());
    let ev = drain(&mut e);
    assert_eq!((ev.len(), ev[0].cause, ev[0].new), (1, Cause::PolicyReload, Verdict::Noncompliant));
    assert_eq!(e.counts(), [0, 1, 0]);
}

#[test]
fn restore_keeps_failure_start_and_expires_the_stale() {
    let set = policies(&[&encrypted_policy("major", "always", "1h")]);
    let mut e = Engine::new(Table::default(), set, STALE);
    let c = Clock::new();
    let since = c.wall() - 3_000;
    e.restore(
        "fresh",
        report(4, false, None),
        c.wall() - 1_000,
        &[("enc-always/enc".into(), since)],
        c.now(),
        c.wall(),
    );
    e.restore("old", report(9, true, None), c.wall() - 6_000, &[], c.now(), c.wall());
    assert!(drain(&mut e).is_empty(), "restore emits nothing: the planes start after it");
    let fresh = e.table().get("fresh").unwrap();
    assert_eq!((fresh.verdict, fresh.failures[0].since), (Verdict::Noncompliant, since));
    assert_eq!(e.table().get("old").unwrap().verdict, Verdict::Unknown);
    assert_eq!(e.counts(), [0, 1, 1]);
    // It goes stale 4 s later (5 s after its last report), not 5 s from now.
    e.handle_timeout(c.now() + Duration::from_millis(3_999), c.wall() + 3_999);
    assert!(drain(&mut e).is_empty());
    e.handle_timeout(c.now() + Duration::from_secs(4), c.wall() + 4_000);
    assert_eq!(drain(&mut e)[0].cause, Cause::Stale);
    // The replay guard survives a restart.
    assert!(e.handle_telemetry("old", report(9, true, None), c.now(), c.wall()).is_err());
}

/// One step of a random run.
#[derive(Clone, Debug)]
enum Op {
    Report { device: u8, seq: u64, encrypted: bool, mac: Option<u8> },
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..6, 0u64..12, any::<bool>(), proptest::option::of(0u8..4))
            .prop_map(|(device, seq, encrypted, mac)| Op::Report { device, seq, encrypted, mac }),
        1 => (0u64..4_000).prop_map(Op::Advance),
    ]
}

/// The reference: what each device last said, and when.
#[derive(Default)]
struct Model {
    devices: HashMap<u8, (u64, u64, bool, Option<u8>)>, // seq, seen_ms, encrypted, mac
    mac_owner: HashMap<u8, u8>,
    /// Devices whose last report claimed a MAC another live device holds.
    conflicted: std::collections::HashSet<u8>,
}

impl Model {
    fn verdict(&self, device: u8, now_ms: u64) -> Verdict {
        match self.devices.get(&device) {
            None => Verdict::Unknown,
            Some((_, seen, _, _)) if now_ms - seen >= STALE.as_millis() as u64 => Verdict::Unknown,
            Some(_) if self.conflicted.contains(&device) => Verdict::Noncompliant,
            Some((_, _, true, _)) => Verdict::Compliant,
            Some(_) => Verdict::Noncompliant,
        }
    }
}

fn mac_text(m: u8) -> String {
    format!("aa:bb:cc:00:00:{m:02x}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn table_matches_reference_model(ops in prop::collection::vec(op(), 1..80)) {
        let mut e = Engine::new(Table::default(), policies(&[&encrypted_policy("critical", "always", "0s")]), STALE);
        let mut c = Clock::new();
        let mut m = Model::default();
        for op in ops {
            let was_advance = matches!(op, Op::Advance(_));
            let before: Vec<Verdict> = (0..6).map(|d| m.verdict(d, c.ms)).collect();
            match op {
                Op::Report { device, seq, encrypted, mac } => {
                    let macs = mac.map(mac_text);
                    let got = e.handle_telemetry(&format!("d{device}"), report(seq, encrypted, macs.as_deref()), c.now(), c.wall());
                    let accept = m.devices.get(&device).is_none_or(|(last, ..)| seq > *last);
                    prop_assert_eq!(got.is_ok(), accept);
                    if accept {
                        let old_mac = m.devices.get(&device).and_then(|d| d.3);
                        if let Some(om) = old_mac && Some(om) != mac && m.mac_owner.get(&om) == Some(&device) {
                            m.mac_owner.remove(&om);
                        }
                        // A MAC held by another live device stays with it.
                        let held = mac.and_then(|nm| m.mac_owner.get(&nm).copied())
                            .filter(|o| *o != device && m.verdict(*o, c.ms) != Verdict::Unknown);
                        match (mac, held) {
                            (Some(_), Some(_)) => { m.conflicted.insert(device); }
                            (Some(nm), None) => { m.mac_owner.insert(nm, device); m.conflicted.remove(&device); }
                            (None, _) => { m.conflicted.remove(&device); }
                        }
                        m.devices.insert(device, (seq, c.ms, encrypted, mac));
                    }
                }
                Op::Advance(ms) => {
                    c.advance(ms);
                    e.handle_timeout(c.now(), c.wall());
                }
            }
            let after: Vec<Verdict> = (0..6).map(|d| m.verdict(d, c.ms)).collect();
            let flips = before.iter().zip(&after).filter(|(b, a)| b != a).count();
            let events: Vec<Change> = drain(&mut e);
            prop_assert_eq!(events.iter().filter(|ev| ev.old != ev.new).count(), flips);
            let mut counts = [0usize; 3];
            for d in 0..6u8 {
                let got = e.table().get(&format!("d{d}")).map(|x| x.verdict);
                if m.devices.contains_key(&d) {
                    prop_assert_eq!(got, Some(after[d as usize]), "device d{}", d);
                    counts[after[d as usize].index()] += 1;
                } else {
                    prop_assert_eq!(got, None);
                }
            }
            prop_assert_eq!(e.counts(), counts);
            for mac in 0..4u8 {
                let owner = e.table().by_mac(Mac::parse(&mac_text(mac)).unwrap());
                let got = owner.as_ref().map(|d| d.id.to_string());
                prop_assert_eq!(got, m.mac_owner.get(&mac).map(|d| format!("d{d}")));
                // The MAC index holds the record itself: it must be the
                // current one, whatever changed the verdict (a report, a
                // timer), or MAB would admit by a verdict that is gone.
                if let Some(d) = owner {
                    let current = e.table().get(&d.id).unwrap();
                    prop_assert!(Arc::ptr_eq(&d, &current), "MAC {} holds an old record of {}", mac, d.id);
                }
            }
            // After a timeout is handled, every deadline left lies ahead.
            if was_advance && let Some(at) = e.poll_timeout() {
                prop_assert!(at > c.now());
            }
        }
    }
}

/// Runs the engine's timers until `until`, the way the shell does.
fn run_until(e: &mut Engine, c: &mut Clock, until_ms: u64) {
    while let Some(at) = e.poll_timeout() {
        let at_ms = at.saturating_duration_since(c.start).as_millis() as u64;
        if at_ms > until_ms {
            break;
        }
        c.ms = c.ms.max(at_ms);
        e.handle_timeout(c.now(), c.wall());
    }
    c.ms = until_ms;
    e.handle_timeout(c.now(), c.wall());
}

#[test]
fn a_source_outage_holds_verdicts_and_silence_counts_again_after_it() {
    use crate::compliance::outage::Cause as Out;
    let mut e = Engine::new(Table::default(), PolicySet::default(), STALE);
    let mut c = Clock::new();
    e.handle_telemetry("d", report(1, true, None), c.now(), c.wall()).unwrap();
    drain(&mut e);
    // 1 s after its report the source goes down, for 10 stale periods.
    c.advance(1_000);
    e.handle_source(false, c.now(), c.wall());
    assert_eq!(e.poll_outage(), Some(OutageEvent::Began { cause: Out::SourceDown }));
    run_until(&mut e, &mut c, 1_000 + 10 * STALE.as_millis() as u64);
    assert!(drain(&mut e).is_empty(), "silence while the source is out changes nothing");
    let d = e.table().get("d").unwrap();
    assert_eq!((d.verdict, d.held), (Verdict::Compliant, true));
    assert_eq!(e.held(), 1);
    // Back: it has used 1 s of its stale_after; the rest runs from now.
    let back = c.ms;
    e.handle_source(true, c.now(), c.wall());
    assert!(matches!(e.poll_outage(), Some(OutageEvent::Ended { cause: Out::SourceDown, released: 1, .. })));
    assert!(!e.table().get("d").unwrap().held);
    let rest = STALE.as_millis() as u64 - 1_000;
    run_until(&mut e, &mut c, back + rest - 1);
    assert!(drain(&mut e).is_empty());
    run_until(&mut e, &mut c, back + rest);
    let ev = drain(&mut e);
    assert_eq!((ev.len(), ev[0].cause, ev[0].new), (1, Cause::Stale, Verdict::Unknown));
}

#[test]
fn after_the_outage_grace_the_fail_mode_applies() {
    use crate::compliance::outage::{FailMode, Settings};
    for (mode, verdict) in [(FailMode::Hold, Verdict::Compliant), (FailMode::Unknown, Verdict::Unknown)] {
        let grace = STALE * 3;
        let settings = Settings { grace, fail_mode: mode, ..Settings::default() };
        let mut e = Engine::new(Table::default(), PolicySet::default(), STALE).with_outage(settings);
        let mut c = Clock::new();
        e.handle_telemetry("d", report(1, true, None), c.now(), c.wall()).unwrap();
        drain(&mut e);
        e.handle_source(false, c.now(), c.wall());
        run_until(&mut e, &mut c, (grace + STALE * 2).as_millis() as u64);
        assert_eq!(e.table().get("d").unwrap().verdict, verdict, "{mode:?}");
        let events: Vec<OutageEvent> = std::iter::from_fn(|| e.poll_outage()).collect();
        assert!(events.iter().any(|ev| matches!(ev, OutageEvent::Expired { .. })), "{events:?}");
    }
}

#[test]
fn a_fleet_falling_silent_at_once_is_an_outage_not_staleness() {
    use crate::compliance::outage::{Cause as Out, Settings};
    let settings = Settings { window: Duration::from_secs(2), silent_fraction: 0.1, ..Settings::default() };
    let mut e = Engine::new(Table::default(), PolicySet::default(), STALE).with_outage(settings);
    let mut c = Clock::new();
    for i in 0..100 {
        e.handle_telemetry(&format!("d{i}"), report(1, true, None), c.now(), c.wall()).unwrap();
        c.advance(10);
    }
    drain(&mut e);
    // Nobody reports again: the deadlines fire 10 ms apart.
    run_until(&mut e, &mut c, STALE.as_millis() as u64 + 2_000);
    assert!(drain(&mut e).is_empty(), "no device went unknown");
    assert_eq!(e.poll_outage(), Some(OutageEvent::Began { cause: Out::FleetSilent }));
    assert_eq!(e.held(), 100);
    // Half the fleet comes back: the outage ends; the silent rest is stale.
    for i in 0..50 {
        e.handle_telemetry(&format!("d{i}"), report(2, true, None), c.now(), c.wall()).unwrap();
    }
    assert!(matches!(e.poll_outage(), Some(OutageEvent::Ended { cause: Out::FleetSilent, released: 50, .. })));
    let stale = drain(&mut e).into_iter().filter(|ch| ch.new == Verdict::Unknown).count();
    assert_eq!(stale, 50);
    assert_eq!(e.held(), 0);
    assert_eq!(e.counts(), [50, 0, 50]);
}

#[test]
fn a_few_devices_going_silent_in_a_large_fleet_go_stale_after_the_window() {
    use crate::compliance::outage::Settings;
    let window = Duration::from_secs(2);
    let settings = Settings { window, silent_fraction: 0.1, ..Settings::default() };
    let mut e = Engine::new(Table::default(), PolicySet::default(), STALE).with_outage(settings);
    let mut c = Clock::new();
    for i in 0..100 {
        e.handle_telemetry(&format!("d{i}"), report(1, true, None), c.now(), c.wall()).unwrap();
    }
    drain(&mut e);
    // All but three keep reporting.
    let mut seq = 1;
    while c.ms < STALE.as_millis() as u64 * 3 {
        c.advance(STALE.as_millis() as u64 / 4);
        seq += 1;
        for i in 3..100 {
            e.handle_telemetry(&format!("d{i}"), report(seq, true, None), c.now(), c.wall()).unwrap();
        }
        e.handle_timeout(c.now(), c.wall());
    }
    let stale: Vec<String> =
        drain(&mut e).into_iter().filter(|ch| ch.new == Verdict::Unknown).map(|ch| ch.device.to_string()).collect();
    assert_eq!(stale, ["d0", "d1", "d2"]);
    assert_eq!(e.poll_outage(), None);
}

#[test]
fn a_reload_that_would_quarantine_half_the_fleet_waits_for_confirmation() {
    let mut e = Engine::new(Table::default(), PolicySet::default(), STALE * 1000).with_breaker(0.1);
    let c = Clock::new();
    for i in 0..10 {
        e.handle_telemetry(&format!("d{i}"), report(1, i % 2 == 0, None), c.now(), c.wall()).unwrap();
    }
    drain(&mut e);
    let strict = || policies(&[&encrypted_policy("critical", "always", "0s")]);
    e.handle_policies(strict(), c.now(), c.wall());
    assert!(drain(&mut e).is_empty(), "nothing applied");
    assert_eq!(e.counts(), [10, 0, 0]);
    let held = e.held_changes();
    assert_eq!((held.len(), held[0].restricting, held[0].live), (1, 5, 10));
    assert!(matches!(e.poll_breaker(), Some(BreakerEvent::Held(_))));
    assert!(e.confirm(held[0].id + 1, c.now(), c.wall()).is_none(), "only the held batch");
    // A newer set replaces it (and is held again, with a new id).
    e.handle_policies(strict(), c.now(), c.wall());
    let again = e.held_changes();
    assert_ne!(again[0].id, held[0].id);
    assert!(e.confirm(held[0].id, c.now(), c.wall()).is_none(), "the replaced batch is gone");
    let confirmed = e.confirm(again[0].id, c.now(), c.wall()).expect("confirmed");
    assert_eq!(confirmed.restricting, 5);
    assert_eq!(drain(&mut e).iter().filter(|ch| ch.new == Verdict::Noncompliant).count(), 5);
    assert!(e.held_changes().is_empty());
}

#[test]
fn a_change_restricting_one_device_never_waits() {
    let mut e = Engine::new(Table::default(), PolicySet::default(), STALE * 1000).with_breaker(0.1);
    let c = Clock::new();
    e.handle_telemetry("d", report(1, false, None), c.now(), c.wall()).unwrap();
    drain(&mut e);
    e.handle_policies(policies(&[&encrypted_policy("critical", "always", "0s")]), c.now(), c.wall());
    assert_eq!(drain(&mut e).len(), 1, "100% of a one-device fleet, applied at once");
    assert!(e.held_changes().is_empty());
}

#[test]
fn the_time_warden_was_down_is_an_outage_not_silence() {
    let mut e = Engine::new(Table::default(), policies(&[&encrypted_policy("critical", "always", "0s")]), STALE);
    let mut c = Clock::new();
    c.advance(60_000);
    // Down from 20 s ago; one device was last heard 1 s before that, one
    // a whole stale period before that.
    let down = c.wall() - 20_000;
    e.handle_source(false, c.now() - Duration::from_secs(20), down);
    e.restore("recent", report(1, false, None), down - 1_000, &[], c.now(), c.wall());
    e.restore("silent", report(1, true, None), down - 6_000, &[], c.now(), c.wall());
    let recent = e.table().get("recent").unwrap();
    assert_eq!((recent.verdict, recent.held), (Verdict::Noncompliant, true), "held, and still restricted");
    assert_eq!(e.table().get("silent").unwrap().verdict, Verdict::Unknown, "silent before warden went down");
    // Listening again: 4 s of its stale_after are left.
    e.handle_source(true, c.now(), c.wall());
    let back = c.ms;
    run_until(&mut e, &mut c, back + 3_999);
    assert!(drain(&mut e).is_empty());
    run_until(&mut e, &mut c, back + 4_000);
    assert_eq!(drain(&mut e)[0].new, Verdict::Unknown);
}

#[test]
fn small_reloads_within_a_minute_add_up() {
    let mut e = Engine::new(Table::default(), PolicySet::default(), STALE * 1000).with_breaker(0.1);
    let mut c = Clock::new();
    // 100 devices; reload k quarantines 6 more of them (OS versions 1..).
    for i in 0..100u64 {
        let mut r = report(1, true, None);
        r.os_version = Some(format!("{}", i / 6 + 1).into());
        e.handle_telemetry(&format!("d{i}"), r, c.now(), c.wall()).unwrap();
    }
    drain(&mut e);
    let min_version = |v: u64| {
        let p = format!(
            "name = \"min\"\nseverity = \"critical\"\n[[rules]]\nid = \"v\"\ncheck = {{ attr = \"os_version\", version_gte = \"{v}\" }}\n"
        );
        policies(&[&p])
    };
    e.handle_policies(min_version(2), c.now(), c.wall());
    assert!(e.held_changes().is_empty(), "6% goes ahead");
    assert_eq!(drain(&mut e).len(), 6);
    e.handle_policies(min_version(3), c.now(), c.wall());
    assert_eq!(e.held_changes().len(), 1, "6% more within the minute: 12% in all, held");
    // A minute later the next 6% is on its own again.
    c.advance(60_000);
    e.handle_policies(min_version(3), c.now(), c.wall());
    assert!(e.held_changes().is_empty(), "{:?}", e.held_changes());
}

#[test]
fn a_device_silent_for_forget_after_is_removed_and_its_identities_released() {
    let forget = STALE * 4;
    let mut e = Engine::new(Table::default(), PolicySet::default(), STALE).with_forget_after(forget);
    let mut c = Clock::new();
    e.handle_telemetry("gone", report(1, true, Some("aa:bb:cc:00:00:0f")), c.now(), c.wall()).unwrap();
    drain(&mut e);
    run_until(&mut e, &mut c, STALE.as_millis() as u64);
    assert_eq!(e.table().get("gone").unwrap().verdict, Verdict::Unknown, "stale first");
    run_until(&mut e, &mut c, forget.as_millis() as u64 - 1);
    assert!(e.table().get("gone").is_some());
    run_until(&mut e, &mut c, forget.as_millis() as u64);
    assert!(e.table().get("gone").is_none(), "forgotten");
    assert_eq!(e.poll_forgotten().as_deref(), Some("gone"));
    assert_eq!(e.counts(), [0, 0, 0]);
    let mac = Mac::parse("aa:bb:cc:00:00:0f").unwrap();
    assert!(e.table().by_mac(mac).is_none(), "its MAC released");
    assert_eq!(e.poll_timeout(), None, "nothing left to time");

    // Restored from a snapshot older than forget_after: not restored at all.
    let mut e = Engine::new(Table::default(), PolicySet::default(), STALE).with_forget_after(forget);
    let c = Clock::new();
    let long_ago = c.wall() - forget.as_millis() as i64 - 1;
    e.restore("ancient", report(1, true, None), long_ago, &[], c.now(), c.wall());
    e.restore("stale", report(1, true, None), c.wall() - STALE.as_millis() as i64 - 1, &[], c.now(), c.wall());
    assert!(e.table().get("ancient").is_none());
    assert_eq!(e.poll_forgotten().as_deref(), Some("ancient"));
    assert_eq!(e.table().get("stale").unwrap().verdict, Verdict::Unknown);
    assert!(e.poll_timeout().is_some(), "the stale one will be forgotten in its turn");
}

#[test]
fn a_jump_in_seq_is_a_gap() {
    let mut e = Engine::new(Table::default(), PolicySet::default(), STALE);
    let c = Clock::new();
    for seq in [1, 2, 3, 7, 8, 10] {
        e.handle_telemetry("d", report(seq, true, None), c.now(), c.wall()).unwrap();
    }
    assert_eq!(e.take_seq_gaps(), 2, "3 → 7 and 8 → 10");
    assert_eq!(e.take_seq_gaps(), 0, "taken");
    e.handle_telemetry("new", report(40, true, None), c.now(), c.wall()).unwrap();
    assert_eq!(e.take_seq_gaps(), 0, "a device's first report is no gap");
}

fn admission(e: &Engine, id: &str) -> Grant {
    grant(e.table().get(id).as_deref(), Stage::Admission, &Rules::new(crate::config::UnknownDevice::Quarantine))
}

#[test]
fn an_exemption_lifts_a_quarantine_at_once_and_expires_by_itself() {
    use overrides::{Mode, Override};
    let mut e =
        Engine::new(Table::default(), policies(&[&encrypted_policy("critical", "always", "0s")]), STALE * 10_000);
    let mut c = Clock::new();
    e.handle_telemetry("d", report(1, false, None), c.now(), c.wall()).unwrap();
    drain(&mut e);
    assert_eq!(admission(&e, "d").access, Access::Quarantine);

    let o = Override::new(Mode::Exempt, c.wall(), 60_000, "repair ticket 42", "alice").unwrap();
    assert!(e.set_override("d", Some(o), c.now(), c.wall()));
    let ev = drain(&mut e);
    assert_eq!(ev.len(), 1, "the planes hear of it");
    assert_eq!((ev[0].cause, ev[0].new), (Cause::Override, Verdict::Noncompliant), "the verdict stays the reports'");
    assert_eq!(admission(&e, "d"), Grant { access: Access::Full, why: Why::Exempt });
    assert_eq!(e.poll_timeout(), Some(c.now() + Duration::from_secs(60)));

    // Replaced by a shorter one: the earlier expiry no longer counts.
    c.advance(10_000);
    let o = Override::new(Mode::Exempt, c.wall(), 20_000, "shorter", "bob").unwrap();
    e.set_override("d", Some(o), c.now(), c.wall());
    drain(&mut e);
    assert_eq!(e.poll_timeout(), Some(c.now() + Duration::from_secs(20)));
    c.advance(20_000);
    e.handle_timeout(c.now(), c.wall());
    let ev = drain(&mut e);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].cause, Cause::OverrideExpired);
    let (device, ended) = e.poll_override_expired().expect("the expiry, for the audit trail");
    assert_eq!((&*device, ended.reason.as_str(), ended.by.as_str()), ("d", "shorter", "bob"));
    assert!(e.poll_override_expired().is_none(), "the replaced override did not expire: it was replaced");
    assert_eq!(admission(&e, "d").access, Access::Quarantine, "back to what the reports say");
    assert!(e.table().get("d").unwrap().admin_override.is_none());
    c.advance(60_000);
    e.handle_timeout(c.now(), c.wall());
    assert!(drain(&mut e).is_empty(), "nothing left to expire");
}

#[test]
fn a_quarantine_override_restricts_a_compliant_device_and_can_be_cleared() {
    use overrides::{Mode, Override};
    let mut e =
        Engine::new(Table::default(), policies(&[&encrypted_policy("critical", "always", "0s")]), STALE * 10_000);
    let c = Clock::new();
    e.handle_telemetry("d", report(1, true, None), c.now(), c.wall()).unwrap();
    drain(&mut e);
    let o = Override::new(Mode::Quarantine, c.wall(), 3_600_000, "stolen", "alice").unwrap();
    assert!(!e.set_override("nobody", Some(o.clone()), c.now(), c.wall()), "an override needs a known device");
    e.set_override("d", Some(o), c.now(), c.wall());
    assert_eq!(admission(&e, "d"), Grant { access: Access::Quarantine, why: Why::Overridden });
    // A passing report changes nothing while it lasts.
    e.handle_telemetry("d", report(2, true, None), c.now(), c.wall()).unwrap();
    assert_eq!(admission(&e, "d").access, Access::Quarantine);
    assert!(e.set_override("d", None, c.now(), c.wall()));
    assert_eq!(drain(&mut e).last().map(|c| c.cause), Some(Cause::Override));
    assert_eq!(admission(&e, "d").access, Access::Full);
    assert_eq!(e.poll_timeout(), Some(c.now() + STALE * 10_000), "only staleness is left");
}

#[test]
fn an_override_survives_a_restart_until_it_expires() {
    use overrides::{Mode, Override};
    let set = || policies(&[&encrypted_policy("critical", "always", "0s")]);
    let mut e = Engine::new(Table::default(), set(), STALE * 10_000);
    let mut c = Clock::new();
    e.handle_telemetry("d", report(1, false, None), c.now(), c.wall()).unwrap();
    let o = Override::new(Mode::Exempt, c.wall(), 60_000, "repair", "alice").unwrap();
    e.set_override("d", Some(o.clone()), c.now(), c.wall());
    let entry = snapshot::Entry::of(&e.table().get("d").unwrap());
    assert_eq!(entry.admin_override.as_ref(), Some(&o));
    let line = serde_json::to_string(&entry).unwrap();
    for (after_ms, exempt) in [(30_000, true), (60_000, false)] {
        let mut r = Engine::new(Table::default(), set(), STALE * 10_000);
        let mut c2 = Clock { start: c.start, ms: c.ms };
        c2.advance(after_ms);
        let b: snapshot::Entry = serde_json::from_str(&line).unwrap();
        r.restore(&b.id, b.report, b.last_seen, &b.failing_since, c2.now(), c2.wall());
        r.restore_override(&b.id, b.admin_override.unwrap(), c2.now(), c2.wall());
        assert!(drain(&mut r).is_empty(), "a restore emits nothing");
        assert_eq!(admission(&r, "d").access == Access::Full, exempt, "after {after_ms} ms");
    }
    c.advance(1);
}

/// A restore split across two threads (settled by a [`Restorer`] on the
/// snapshot's reader, installed by the engine) leaves the same table as
/// one done in place: verdicts, failure start times, held devices,
/// bindings, a refused claim judged again, an override.
#[test]
fn a_restore_settled_on_another_thread_matches_one_done_in_place() {
    use overrides::{Mode, Override};
    let set = || policies(&[&encrypted_policy("critical", "always", "1h")]);
    let mut e = Engine::new(Table::default(), set(), STALE);
    let mut c = Clock::new();
    e.handle_telemetry("owner", report(1, true, Some("aa:bb:cc:00:00:01")), c.now(), c.wall()).unwrap();
    e.handle_telemetry("failing", report(1, false, Some("aa:bb:cc:00:00:02")), c.now(), c.wall()).unwrap();
    c.advance(1_000);
    e.handle_telemetry("quiet", report(1, true, None), c.now(), c.wall()).unwrap();
    let o = Override::new(Mode::Exempt, c.wall(), 3_600_000, "repair", "alice").unwrap();
    e.set_override("failing", Some(o), c.now(), c.wall());
    drain(&mut e);
    let mut lines: Vec<String> = Vec::new();
    e.table().for_each(|d| lines.push(serde_json::to_string(&snapshot::Entry::of(d)).unwrap()));
    lines.sort();
    // A line claiming the owner's MAC: the claim is refused at install.
    let thief = snapshot::Entry {
        id: "thief".into(),
        last_seen: c.wall(),
        failing_since: Vec::new(),
        report: report(1, true, Some("aa:bb:cc:00:00:01")),
        admin_override: None,
    };
    lines.push(serde_json::to_string(&thief).unwrap());
    let entries = || lines.iter().map(|l| serde_json::from_str::<snapshot::Entry>(l).unwrap());
    // Restarted 6 s later (past `stale_after`), after the outage of the
    // time it was down began: the devices come back held.
    c.advance(6_000);
    let fresh = || {
        let mut r = Engine::new(Table::default(), set(), STALE);
        r.handle_source(false, c.now() - Duration::from_millis(5_500), c.wall() - 5_500);
        r
    };
    let mut in_place = fresh();
    for b in entries() {
        in_place.restore(&b.id, b.report, b.last_seen, &b.failing_since, c.now(), c.wall());
        if let Some(o) = b.admin_override {
            in_place.restore_override(&b.id, o, c.now(), c.wall());
        }
    }
    let mut split = fresh();
    let mut restorer = split.restorer(c.now(), c.wall());
    let settled: Vec<Settled> =
        std::thread::scope(|s| s.spawn(|| entries().map(|b| restorer.settle(b)).collect()).join().unwrap());
    for s in settled {
        split.install(s, c.now(), c.wall());
    }
    split.finish_restore(restorer);
    assert!(drain(&mut split).is_empty(), "a restore emits nothing");
    assert_eq!(split.counts(), in_place.counts());
    assert_eq!(split.poll_timeout(), in_place.poll_timeout());
    for id in ["owner", "failing", "quiet", "thief"] {
        let (a, b) = (split.table().get(id).unwrap(), in_place.table().get(id).unwrap());
        assert_eq!((a.verdict, a.enforce, a.held, a.since), (b.verdict, b.enforce, b.held, b.since), "{id}");
        assert_eq!(
            a.failures.iter().map(|f| (f.key(), f.since)).collect::<Vec<_>>(),
            b.failures.iter().map(|f| (f.key(), f.since)).collect::<Vec<_>>(),
            "{id}"
        );
        assert_eq!(a.admin_override, b.admin_override, "{id}");
        assert_eq!(a.conflicts.len(), b.conflicts.len(), "{id}");
        assert_eq!(a.groups, b.groups, "{id}");
    }
    let mac = Mac::parse("aa:bb:cc:00:00:01").unwrap();
    assert_eq!(split.table().by_mac(mac).unwrap().id.as_ref(), "owner");
    assert_eq!(split.table().get("thief").unwrap().verdict, Verdict::Noncompliant, "its refused claim fails it");
    assert!(split.table().get("failing").unwrap().admin_override.is_some());
    assert_eq!(split.table().get("failing").unwrap().verdict, Verdict::Noncompliant);
    assert!(split.table().get("quiet").unwrap().held, "silent only while warden was down");
}

/// A `Device` in its `Arc` (two counters, 16 bytes) fits mimalloc's
/// 384-byte size class; past it, each device takes the 448-byte class,
/// 64 MB more at 1,000,000 devices and a slower restart (more pages to
/// fault in). A field added here needs a field made smaller.
#[test]
fn a_device_fits_its_allocator_size_class() {
    assert!(std::mem::size_of::<Device>() + 16 <= 384, "{} bytes", std::mem::size_of::<Device>());
}
