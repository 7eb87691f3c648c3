//! CoA / Disconnect end to end: a session known from accounting (sent by
//! the real radclient), a verdict flipped over MQTT, and the request received
//! by a test NAS (tests/nas.py, an independent implementation that checks
//! warden's authenticators with the shared secret).

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

mod common;

use common::nas::{Ports, TestNas};
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SECRET: &str = "a-long-shared-secret";

fn start_warden(dir: &std::path::Path, nas_port: u16, coa_mode: &str) -> (Warden, u16) {
    let (w, ports) = start_warden_with(dir, nas_port, coa_mode, "broker = \"embedded\"", free_port());
    (w, ports.acct)
}

/// warden with RADIUS for a test NAS on `nas_port`; `broker` is the
/// `[mqtt]` broker line, `mqtt` its port.
fn start_warden_with(dir: &std::path::Path, nas_port: u16, coa_mode: &str, broker: &str, mqtt: u16) -> (Warden, Ports) {
    let (config, ports) = common::nas::radius_config(broker, mqtt, "", SECRET, nas_port, coa_mode);
    let mut w = Warden::launch(dir, &config, mqtt, "");
    w.wait_ready();
    (w, ports)
}

fn accounting_start(acct: u16) {
    common::nas::accounting(
        acct,
        SECRET,
        "Acct-Status-Type = Start, Acct-Session-Id = \"sess-7\", Calling-Station-Id = \"AA-BB-CC-00-00-01\", NAS-IP-Address = 127.0.0.1, NAS-Port = 7",
    );
}

/// The config warden was launched with in `dir`, without its `[http]`
/// section (a relaunch gets a new HTTP port): same state, same RADIUS ports.
fn config_without_http(dir: &std::path::Path) -> String {
    let config = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("warden-"))
        })
        .unwrap();
    std::fs::read_to_string(&config).unwrap().split("\n[http]").next().unwrap().to_string()
}

/// The RADIUS ports from warden's config file.
fn ports_of(w: &Warden) -> (u16, u16) {
    let config = std::fs::read_dir(&w.dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == format!("warden-{}.toml", w.http)))
        .unwrap();
    let text = std::fs::read_to_string(config).unwrap();
    let port = |key: &str| -> u16 {
        let line = text.lines().find(|l| l.starts_with(key)).unwrap();
        line.rsplit(':').next().unwrap().trim_end_matches('"').parse().unwrap()
    };
    (port("auth_listen"), port("acct_listen"))
}

fn assert_authentic(req: &Value, code: &str) {
    assert_eq!(req["code"], code, "{req}");
    assert_eq!(req["request_authenticator_ok"], true, "{req}");
    assert_eq!(req["message_authenticator_ok"], true, "{req}");
    assert_eq!(req["acct_session_id"], "sess-7", "{req}");
    assert_eq!(req["calling_station_id"], "AA-BB-CC-00-00-01", "{req}");
    assert_eq!(req["event_timestamp"], true, "{req}");
}

/// warden with a compliant pos-0001 whose session (from an Accounting
/// Start) lives on a test NAS listening for CoA.
fn compliant_session(coa_mode: &str, nak_coa: bool) -> (Warden, TestNas) {
    let dir = Warden::workdir();
    let nas_port = free_udp_port();
    let (w, acct) = start_warden(&dir, nas_port, coa_mode);
    publish(w.mqtt, "devices/pos-0001/telemetry", &pos_report(1, json!({})));
    w.wait_verdict("pos-0001", "compliant");
    accounting_start(acct);
    (w, TestNas::start(nas_port, SECRET, nak_coa))
}

#[test]
fn disconnect_on_drift_and_on_recovery() {
    let (w, nas) = compliant_session("disconnect", false);

    let published = Instant::now();
    publish(w.mqtt, "devices/pos-0001/telemetry", &pos_report(2, json!({"rooted": true})));
    let req = nas.next(Duration::from_secs(5)).expect("Disconnect-Request after the violating report");
    let within = published.elapsed();
    assert_authentic(&req, "Disconnect-Request");
    // The bound includes starting mosquitto_pub; warden's own share is the metric below.
    assert!(within < Duration::from_secs(2), "took {within:?}");
    w.wait_metric("warden_coa_requests_total{kind=\"disconnect\",result=\"ack\"}", 1.0);
    let sum = w.metric("warden_enforcement_seconds_sum{plane=\"radius\"}");
    assert_eq!(w.metric("warden_enforcement_seconds_count{plane=\"radius\"}"), 1.0);
    assert!(sum < 0.05, "telemetry arrival → Disconnect sent took {sum} s");

    // The Disconnect ended that session; the device authenticates again
    // into quarantine, and its NAS starts a new session for it.
    assert_eq!(w.metric("warden_radius_sessions"), 0.0, "a Disconnect-ACK ends the session's record");
    let (auth, acct) = ports_of(&w);
    assert_eq!(common::nas::vlan(&common::nas::mab(auth, SECRET, "AA-BB-CC-00-00-01")).as_deref(), Some("999"));
    accounting_start(acct);
    w.wait_metric("warden_radius_session_access{access=\"quarantine\"}", 1.0);

    // Compliant again: the session is disconnected so it re-authenticates into the normal VLAN.
    publish(w.mqtt, "devices/pos-0001/telemetry", &pos_report(3, json!({})));
    let req = nas.next(Duration::from_secs(5)).expect("Disconnect-Request after recovery");
    assert_authentic(&req, "Disconnect-Request");
    w.wait_metric("warden_coa_requests_total{kind=\"disconnect\",result=\"ack\"}", 2.0);
    // A report that changes nothing sends nothing.
    publish(w.mqtt, "devices/pos-0001/telemetry", &pos_report(4, json!({})));
    assert!(nas.next(Duration::from_millis(700)).is_none(), "no request without a change of access");
}

#[test]
fn coa_then_disconnect_falls_back_when_the_nas_refuses() {
    let (w, nas) = compliant_session("coa_then_disconnect", true);
    publish(w.mqtt, "devices/pos-0001/telemetry", &pos_report(2, json!({"encrypted": false})));
    let coa = nas.next(Duration::from_secs(5)).expect("CoA-Request");
    assert_authentic(&coa, "CoA-Request");
    assert_eq!(coa["vlan"], "999", "the CoA moves the session to the quarantine VLAN");
    let disconnect = nas.next(Duration::from_secs(5)).expect("Disconnect-Request after the NAK");
    assert_authentic(&disconnect, "Disconnect-Request");
    w.wait_metric("warden_coa_requests_total{kind=\"coa\",result=\"nak\"}", 1.0);
    w.wait_metric("warden_coa_requests_total{kind=\"disconnect\",result=\"ack\"}", 1.0);

    // The audit trail says what was enforced where: the drift, the NAS's
    // NAK of the CoA (with its cause), then its ACK of the Disconnect.
    let trail = wait_for("the enforcement outcomes in the audit trail", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(w.dir.join("state/audit/audit-1.jsonl")).ok()?;
        let entries: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let applied = entries.iter().filter(|e| e["kind"] == "warden.enforcement.applied").count();
        (applied >= 2).then_some(entries)
    });
    let at = |kind: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        trail
            .iter()
            .position(|e| e["kind"] == kind && f(&e["data"]))
            .unwrap_or_else(|| panic!("no {kind} in {trail:?}"))
    };
    let drift = at("warden.verdict.changed", &|d| d["to"] == "noncompliant");
    let nak = at("warden.enforcement.applied", &|d| d["action"] == "coa" && d["result"] == "nak");
    let ack = at("warden.enforcement.applied", &|d| d["action"] == "disconnect" && d["result"] == "ack");
    assert!(drift < nak && nak < ack, "{trail:?}");
    assert_eq!(trail[nak]["device"], "pos-0001");
    assert_eq!(trail[nak]["data"]["plane"], "radius");
    assert!(trail[nak]["data"]["cause"].is_string(), "{}", trail[nak]);
}

#[test]
fn sessions_survive_a_restart() {
    let dir = Warden::workdir();
    let nas_port = free_udp_port();
    let (mut w, acct) = start_warden(&dir, nas_port, "disconnect");
    publish(w.mqtt, "devices/pos-0001/telemetry", &pos_report(1, json!({})));
    w.wait_verdict("pos-0001", "compliant");
    accounting_start(acct);
    w.stop();
    // Same directory and ports: the journal brings the session back.
    let mut w2 = Warden::launch(&dir, &config_without_http(&dir), w.mqtt, "");
    w2.wait_ready();
    assert_eq!(w2.metric("warden_radius_sessions"), 1.0);
    let nas = TestNas::start(nas_port, SECRET, false);
    publish(w2.mqtt, "devices/pos-0001/telemetry", &pos_report(2, json!({"rooted": true})));
    let req = nas.next(Duration::from_secs(5)).expect("Disconnect-Request for the replayed session");
    assert_authentic(&req, "Disconnect-Request");
}

/// A BYOD laptop whose MDM agent is too old fails an `admission` rule.
fn byod_report(seq: u64, agent: &str) -> String {
    json!({
        "seq": seq, "ts": ts(0), "os": "android", "groups": ["byod"], "agent_version": agent,
        "mac_addresses": ["aa:bb:cc:00:00:05"],
    })
    .to_string()
}

fn byod_session_start(acct: u16, sid: &str) {
    common::nas::accounting(
        acct,
        SECRET,
        &format!(
            "Acct-Status-Type = Start, Acct-Session-Id = \"{sid}\", Calling-Station-Id = \"AA-BB-CC-00-00-05\", NAS-IP-Address = 127.0.0.1, NAS-Port = 9"
        ),
    );
}

#[test]
fn an_admission_quarantined_session_is_restored_when_its_device_recovers() {
    let dir = Warden::workdir();
    let nas_port = free_udp_port();
    let (w, ports) = start_warden_with(&dir, nas_port, "coa", "broker = \"embedded\"", free_port());
    let nas = TestNas::start(nas_port, SECRET, false);
    publish(w.mqtt, "devices/byod-1/telemetry", &byod_report(1, "3.0.0"));
    w.wait_verdict("byod-1", "noncompliant");

    // Admitted into quarantine by the `admission` rule, and recorded so.
    let out = common::nas::mab(ports.auth, SECRET, "AA-BB-CC-00-00-05");
    assert_eq!(common::nas::vlan(&out).as_deref(), Some("999"), "{out}");
    byod_session_start(ports.acct, "byod-sess");
    w.wait_metric("warden_radius_session_access{access=\"quarantine\"}", 1.0);
    assert!(nas.next(Duration::from_millis(500)).is_none(), "an admission failure does not cut, nor lift");

    // The agent is updated: the session is moved back to the normal VLAN.
    publish(w.mqtt, "devices/byod-1/telemetry", &byod_report(2, "3.2.0"));
    let req = nas.next(Duration::from_secs(5)).expect("a CoA-Request to the compliant VLAN");
    assert_eq!(req["code"], "CoA-Request", "{req}");
    assert_eq!(req["vlan"], "100", "{req}");
    assert_eq!(req["acct_session_id"], "byod-sess", "{req}");
    w.wait_metric("warden_radius_session_access{access=\"full\"}", 1.0);
    assert_eq!(w.metric("warden_radius_session_access{access=\"quarantine\"}"), 0.0);
}

#[test]
fn a_session_quarantined_before_kill_9_is_restored_after_restart() {
    let dir = Warden::workdir();
    let mut broker = Mosquitto::start(&dir);
    let nas_port = free_udp_port();
    let external = format!("broker = \"mqtt://127.0.0.1:{}\"", broker.port);
    let (mut w, ports) = start_warden_with(&dir, nas_port, "coa", &external, broker.port);
    let nas = TestNas::start(nas_port, SECRET, false);
    publish(broker.port, "devices/pos-0001/telemetry", &pos_report(1, json!({})));
    w.wait_verdict("pos-0001", "compliant");
    accounting_start(ports.acct);
    w.wait_metric("warden_radius_session_access{access=\"full\"}", 1.0);
    publish(broker.port, "devices/pos-0001/telemetry", &pos_report(2, json!({"rooted": true})));
    let req = nas.next(Duration::from_secs(5)).expect("CoA to quarantine");
    assert_eq!(req["vlan"], "999", "{req}");
    w.wait_metric("warden_radius_session_access{access=\"quarantine\"}", 1.0);

    // Killed; the device recovers while warden is down (the broker keeps
    // warden's persistent session and queues the report).
    w.kill();
    publish(broker.port, "devices/pos-0001/telemetry", &pos_report(3, json!({})));
    let config = std::fs::read_to_string(dir.join(format!("warden-{}.toml", w.http))).unwrap();
    let body = config.split("\n[http]").next().unwrap().to_string();
    let mut w2 = Warden::launch(&dir, &body, broker.port, "");
    w2.wait_ready();
    let req = nas.next(Duration::from_secs(10)).expect("a CoA back to the compliant VLAN after the restart");
    assert_eq!(req["code"], "CoA-Request", "{req}");
    assert_eq!(req["vlan"], "100", "{req}");
    w2.wait_metric("warden_radius_session_access{access=\"full\"}", 1.0);
    broker.kill();
}

#[test]
fn a_restart_that_would_restrict_every_session_waits_for_confirmation() {
    let dir = Warden::workdir();
    let nas_port = free_udp_port();
    let (mut w, ports) = start_warden_with(&dir, nas_port, "coa", "broker = \"embedded\"", free_port());
    for i in 1..=3 {
        let mac = format!("aa:bb:cc:00:01:0{i}");
        let r = pos_report(1, json!({"mac_addresses": [mac], "cert_identity": format!("pos-100{i}")}));
        publish(w.mqtt, &format!("devices/pos-100{i}/telemetry"), &r);
        w.wait_verdict(&format!("pos-100{i}"), "compliant");
        common::nas::accounting(
            ports.acct,
            SECRET,
            &format!(
                "Acct-Status-Type = Start, Acct-Session-Id = \"s-{i}\", Calling-Station-Id = \"{mac}\", NAS-IP-Address = 127.0.0.1"
            ),
        );
    }
    w.wait_metric("warden_radius_session_access{access=\"full\"}", 3.0);
    w.stop();

    // The compliance state is lost: every device is unknown, and unknown
    // devices are quarantined. Reconciling at start would restrict all three.
    std::fs::remove_file(dir.join("state/compliance.snap")).unwrap();
    std::fs::write(dir.join("api.token"), "s3cret-token-0123456789\n").unwrap();
    let config = std::fs::read_to_string(dir.join(format!("warden-{}.toml", w.http))).unwrap();
    let body = config.split("\n[http]").next().unwrap().to_string();
    let w2 = Warden::launch(&dir, &body, w.mqtt, "token_file = \"api.token\"\n");
    let nas = TestNas::start(nas_port, SECRET, false);
    wait_for("warden ready", Duration::from_secs(20), || w2.get("/readyz").filter(|(c, _)| *c == 200));
    w2.wait_metric("warden_changes_pending", 1.0);
    assert!(nas.next(Duration::from_millis(700)).is_none(), "nothing restricted without confirmation");
    assert_eq!(w2.metric("warden_radius_session_access{access=\"full\"}"), 3.0);
    let auth = [("Authorization", "Bearer s3cret-token-0123456789")];
    let (code, text) = http_get_with(w2.http, "/api/v1/changes", &auth).unwrap();
    assert_eq!(code, 200, "{text}");
    let changes: Value = serde_json::from_str(&text).unwrap();
    let held = &changes["changes"][0];
    assert_eq!((held["cause"].as_str(), held["restricting"].as_u64()), (Some("reconciliation"), Some(3)), "{text}");
    let id = held["id"].as_u64().unwrap().to_string();

    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["changes", "confirm", &id, "--config"])
        .arg(dir.join(format!("warden-{}.toml", w2.http)))
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    for _ in 0..3 {
        let req = nas.next(Duration::from_secs(5)).expect("the confirmed restrictions");
        assert_eq!((req["code"].as_str(), req["vlan"].as_str()), (Some("CoA-Request"), Some("999")), "{req}");
    }
    w2.wait_metric("warden_radius_session_access{access=\"quarantine\"}", 3.0);
    assert_eq!(w2.metric("warden_changes_pending"), 0.0);
}

/// Accounting-Starts from a raw socket as fast as they are answered, until
/// `stop`; returns the session ids warden acknowledged.
fn acknowledged_starts(acct: u16, prefix: &str, stop: &std::sync::atomic::AtomicBool) -> Vec<String> {
    use warden::radius::{AttrType, Builder, Code, Packet};
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut acked = Vec::new();
    let mut buf = [0u8; 4096];
    for n in 0u32..100_000 {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let sid = format!("{prefix}-{n}");
        let mut b = Builder::new(Code::AccountingRequest, (n % 256) as u8, true);
        b.attr_u32(AttrType::AcctStatusType, 1).unwrap();
        b.attr(AttrType::AcctSessionId, sid.as_bytes()).unwrap();
        let mac = format!("02:00:00:{:02x}:{:02x}:{:02x}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
        b.attr(AttrType::CallingStationId, mac.as_bytes()).unwrap();
        b.attr(AttrType::NasIpAddress, &[127, 0, 0, 1]).unwrap();
        let pkt = b.finish_request(SECRET.as_bytes());
        if sock.send_to(&pkt, ("127.0.0.1", acct)).is_err() {
            break;
        }
        let answered = sock.recv_from(&mut buf).ok().and_then(|(len, _)| {
            let p = Packet::decode(&buf[..len]).ok()?;
            let ra: [u8; 16] = pkt[4..20].try_into().ok()?;
            (p.code() == Code::AccountingResponse && p.response_authenticator_valid(SECRET.as_bytes(), &ra))
                .then_some(())
        });
        match answered {
            Some(()) => acked.push(sid),
            None => break, // killed: nothing after this was acknowledged
        }
    }
    acked
}

#[test]
fn every_acknowledged_accounting_record_survives_twenty_kill_9s() {
    let dir = Warden::workdir();
    let (mut w, acct) = start_warden(&dir, free_udp_port(), "disconnect");
    let config = config_without_http(&dir);
    let mut rng = fastrand::Rng::with_seed(u64::from(std::process::id()));
    let mut acked = Vec::new();
    for round in 0..20 {
        let stop = std::sync::atomic::AtomicBool::new(false);
        // Killed mid-burst, at a moment that differs from round to round.
        let got = std::thread::scope(|s| {
            let sender = s.spawn(|| acknowledged_starts(acct, &format!("r{round}"), &stop));
            std::thread::sleep(Duration::from_millis(rng.u64(100..600)));
            w.kill();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            sender.join().unwrap()
        });
        acked.extend(got);
        // Each start replays and compacts the journal first: a kill right
        // after that must not lose what was acknowledged before it either.
        w = Warden::launch(&dir, &config, w.mqtt, "");
        w.wait_ready();
    }
    assert!(acked.len() > 500, "only {} records acknowledged", acked.len());
    let journal = std::fs::read(dir.join("state/accounting.jsonl")).unwrap();
    let text = String::from_utf8_lossy(&journal);
    let missing: Vec<&String> = acked.iter().filter(|sid| !text.contains(&format!("\"{sid}\""))).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged sessions not in the journal, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // Every acknowledged session is back (a few more may be: stored, then
    // killed before the answer left), and the compacted journal holds one
    // line per live session.
    let sessions = w.metric("warden_radius_sessions");
    assert!(sessions >= acked.len() as f64, "{sessions} sessions replayed, {} acknowledged", acked.len());
    assert_eq!(text.lines().count() as f64, sessions, "one line per live session");
    // A record torn by the last kill is skipped, and the next one is whole.
    accounting_start(acct);
    w.wait_metric("warden_radius_sessions", sessions + 1.0);
}
