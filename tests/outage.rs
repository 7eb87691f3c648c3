//! A telemetry outage is not a fleet of silent devices: mosquitto (Debian)
//! stopped for longer than `stale_after` changes no enforcement (no CoA, no
//! verdict change), verdicts are held and say so, warden is subscribed again
//! promptly when the broker returns, and the backlog produced during the
//! outage is applied even though it is older than `stale_after`.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

mod common;

use common::nas::TestNas;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const SECRET: &str = "a-long-shared-secret";

#[test]
fn a_broker_outage_longer_than_stale_after_holds_verdicts_and_the_backlog_is_applied() {
    let dir = Warden::workdir();
    let mut broker = Mosquitto::start(&dir);
    let nas_port = free_udp_port();
    let broker_line = format!("broker = \"mqtt://127.0.0.1:{}\"", broker.port);
    let (config, ports) =
        common::nas::radius_config(&broker_line, broker.port, "stale_after = \"3s\"\n", SECRET, nas_port, "coa");
    let acct = ports.acct;
    let mut w = Warden::launch(&dir, &config, broker.port, "");
    w.wait_ready();
    let nas = TestNas::start(nas_port, SECRET, false);
    publish(broker.port, "devices/pos-0001/telemetry", &pos_report(1, json!({})));
    w.wait_verdict("pos-0001", "compliant");
    common::nas::accounting(
        acct,
        SECRET,
        "Acct-Status-Type = Start, Acct-Session-Id = \"sess-o\", Calling-Station-Id = \"AA-BB-CC-00-00-01\", NAS-IP-Address = 127.0.0.1",
    );
    w.wait_metric("warden_radius_session_access{access=\"full\"}", 1.0);
    assert_eq!(w.metric("warden_telemetry_source_up"), 1.0);

    // The broker goes away for twice stale_after.
    let down = Instant::now();
    broker.kill();
    wait_for("the source to be reported down", Duration::from_secs(5), || {
        (w.metric("warden_telemetry_source_up") == 0.0).then_some(())
    });
    while down.elapsed() < Duration::from_secs(6) {
        assert!(nas.next(Duration::from_millis(200)).is_none(), "silence during an outage sends nothing");
    }
    let d = w.device("pos-0001").unwrap();
    assert_eq!(d["verdict"], "compliant", "held, not expired: {d}");
    assert_eq!(d["held"], true, "{d}");
    assert_eq!(w.metric("warden_verdicts_held"), 1.0);
    assert_eq!(w.metric("warden_verdict_changes_total{from=\"compliant\",to=\"unknown\"}"), 0.0);
    assert!(w.log_text().contains("telemetry source out"), "a WARN says so");

    // Back: subscribed again within 2 s of the broker accepting connections.
    broker.restart();
    let back = Instant::now();
    wait_for("the source to be up again", Duration::from_secs(2), || {
        (w.metric("warden_telemetry_source_up") == 1.0).then_some(())
    });
    assert!(back.elapsed() < Duration::from_secs(2));
    assert_eq!(w.metric("warden_verdicts_held"), 0.0);

    // The agent's backlog: a report produced during the outage, older than
    // stale_after by now, is applied, and its drift enforced.
    let backlog = pos_report(2, json!({"rooted": true, "ts": ts(-5)}));
    publish(broker.port, "devices/pos-0001/telemetry", &backlog);
    let req = nas.next(Duration::from_secs(5)).expect("the backlog's drift is enforced");
    assert_eq!((req["code"].as_str(), req["vlan"].as_str()), (Some("CoA-Request"), Some("999")), "{req}");
    assert_eq!(w.metric("warden_telemetry_messages_total{result=\"too_old\"}"), 0.0);
    // A report from before the outage is still too old.
    publish(broker.port, "devices/pos-0001/telemetry", &pos_report(3, json!({"ts": ts(-60)})));
    w.wait_metric("warden_telemetry_messages_total{result=\"too_old\"}", 1.0);
    w.stop();
}
