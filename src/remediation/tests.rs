//! The remediation core in simulated time.

use super::*;
use crate::compliance::{Cause, Enforce, Verdict};
use std::path::Path;

const KIOSK: &str = r#"
name = "kiosk"
severity = "critical"

[[plans]]
name = "kiosk-offline"
retry_every = "30s"
expires = "4m"
steps = [
  { after = "0s",  action = "fix" },
  { after = "5m",  action = "toggle_airplane_mode", args = { seconds = 10 } },
  { after = "10m", action = "reboot" },
  { after = "30m", action = "escalate" },
]

[[rules]]
id = "store-wifi"
check = { attr = "wifi_ssid", one_of = ["ACME-STORE"] }
remediation = "connect_store_wifi"
plan = "kiosk-offline"

[[rules]]
id = "disk-encrypted"
check = { attr = "encrypted", eq = true }
remediation = "enable_encryption"

[[rules]]
id = "not-rooted"
check = { attr = "rooted", eq = false }
"#;

const T0: UnixMillis = 1_764_000_000_000;

struct Sim {
    r: Remediation,
    start: Instant,
    policy: Arc<Policy>,
    now: Duration,
}

impl Sim {
    fn new(text: &str) -> Self {
        let policy = Arc::new(Policy::parse(Path::new("kiosk.toml"), text).unwrap());
        Self { r: Remediation::new(0xabcd), start: Instant::now(), policy, now: Duration::ZERO }
    }

    fn at(&self) -> (Instant, UnixMillis) {
        (self.start + self.now, T0 + i64::try_from(self.now.as_millis()).unwrap())
    }

    fn failure(&self, rule: &str, since: Duration) -> Failure {
        let i = self.policy.rules.iter().position(|r| r.id == rule).unwrap();
        Failure {
            policy: Arc::clone(&self.policy),
            rule: u16::try_from(i).unwrap(),
            observed: "x".into(),
            since: T0 + i64::try_from(since.as_millis()).unwrap(),
        }
    }

    /// The device now fails `rules` (each failing since `since`).
    fn change(&mut self, device: &str, rules: &[&str], since: Duration, cause: Cause) {
        let failures: Vec<Failure> = rules.iter().map(|r| self.failure(r, since)).collect();
        let (now, wall) = self.at();
        let change = Change {
            device: device.into(),
            old: Verdict::Compliant,
            new: if failures.is_empty() { Verdict::Compliant } else { Verdict::Noncompliant },
            failures,
            enforce: Enforce::default(),
            cause,
            at: now,
            wall,
            groups: 0,
            group_set: Arc::default(),
        };
        self.r.handle_change(&change, now, wall);
    }

    /// Advances simulated time to `to`, firing every deadline on the way
    /// (each at its own moment, as the shell's timer would).
    fn run_to(&mut self, to: Duration) {
        while let Some(at) = self.r.poll_timeout() {
            let due = at.duration_since(self.start);
            if due > to {
                break;
            }
            self.now = self.now.max(due);
            let (now, wall) = self.at();
            self.r.handle_timeout(now, wall);
        }
        self.now = to;
    }

    fn sent(&mut self) -> Vec<(String, u8)> {
        std::iter::from_fn(|| self.r.poll_transmit()).map(|c| (c.action.to_string(), c.attempt)).collect()
    }

    fn sent_commands(&mut self) -> Vec<Command> {
        std::iter::from_fn(|| self.r.poll_transmit()).collect()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.r.poll_event()).collect()
    }

    fn ack(&mut self, device: &str, id: &str, status: Status) -> Result<(), AckRefusal> {
        let (now, wall) = self.at();
        self.r.handle_ack(device, &Ack { id: id.into(), status, reason: None }, now, wall)
    }

    fn report(&mut self, device: &str) {
        let (now, wall) = self.at();
        self.r.handle_report(device, now, wall);
    }
}

fn min(m: u64) -> Duration {
    Duration::from_secs(60 * m)
}

#[test]
fn a_rule_with_a_remediation_and_no_plan_gets_its_fix_once_and_a_passing_report_ends_it() {
    let mut s = Sim::new(KIOSK);
    s.change("k1", &["disk-encrypted"], Duration::ZERO, Cause::Telemetry);
    let c = s.sent_commands();
    assert_eq!(c.len(), 1);
    assert_eq!((&*c[0].action, &*c[0].policy, &*c[0].rule), ("enable_encryption", "kiosk", "disk-encrypted"));
    assert!(c[0].id.starts_with("0000abcd-"), "{}", c[0].id);
    assert_eq!(c[0].expires - c[0].issued, 15 * 60 * 1000, "the default lifetime");
    s.run_to(Duration::from_secs(20));
    s.ack("k1", &c[0].id, Status::Done).unwrap();
    s.run_to(Duration::from_secs(45));
    s.change("k1", &[], Duration::ZERO, Cause::Telemetry);
    let ev = s.events();
    assert!(
        ev.contains(&Event::Remediated {
            device: "k1".into(),
            key: "kiosk/disk-encrypted".into(),
            took: Duration::from_secs(45),
            escalated: false
        }),
        "{ev:?}"
    );
    assert!(s.r.is_empty(), "nothing left running");
    assert_eq!(s.r.poll_timeout(), None);
    assert!(s.sent().is_empty());
}

#[test]
fn a_kiosk_off_its_wifi_gets_each_step_on_time_then_is_escalated() {
    let mut s = Sim::new(KIOSK);
    s.change("k1", &["store-wifi"], Duration::ZERO, Cause::Telemetry);
    let mut timeline = Vec::new();
    for minute in 0..=31 {
        s.run_to(min(minute));
        for c in s.sent_commands() {
            timeline.push((minute, c.action.to_string()));
            // The device does each, and stays off its Wi-Fi.
            s.ack("k1", &c.id, Status::Done).unwrap();
        }
    }
    assert_eq!(timeline, [(0, "connect_store_wifi".into()), (5, "toggle_airplane_mode".into()), (10, "reboot".into())]);
    let escalations: Vec<_> = s.events().into_iter().filter(|e| matches!(e, Event::Escalated { .. })).collect();
    assert_eq!(escalations, [Event::Escalated { device: "k1".into(), key: "kiosk/store-wifi".into() }]);
    assert!(s.r.plans("k1")[0].escalated);
    // Back on its Wi-Fi: remediated, and it says it was escalated.
    s.change("k1", &[], Duration::ZERO, Cause::Telemetry);
    assert!(s.events().iter().any(|e| matches!(e, Event::Remediated { escalated: true, .. })));
}

#[test]
fn steps_count_from_when_the_violation_began() {
    let mut s = Sim::new(KIOSK);
    s.now = min(6);
    // Failing since minute 2 (a grace period, or a report that came late).
    s.change("k1", &["store-wifi"], min(2), Cause::GraceExpired);
    let c = s.sent_commands();
    assert_eq!(&*c[0].action, "connect_store_wifi", "step 0 due since minute 2");
    s.ack("k1", &c[0].id, Status::Done).unwrap();
    s.run_to(min(7) - Duration::from_secs(1));
    assert!(s.sent().is_empty());
    s.run_to(min(7));
    assert_eq!(s.sent(), [("toggle_airplane_mode".into(), 1)], "due at 2 + 5");
}

#[test]
fn an_unanswered_command_is_sent_again_then_the_device_is_away_until_heard_from() {
    let mut s = Sim::new(KIOSK);
    s.change("k1", &["store-wifi"], Duration::ZERO, Cause::Telemetry);
    s.run_to(min(4));
    // Sent at 0, 30 s, 60 s; unanswered at 90 s.
    assert_eq!(
        s.sent(),
        [("connect_store_wifi".into(), 1), ("connect_store_wifi".into(), 2), ("connect_store_wifi".into(), 3)]
    );
    assert!(s.r.away("k1"));
    assert_eq!(s.r.plans("k1")[0].commands[0].state, State::Unanswered);
    // Away: the 5 and 10 minute steps are not sent.
    s.run_to(min(12));
    assert!(s.sent().is_empty());
    // Heard from at minute 12: the latest step due only.
    s.report("k1");
    assert_eq!(s.sent(), [("reboot".into(), 1)]);
    let states: Vec<State> = s.r.plans("k1")[0].commands.iter().map(|c| c.state).collect();
    assert_eq!(states, [State::Unanswered, State::Skipped, State::Sent]);
    assert!(!s.r.away("k1"));
}

#[test]
fn a_device_away_for_days_comes_back_to_one_command_not_a_storm() {
    let text = KIOSK.replace("{ after = \"30m\", action = \"escalate\" },", "");
    let mut s = Sim::new(&text);
    for d in 0..100 {
        s.change(&format!("k{d}"), &["store-wifi"], Duration::ZERO, Cause::Telemetry);
    }
    s.run_to(min(2));
    assert_eq!(s.sent().len(), 300, "three sends each");
    s.run_to(min(3 * 24 * 60));
    assert!(s.sent().is_empty(), "nothing while away");
    let escalated = s.events().iter().filter(|e| matches!(e, Event::Escalated { .. })).count();
    assert_eq!(escalated, 100, "away when the last step came due: escalated");
    s.report("k7");
    assert_eq!(s.sent(), [("reboot".into(), 1)]);
    s.report("k7");
    assert!(s.sent().is_empty(), "a second report changes nothing");
}

#[test]
fn the_last_unanswered_command_goes_once_more_when_the_device_is_back_and_nothing_newer_is_due() {
    let mut s = Sim::new(KIOSK);
    s.change("k1", &["store-wifi"], Duration::ZERO, Cause::Telemetry);
    s.run_to(min(2));
    s.sent();
    s.report("k1");
    let c = s.sent_commands();
    assert_eq!(c.len(), 1);
    assert_eq!((&*c[0].action, c[0].attempt), ("connect_store_wifi", 1));
    s.ack("k1", &c[0].id, Status::Accepted).unwrap();
    assert_eq!(s.r.plans("k1")[0].commands[0].state, State::Accepted);
}

#[test]
fn an_accepted_command_not_done_in_time_expires() {
    let mut s = Sim::new(KIOSK);
    s.change("k1", &["store-wifi"], Duration::ZERO, Cause::Telemetry);
    let c = s.sent_commands();
    s.ack("k1", &c[0].id, Status::Accepted).unwrap();
    s.run_to(min(4) + Duration::from_secs(1));
    assert_eq!(s.r.plans("k1")[0].commands[0].state, State::Expired);
    assert!(s.events().contains(&Event::Command {
        device: "k1".into(),
        action: "connect_store_wifi".into(),
        key: "kiosk/store-wifi".into(),
        state: State::Expired
    }));
    // A late "done" still counts: the device did act.
    s.ack("k1", &c[0].id, Status::Done).unwrap();
    assert_eq!(s.r.plans("k1")[0].commands[0].state, State::Done);
}

#[test]
fn a_plan_without_escalate_escalates_when_its_last_command_changed_nothing() {
    let mut s = Sim::new(KIOSK);
    s.change("k1", &["disk-encrypted"], Duration::ZERO, Cause::Telemetry);
    let c = s.sent_commands();
    s.run_to(Duration::from_secs(10));
    s.ack("k1", &c[0].id, Status::Failed).unwrap();
    s.run_to(Duration::from_secs(39));
    assert!(!s.r.plans("k1")[0].escalated, "the device has retry_every (60 s) to report");
    s.run_to(Duration::from_secs(71));
    assert!(s.r.plans("k1")[0].escalated);
}

#[test]
fn acknowledgements_for_other_commands_are_refused_and_repeats_change_nothing() {
    let mut s = Sim::new(KIOSK);
    s.change("k1", &["disk-encrypted"], Duration::ZERO, Cause::Telemetry);
    s.change("k2", &["disk-encrypted"], Duration::ZERO, Cause::Telemetry);
    let c = s.sent_commands();
    assert_eq!(s.ack("k2", &c[0].id, Status::Done), Err(AckRefusal::Unknown), "k1's command");
    assert_eq!(s.ack("k1", "12345678-1", Status::Done), Err(AckRefusal::Unknown), "an earlier process's");
    assert_eq!(s.ack("k1", "0000abcd-999", Status::Done), Err(AckRefusal::Unknown));
    assert_eq!(s.ack("nobody", &c[0].id, Status::Done), Err(AckRefusal::Unknown));
    s.events();
    s.ack("k1", &c[0].id, Status::Done).unwrap();
    assert_eq!(s.events().len(), 1);
    s.ack("k1", &c[0].id, Status::Done).unwrap();
    s.ack("k1", &c[0].id, Status::Accepted).unwrap();
    assert!(s.events().is_empty(), "repeats");
    assert_eq!(s.r.plans("k1")[0].commands[0].state, State::Done);
}

#[test]
fn a_rule_that_stops_failing_without_a_report_stops_its_plan_without_counting_a_remediation() {
    let mut s = Sim::new(KIOSK);
    s.change("k1", &["disk-encrypted", "store-wifi"], Duration::ZERO, Cause::Telemetry);
    s.events();
    s.change("k1", &["store-wifi"], Duration::ZERO, Cause::PolicyReload);
    assert_eq!(s.events(), [Event::Stopped { device: "k1".into(), key: "kiosk/disk-encrypted".into() }]);
    assert_eq!(s.r.plans("k1").len(), 1);
}

#[test]
fn rules_without_a_command_and_monitor_policies_run_no_plan() {
    let mut s = Sim::new(KIOSK);
    s.change("k1", &["not-rooted"], Duration::ZERO, Cause::Telemetry);
    assert!(s.r.is_empty());
    let mut m =
        Sim::new(&KIOSK.replace("severity = \"critical\"", "severity = \"critical\"\nenforcement = \"monitor\""));
    m.change("k1", &["store-wifi"], Duration::ZERO, Cause::Telemetry);
    assert!(m.r.is_empty() && m.sent().is_empty());
}

#[test]
fn after_a_restart_steps_already_due_are_not_sent_again_and_later_ones_run_on_time() {
    let mut s = Sim::new(KIOSK);
    s.now = min(7);
    let failures = vec![s.failure("store-wifi", Duration::ZERO)];
    let (now, wall) = s.at();
    s.r.seed(&Arc::from("k1"), &failures, now, wall);
    assert!(s.sent().is_empty(), "steps at 0 and 5 minutes were the previous process's");
    s.run_to(min(10) + Duration::from_secs(1));
    assert_eq!(s.sent(), [("reboot".into(), 1)]);
    // Seeded past every step: escalated without an event for it.
    let mut late = Sim::new(KIOSK);
    late.now = min(45);
    let failures = vec![late.failure("store-wifi", Duration::ZERO)];
    let (now, wall) = late.at();
    late.r.seed(&Arc::from("k1"), &failures, now, wall);
    assert!(late.r.plans("k1")[0].escalated);
    assert!(late.events().is_empty() && late.sent().is_empty());
}

#[test]
fn a_reload_keeps_the_progress_of_a_running_plan() {
    let mut s = Sim::new(KIOSK);
    s.change("k1", &["store-wifi"], Duration::ZERO, Cause::Telemetry);
    for t in [min(0), min(6)] {
        s.run_to(t);
        for c in s.sent_commands() {
            s.ack("k1", &c.id, Status::Done).unwrap();
        }
    }
    s.policy = Arc::new(Policy::parse(Path::new("kiosk.toml"), &KIOSK.replace("\"10m\"", "\"8m\"")).unwrap());
    s.change("k1", &["store-wifi"], Duration::ZERO, Cause::PolicyReload);
    assert!(s.sent().is_empty(), "nothing sent again");
    s.run_to(min(8) + Duration::from_secs(1));
    assert_eq!(s.sent(), [("reboot".into(), 1)], "the new delay");
}
