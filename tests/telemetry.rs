//! The compliance core end to end: the real warden binary, telemetry from the
//! real `mosquitto_pub` (through the embedded broker and through a mosquitto
//! broker), verdicts read over HTTP and counters from /metrics.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const TOPIC: &str = "devices/pos-0001/telemetry";

/// compliant → violating report → noncompliant with the failed rule →
/// compliant again, and the replay / malformed refusals, on one broker.
fn drift_and_recover(w: &Warden) {
    publish(w.mqtt, TOPIC, &pos_report(1, json!({})));
    let d = w.wait_verdict("pos-0001", "compliant");
    assert_eq!(d["failed_rules"], json!([]));
    assert_eq!(d["identities"]["mac_addresses"], json!(["aa:bb:cc:00:00:01"]));

    publish(w.mqtt, TOPIC, &pos_report(2, json!({"encrypted": false})));
    let d = w.wait_verdict("pos-0001", "noncompliant");
    let failed = d["failed_rules"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{d}");
    assert_eq!(failed[0]["policy"], "pos-baseline");
    assert_eq!(failed[0]["rule"], "disk-encrypted");
    assert_eq!(failed[0]["observed"], "false");
    assert_eq!(failed[0]["expected"], "== true");
    assert_eq!(failed[0]["remediation"], "enable_encryption");
    assert_eq!(d["enforce"]["quarantine"], true, "critical, grace 0s, always: enforced at once");

    // A replayed (not increasing) seq changes nothing, even if compliant.
    publish(w.mqtt, TOPIC, &pos_report(2, json!({})));
    publish(w.mqtt, TOPIC, &pos_report(1, json!({})));
    w.wait_metric("warden_telemetry_messages_total{result=\"replay\"}", 2.0);
    assert_eq!(w.device("pos-0001").unwrap()["verdict"], "noncompliant");

    publish(w.mqtt, TOPIC, &pos_report(3, json!({})));
    let d = w.wait_verdict("pos-0001", "compliant");
    assert_eq!(d["seq"], 3);
    assert!(w.metric("warden_verdict_changes_total{from=\"compliant\",to=\"noncompliant\"}") >= 1.0);
    assert!(w.metric("warden_verdict_changes_total{from=\"noncompliant\",to=\"compliant\"}") >= 1.0);
    assert_eq!(w.metric("warden_devices{verdict=\"compliant\"}"), 1.0);
}

#[test]
fn embedded_broker_drift_and_recovery() {
    let dir = Warden::workdir();
    let w = Warden::start(&dir, &Setup::embedded());
    drift_and_recover(&w);
}

#[test]
fn external_mosquitto_drift_and_recovery() {
    let dir = Warden::workdir();
    let broker = Mosquitto::start(&dir);
    let w = Warden::start(&dir, &Setup::external(broker.port));
    drift_and_recover(&w);
}

#[test]
fn every_bad_message_is_counted_and_changes_nothing() {
    let dir = Warden::workdir();
    let broker = Mosquitto::start(&dir);
    let w = Warden::start(&dir, &Setup::external(broker.port));
    publish(w.mqtt, TOPIC, &pos_report(10, json!({})));
    w.wait_verdict("pos-0001", "compliant");

    let bad = [
        // (topic, payload, result label)
        ("devices/pos-0001/telemetry", "{not json".to_string(), "malformed"),
        ("devices/pos-0001/telemetry", "\u{0}\u{1}".to_string(), "malformed"),
        ("devices/pos-0001/telemetry", json!({"seq": 11, "ts": ts(0), "encrypted": "no"}).to_string(), "invalid_field"),
        ("devices/pos-0001/telemetry", json!({"ts": ts(0), "encrypted": false}).to_string(), "invalid_field"),
        ("devices/pos-0001/telemetry", json!({"seq": 12, "encrypted": false}).to_string(), "invalid_field"),
        ("devices/pos-0001/telemetry", json!({"seq": 13, "ts": ts(-3600), "encrypted": false}).to_string(), "too_old"),
        ("devices/pos-0001/telemetry", json!({"seq": 14, "ts": ts(3600), "encrypted": false}).to_string(), "future"),
        // (A topic with extra levels never matches the subscription, so the
        // broker does not deliver it: the odd ids below are what can arrive.)
        ("devices/pos-0001!/telemetry", pos_report(15, json!({"encrypted": false})), "bad_topic"),
        ("devices/pos 0001/telemetry", pos_report(16, json!({"encrypted": false})), "bad_topic"),
        (&*format!("devices/{}/telemetry", "x".repeat(129)), pos_report(17, json!({})), "bad_topic"),
        (
            "devices/pos-0001/telemetry",
            pos_report(18, json!({"encrypted": false, "pad": "x".repeat(70_000)})),
            "oversize",
        ),
    ];
    for (topic, payload, _) in &bad {
        publish(w.mqtt, topic, payload);
    }
    for label in ["malformed", "invalid_field", "too_old", "future", "bad_topic", "oversize"] {
        let want = bad.iter().filter(|b| b.2 == label).count() as f64;
        w.wait_metric(&format!("warden_telemetry_messages_total{{result=\"{label}\"}}"), want);
    }
    // Nothing changed: same seq, same verdict, no other device appeared.
    let d = w.device("pos-0001").unwrap();
    assert_eq!((d["verdict"].as_str(), d["seq"].as_u64()), (Some("compliant"), Some(10)));
    let (_, list) = http_get(w.http, "/api/v1/devices").unwrap();
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["matched"], 1, "{list}");
    // The broker connection survived the oversized message.
    publish(w.mqtt, TOPIC, &pos_report(19, json!({"rooted": true})));
    w.wait_verdict("pos-0001", "noncompliant");
    assert!(w.log_text().contains("telemetry message ignored"), "refusals are logged");
}

#[test]
fn api_lists_and_filters_devices() {
    let dir = Warden::workdir();
    let w = Warden::start(&dir, &Setup::embedded());
    publish(w.mqtt, "devices/pos-a/telemetry", &pos_report(1, json!({"mac_addresses": ["aa:bb:cc:00:00:0a"]})));
    publish(
        w.mqtt,
        "devices/pos-b/telemetry",
        &pos_report(1, json!({"mac_addresses": ["aa:bb:cc:00:00:0b"], "kiosk_mode": false})),
    );
    publish(w.mqtt, "devices/laptop-1/telemetry", &json!({"seq": 1, "ts": ts(0), "os": "macos", "groups": ["byod"], "encrypted": true, "firewall": true, "passcode": true, "rooted": false, "open_ports": [], "agent_version": "3.3"}).to_string());
    w.wait_verdict("laptop-1", "compliant");
    w.wait_verdict("pos-b", "noncompliant");
    w.wait_verdict("pos-a", "compliant");
    let list = |q: &str| -> serde_json::Value {
        serde_json::from_str(&http_get(w.http, &format!("/api/v1/devices{q}")).unwrap().1).unwrap()
    };
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["devices"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&list("")), ["laptop-1", "pos-a", "pos-b"]);
    assert_eq!(ids(&list("?verdict=noncompliant")), ["pos-b"]);
    assert_eq!(ids(&list("?verdict=compliant&group=pos")), ["pos-a"]);
    assert_eq!(ids(&list("?group=byod")), ["laptop-1"]);
    let page1 = list("?limit=2");
    assert_eq!(ids(&page1), ["laptop-1", "pos-a"]);
    assert_eq!(ids(&list(&format!("?limit=2&after={}", page1["next"].as_str().unwrap()))), ["pos-b"]);
    assert_eq!(http_get(w.http, "/api/v1/devices?verdict=maybe").unwrap().0, 400);
    assert_eq!(http_get(w.http, "/api/v1/devices?colour=red").unwrap().0, 400);
    let (code, body) = http_get(w.http, "/api/v1/devices/nobody").unwrap();
    assert_eq!(code, 404);
    assert!(body.contains("\"verdict\":\"unknown\""), "{body}");
    assert_eq!(http_get(w.http, "/healthz").unwrap().0, 200);
}

#[test]
fn api_token_is_required_when_configured() {
    let dir = Warden::workdir();
    std::fs::write(dir.join("api.token"), "s3cret-token-0123456789\n").unwrap();
    let mut setup = Setup::embedded();
    setup.extra = "token_file = \"api.token\"\n".into();
    let w = Warden::start(&dir, &setup);
    assert_eq!(http_get(w.http, "/api/v1/devices").unwrap().0, 401);
    assert_eq!(http_get_with(w.http, "/api/v1/devices", &[("Authorization", "Bearer wrong")]).unwrap().0, 401);
    assert_eq!(
        http_get_with(w.http, "/api/v1/devices", &[("Authorization", "Bearer s3cret-token-0123456789")]).unwrap().0,
        200
    );
    // Health and metrics stay open for probes and Prometheus.
    assert_eq!(http_get(w.http, "/metrics").unwrap().0, 200);
    assert!(!w.log_text().contains("s3cret"), "the token is never logged");
}

#[test]
fn policy_hot_reload_valid_and_invalid() {
    let dir = Warden::workdir();
    let w = Warden::start(&dir, &Setup::embedded());
    publish(w.mqtt, TOPIC, &pos_report(1, json!({"wifi_ssid": "ACME-GUEST"})));
    let d = w.wait_verdict("pos-0001", "noncompliant");
    assert_eq!(d["failed_rules"][0]["rule"], "store-wifi");

    // A valid change (the guest network becomes allowed) is picked up from
    // the file change alone and every device is re-evaluated.
    let policy = dir.join("policies/pos-baseline.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, text.replace("\"ACME-STORE-5G\"]", "\"ACME-STORE-5G\", \"ACME-GUEST\"]")).unwrap();
    w.wait_verdict("pos-0001", "compliant");
    w.wait_metric("warden_policy_reloads_total{result=\"ok\"}", 1.0);

    // An invalid set is refused, the previous one stays in force.
    let reloads_ok = w.metric("warden_policy_reloads_total{result=\"ok\"}");
    std::fs::write(dir.join("policies/broken.toml"), "name = \"broken\"\nseverity = \"urgent\"\n").unwrap();
    w.wait_metric("warden_policy_reloads_total{result=\"error\"}", 1.0);
    assert!(w.log_text().contains("broken.toml:2:12"), "the log names file, line and column");
    publish(w.mqtt, TOPIC, &pos_report(2, json!({"wifi_ssid": "ACME-GUEST"})));
    w.wait_metric("warden_telemetry_messages_total{result=\"accepted\"}", 2.0);
    assert_eq!(w.device("pos-0001").unwrap()["verdict"], "compliant", "the last valid policies still apply");
    assert_eq!(w.metric("warden_policy_reloads_total{result=\"ok\"}"), reloads_ok);

    // Fixed, then SIGHUP also reloads: the guest network is forbidden again.
    std::fs::remove_file(dir.join("policies/broken.toml")).unwrap();
    std::fs::write(&policy, text).unwrap();
    w.hup();
    w.wait_verdict("pos-0001", "noncompliant");
}

#[test]
fn a_silent_device_becomes_unknown() {
    let dir = Warden::workdir();
    let mut setup = Setup::embedded();
    setup.stale_after = "2s";
    let w = Warden::start(&dir, &setup);
    publish(w.mqtt, TOPIC, &pos_report(1, json!({})));
    w.wait_verdict("pos-0001", "compliant");
    let d = w.wait_verdict("pos-0001", "unknown");
    assert_eq!(d["failed_rules"][0]["rule"], "inactive", "{d}");
    assert_eq!(w.metric("warden_verdict_changes_total{from=\"compliant\",to=\"unknown\"}"), 1.0);
    // A fresh report brings it back.
    publish(w.mqtt, TOPIC, &pos_report(2, json!({})));
    w.wait_verdict("pos-0001", "compliant");
}

#[test]
fn restart_keeps_verdicts_and_the_time_warden_was_down_is_not_silence() {
    let dir = Warden::workdir();
    let mut setup = Setup::embedded();
    setup.stale_after = "4s";
    let mut w = Warden::start(&dir, &setup);
    publish(w.mqtt, "devices/pos-ok/telemetry", &pos_report(5, json!({"mac_addresses": ["aa:bb:cc:00:00:0a"]})));
    publish(
        w.mqtt,
        "devices/pos-bad/telemetry",
        &pos_report(7, json!({"rooted": true, "mac_addresses": ["aa:bb:cc:00:00:0b"]})),
    );
    w.wait_verdict("pos-ok", "compliant");
    w.wait_verdict("pos-bad", "noncompliant");
    w.stop();

    // Back at once: verdicts are there before any new telemetry arrives.
    let w2 = Warden::start(&dir, &setup);
    assert_eq!(w2.device("pos-ok").unwrap()["verdict"], "compliant");
    let bad = w2.device("pos-bad").unwrap();
    assert_eq!(bad["verdict"], "noncompliant");
    assert_eq!(bad["failed_rules"][0]["rule"], "not-rooted");
    // The seq history survived too: a replay is still a replay.
    publish(w2.mqtt, "devices/pos-bad/telemetry", &pos_report(7, json!({})));
    w2.wait_metric("warden_telemetry_messages_total{result=\"replay\"}", 1.0);
    drop(w2);

    // Down for longer than stale_after: no one could hear them meanwhile,
    // so that time is an outage, not silence. They come back with their
    // verdicts, and go unknown once stale_after passes with warden listening.
    std::thread::sleep(Duration::from_secs(5));
    let w3 = Warden::start(&dir, &setup);
    let back = std::time::Instant::now();
    assert_eq!(w3.device("pos-ok").unwrap()["verdict"], "compliant");
    assert_eq!(w3.device("pos-bad").unwrap()["verdict"], "noncompliant", "a restart never widens access");
    assert_eq!(w3.metric("warden_verdict_changes_total{from=\"compliant\",to=\"unknown\"}"), 0.0);
    wait_for("silence heard for stale_after", Duration::from_secs(10), || {
        (w3.metric("warden_devices{verdict=\"unknown\"}") == 2.0).then_some(())
    });
    // Not at once: what is left of stale_after (4 s, less the silence heard
    // while the last warden ran) counts from when this one listens.
    assert!(back.elapsed() >= Duration::from_secs(1), "stale_after counts from when warden listens again");
}
