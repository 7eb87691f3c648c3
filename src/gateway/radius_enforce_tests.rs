//! The reconciliation core in simulated time (see `gateway::radius_enforce`).

use super::*;
use crate::compliance::Engine;
use crate::policy::{Policy, PolicySet};
use crate::radius::server::DecisionId;
use crate::radius::{AcctStatus, Builder, Code, Packet};
use crate::telemetry::Report;

const SECRET: &[u8] = b"a-long-shared-secret";

/// The reconciliation core in simulated time: an engine writing the
/// table, an enforcer with a session per device, and a NAS that
/// answers (or not) every CoA the enforcer sends.
struct Sim {
    engine: Engine,
    enforce: Enforcer,
    now: Instant,
    wall: i64,
    seq: u64,
    _dir: tempfile::TempDir,
}

fn mac(i: usize) -> String {
    format!("aa:bb:cc:{:02x}:{:02x}:{:02x}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

impl Sim {
    fn new(devices: usize, coa_mode: CoaMode) -> Self {
        let policy = "name = \"enc\"\nseverity = \"critical\"\n[[rules]]\nid = \"enc\"\ncheck = { attr = \"encrypted\", eq = true }\n";
        let set = PolicySet {
            policies: vec![Arc::new(Policy::parse(std::path::Path::new("t.toml"), policy).unwrap())],
            ..Default::default()
        };
        let table = Table::default();
        let engine = Engine::new(table.clone(), set, Duration::from_secs(86_400));
        let dir = tempfile::tempdir().unwrap();
        let nas = HashMap::from([(
            Arc::from("lab"),
            NasConfig { secret: Secret::new(SECRET.to_vec()), coa_port: 3799, coa_mode },
        )]);
        let policy = AccessPolicy::new(
            "100".into(),
            "999".into(),
            crate::config::Noncompliant::Quarantine,
            crate::config::UnknownDevice::Quarantine,
        );
        let enforce = Enforcer::new(
            Sessions::default(),
            Journal::open(dir.path()).unwrap(),
            nas,
            Arc::new(policy),
            table,
            crate::gateway::current::Current::fixed(Arc::new(Users::default())),
            Arc::new(Metrics::new()),
            1.0,
            Arc::new(crate::gateway::admissions::Admissions::new(1)),
        );
        let mut sim = Sim { engine, enforce, now: Instant::now(), wall: 1_795_000_000_000, seq: 0, _dir: dir };
        sim.report_all(devices, true);
        for i in 0..devices {
            sim.enforce.accounting(&sim.start(i), sim.now).unwrap();
        }
        sim.finish_sweep();
        assert_eq!(sim.answer(true), 0, "every session starts in step");
        sim
    }

    fn start(&self, i: usize) -> AccountingRequest {
        AccountingRequest {
            id: DecisionId::none(),
            client: "lab".into(),
            nas: "127.0.0.2".parse().unwrap(),
            status: AcctStatus::Start,
            session_id: Some(format!("s{i}")),
            user_name: None,
            calling_station_id: Some(mac(i)),
            nas_ip: None,
            nas_port: None,
            nas_port_id: None,
            framed_ip: None,
        }
    }

    /// Every device reports; the changes are *not* handed to the enforcer
    /// (as if the channel had lagged).
    fn report_all(&mut self, devices: usize, encrypted: bool) {
        self.seq += 1;
        for i in 0..devices {
            let mac: Arc<str> = mac(i).into();
            let r = Report {
                seq: self.seq,
                ts: self.wall,
                encrypted: Some(encrypted),
                mac_addresses: Some(Arc::from(vec![mac])),
                ..Report::default()
            };
            self.engine.handle_telemetry(&format!("d{i}"), r, self.now, self.wall).unwrap();
        }
        while self.engine.poll_event().is_some() {}
    }

    fn finish_sweep(&mut self) {
        self.enforce.sweep_soon();
        while self.enforce.sweep_urgent() {
            self.enforce.sweep_slice(URGENT_SLICE, self.now);
        }
    }

    /// The NAS answers every request sent so far (ACK or NAK); the count.
    fn answer(&mut self, ack: bool) -> usize {
        let mut n = 0;
        while let Some((to, sent)) = self.enforce.coa.poll_transmit() {
            let p = Packet::decode(&sent).unwrap();
            let code = match (p.code(), ack) {
                (Code::CoaRequest, true) => Code::CoaAck,
                (Code::CoaRequest, false) => Code::CoaNak,
                (_, true) => Code::DisconnectAck,
                (_, false) => Code::DisconnectNak,
            };
            let reply = Builder::new(code, p.identifier(), true).finish_response(SECRET, &p.authenticator());
            self.enforce.coa.handle_datagram(to, &reply, self.now);
            n += 1;
        }
        self.enforce.drain_coa_events(self.now);
        n
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.wall += i64::try_from(d.as_millis()).unwrap();
        self.enforce.handle_timeout(self.now);
    }

    /// Sessions with a request in flight.
    fn in_flight(&self) -> usize {
        let s = &self.enforce.sessions;
        s.keys_after(None, usize::MAX).iter().filter(|k| s.get(k).is_some_and(|x| x.target.is_some())).count()
    }

    /// Sessions whose applied access is not what their verdict implies.
    fn out_of_step(&self) -> usize {
        let mut n = 0;
        let mut cursor = None;
        loop {
            let keys = self.enforce.sessions.keys_after(cursor.as_ref(), 1000);
            let Some(last) = keys.last().cloned() else { return n };
            for k in &keys {
                let s = self.enforce.sessions.get(k).unwrap();
                let device = session_device(s.mac, None, &self.enforce.table, self.enforce.users.get());
                n += usize::from(self.enforce.policy.running(device.as_deref(), s.applied) != s.applied);
            }
            cursor = Some(last);
        }
    }
}

#[test]
fn lost_changes_are_found_by_the_sweep_and_applied() {
    let mut sim = Sim::new(3000, CoaMode::Coa);
    sim.report_all(3000, false);
    assert_eq!(sim.out_of_step(), 3000, "no event reached the enforcer");
    sim.finish_sweep();
    // The CoA client paces them (burst 1000, then 500/s): the NAS answers
    // what arrives, simulated time lets the rest go.
    let mut answered = 0;
    for _ in 0..20 {
        answered += sim.answer(true);
        sim.advance(Duration::from_millis(500));
    }
    assert_eq!(answered, 3000);
    assert_eq!(sim.out_of_step(), 0);
    assert_eq!(sim.enforce.sessions.counts(), [0, 3000, 0]);
    assert_eq!(sim.enforce.metrics.reconcile_corrections[0].get(), 3000);
}

#[test]
fn naks_and_timeouts_are_retried_until_applied() {
    let mut sim = Sim::new(10, CoaMode::Coa);
    sim.report_all(10, false);
    sim.finish_sweep();
    assert_eq!(sim.answer(false), 10, "all NAKed");
    assert_eq!(sim.out_of_step(), 10);
    // Due again after 1 s; this time the NAS does not answer at all:
    // the CoA client's four tries take 7.5 s, then a 2 s backoff.
    sim.advance(Duration::from_secs(1));
    let sent = std::iter::from_fn(|| sim.enforce.coa.poll_transmit()).count();
    assert_eq!(sent, 10, "retried");
    for _ in 0..19 {
        sim.advance(Duration::from_millis(500));
        while sim.enforce.coa.poll_transmit().is_some() {}
        sim.enforce.drain_coa_events(sim.now);
    }
    assert_eq!(sim.out_of_step(), 10, "timed out: still due");
    sim.advance(Duration::from_secs(3));
    assert_eq!(sim.answer(true), 10, "and retried again, acknowledged this time");
    assert_eq!(sim.out_of_step(), 0);
}

#[test]
fn a_restart_keeps_the_applied_access_and_reconciles_it() {
    let mut sim = Sim::new(20, CoaMode::Disconnect);
    sim.report_all(20, false);
    sim.finish_sweep();
    // Half the NAS's answers get lost in the crash: the rest ended their sessions.
    let mut sent: Vec<(std::net::SocketAddr, Vec<u8>)> =
        std::iter::from_fn(|| sim.enforce.coa.poll_transmit()).collect();
    assert_eq!(sent.len(), 20);
    sent.truncate(10);
    for (to, req) in sent {
        let p = Packet::decode(&req).unwrap();
        let reply = Builder::new(Code::DisconnectAck, p.identifier(), true).finish_response(SECRET, &p.authenticator());
        sim.enforce.coa.handle_datagram(to, &reply, sim.now);
    }
    sim.enforce.drain_coa_events(sim.now);
    assert_eq!(sim.enforce.sessions.len(), 10, "a Disconnect-ACK ends the session");
    // Restart: the journal gives back the ten sessions, still `full`.
    let mut sessions = Sessions::default();
    let replayed = crate::radius::journal::replay(sim._dir.path(), &mut sessions);
    assert_eq!((sessions.len(), replayed.skipped), (10, 0));
    assert_eq!(sessions.counts(), [10, 0, 0]);
    sim.enforce.sessions = sessions;
    sim.enforce.coa = CoaClient::default();
    assert_eq!(sim.out_of_step(), 10);
    sim.finish_sweep();
    assert_eq!(sim.answer(true), 10, "the sessions the crash left are reconciled");
    assert!(sim.enforce.sessions.is_empty());
}

#[test]
fn the_background_sweep_is_bounded_per_slice() {
    let mut sim = Sim::new(5000, CoaMode::Coa);
    sim.report_all(5000, false);
    sim.enforce.sweep_slice(BACKGROUND_SLICE, sim.now);
    assert_eq!(sim.in_flight(), BACKGROUND_SLICE, "one slice reconciles at most {BACKGROUND_SLICE} sessions");
    // The whole table is covered in ceil(5000 / 2000) slices.
    sim.enforce.sweep_slice(BACKGROUND_SLICE, sim.now);
    sim.enforce.sweep_slice(BACKGROUND_SLICE, sim.now);
    assert_eq!(sim.in_flight(), 5000);
}

#[test]
fn a_start_pass_that_would_restrict_most_sessions_is_held_until_confirmed() {
    let mut sim = Sim::new(10, CoaMode::Coa);
    sim.report_all(10, false);
    // As if restarted with these verdicts: the first pass counts first.
    sim.enforce.max_restrict_fraction = 0.1;
    sim.enforce.sweep = Sweep { urgent: true, counting: true, ..Sweep::default() };
    sim.finish_sweep();
    assert_eq!(sim.answer(true), 0, "nothing restricted");
    let held = sim.enforce.held().cloned().expect("held");
    assert_eq!((held.cause, held.restricting, held.live), (HeldCause::Reconciliation, 10, 10));
    // The background sweep restricts nothing while it is held...
    sim.enforce.sweep_slice(BACKGROUND_SLICE, sim.now);
    assert_eq!(sim.answer(true), 0);
    // ...and a verdict event still does, for its own device.
    sim.enforce.handle_change(&change("d3", &sim), sim.now);
    assert_eq!(sim.answer(true), 1);
    assert!(sim.enforce.confirm(held.id + 1).is_none());
    assert_eq!(sim.enforce.confirm(held.id).map(|h| h.id), Some(held.id));
    sim.finish_sweep();
    let mut answered = 0;
    for _ in 0..4 {
        answered += sim.answer(true);
        sim.advance(Duration::from_millis(500));
    }
    assert_eq!(answered, 9);
    assert_eq!(sim.out_of_step(), 0);
}

#[test]
fn a_start_pass_restricting_few_sessions_goes_ahead() {
    let mut sim = Sim::new(100, CoaMode::Coa);
    sim.report_all(5, false);
    sim.enforce.max_restrict_fraction = 0.1;
    sim.enforce.sweep = Sweep { urgent: true, counting: true, ..Sweep::default() };
    sim.finish_sweep();
    assert!(sim.enforce.held().is_none());
    assert_eq!(sim.answer(true), 5);
    assert_eq!(sim.out_of_step(), 0);
}

fn change(device: &str, sim: &Sim) -> Change {
    Change {
        device: device.into(),
        old: crate::compliance::Verdict::Compliant,
        new: crate::compliance::Verdict::Noncompliant,
        failures: Vec::new(),
        enforce: Default::default(),
        cause: crate::compliance::Cause::Telemetry,
        at: sim.now,
        wall: sim.wall,
        groups: 0,
        group_set: Arc::default(),
    }
}

#[test]
fn the_accounting_journal_is_rewritten_from_the_live_sessions() {
    let mut sim = Sim::new(10, CoaMode::Coa);
    sim.enforce.rewrite_after = 50;
    let dir = sim._dir.path().to_path_buf();
    // Interim updates pile up; two sessions end.
    for round in 0..10 {
        for i in 0..10 {
            let mut a = sim.start(i);
            a.status = if round == 9 && i < 2 { AcctStatus::Stop } else { AcctStatus::InterimUpdate };
            sim.enforce.accounting(&a, sim.now).unwrap();
        }
    }
    assert!(sim.enforce.rewrite_due(), "110 records for 8 sessions");
    assert_eq!(sim.enforce.rewrite_journal().unwrap(), 8);
    assert!(!sim.enforce.rewrite_due());
    let text = std::fs::read_to_string(sim.enforce.journal.path()).unwrap();
    assert_eq!(text.lines().count(), 8, "{text}");
    // Appending goes on in the new file, and a restart replays it all.
    sim.enforce.accounting(&sim.start(0), sim.now).unwrap();
    let mut replayed = Sessions::default();
    crate::radius::journal::replay(&dir, &mut replayed);
    let view = |s: &Sessions| s.after(None).map(|(k, s)| (k.clone(), s.mac, s.applied)).collect::<Vec<_>>();
    assert_eq!(view(&replayed), view(&sim.enforce.sessions));
    assert_eq!(replayed.len(), 9);
}
