//! Remediation as a device sees it (issue 14), against the real binary: the
//! device is `mosquitto_sub` on its command topic and `mosquitto_pub` for
//! its acknowledgements and reports; its RADIUS session lives on the test
//! NAS. A failing report brings the rule's fix command; the device does
//! it, a passing report ends the plan and the CoA restores its access. A
//! kiosk that stays off its Wi-Fi gets each step of its plan on time, then
//! is escalated.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

mod common;

use common::nas::TestNas;
use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SECRET: &str = "a-long-shared-secret";

/// The shipped policies replaced by one kiosk policy whose plan runs in
/// seconds instead of minutes.
const KIOSK: &str = r#"
name = "kiosk"
applies_to = { groups = ["pos"] }
severity = "critical"
enforcement = "always"

[[plans]]
name = "kiosk-offline"
retry_every = "1s"
expires = "30s"
steps = [
  { after = "0s", action = "fix" },
  { after = "2s", action = "toggle_airplane_mode", args = { seconds = 10 } },
  { after = "4s", action = "reboot" },
  { after = "6s", action = "escalate" },
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
"#;

fn kiosk_workdir() -> std::path::PathBuf {
    let dir = Warden::workdir();
    for e in std::fs::read_dir(dir.join("policies")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    std::fs::write(dir.join("policies/kiosk.toml"), KIOSK).unwrap();
    dir
}

/// `mosquitto_sub` on a device's command topic: its commands, parsed, with
/// when each arrived.
struct Device {
    child: Child,
    commands: mpsc::Receiver<(Instant, Value)>,
}

impl Device {
    fn subscribe(mqtt: u16, id: &str) -> Self {
        require("mosquitto_sub", "mosquitto-clients");
        let mut child = Process::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &mqtt.to_string(), "-q", "1", "-t"])
            .arg(format!("devices/{id}/commands"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("run mosquitto_sub");
        let out = child.stdout.take().unwrap();
        let (tx, commands) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send((Instant::now(), v)).is_err()
                {
                    return;
                }
            }
        });
        // Give the subscription a moment to be in place before anything is sent.
        std::thread::sleep(Duration::from_millis(300));
        Self { child, commands }
    }

    fn next(&self, limit: Duration) -> Option<(Instant, Value)> {
        self.commands.recv_timeout(limit).ok()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ack(mqtt: u16, device: &str, id: &Value, status: &str) {
    publish(mqtt, &format!("devices/{device}/acks"), &json!({"id": id, "status": status}).to_string());
}

fn report(seq: u64, patch: Value) -> String {
    let mut r: Value = serde_json::from_str(&pos_report(seq, json!({}))).unwrap();
    for (k, v) in patch.as_object().unwrap() {
        r[k] = v.clone();
    }
    r.to_string()
}

fn launch(dir: &Path, nas_port: u16) -> (Warden, u16) {
    let mqtt = free_port();
    let (config, ports) =
        common::nas::radius_config("broker = \"embedded\"", mqtt, "", SECRET, nas_port, "coa_then_disconnect");
    let mut w = Warden::launch(dir, &config, mqtt, "");
    w.wait_ready();
    (w, ports.acct)
}

#[test]
fn a_failing_report_brings_the_fix_and_a_passing_one_restores_access_through_the_coa() {
    let dir = kiosk_workdir();
    let nas_port = free_udp_port();
    let (w, acct) = launch(&dir, nas_port);
    publish(w.mqtt, "devices/pos-0001/telemetry", &report(1, json!({})));
    w.wait_verdict("pos-0001", "compliant");
    common::nas::accounting(
        acct,
        SECRET,
        "Acct-Status-Type = Start, Acct-Session-Id = \"sess-7\", Calling-Station-Id = \"AA-BB-CC-00-00-01\", NAS-IP-Address = 127.0.0.1, NAS-Port = 7",
    );
    let nas = TestNas::start(nas_port, SECRET, false);
    let device = Device::subscribe(w.mqtt, "pos-0001");

    // Drift: quarantined through the CoA, and asked to fix it.
    publish(w.mqtt, "devices/pos-0001/telemetry", &report(2, json!({"encrypted": false})));
    let coa = nas.next(Duration::from_secs(5)).expect("CoA-Request after the violating report");
    assert_eq!((coa["code"].as_str(), coa["vlan"].as_str()), (Some("CoA-Request"), Some("999")), "{coa}");
    let (_, cmd) = device.next(Duration::from_secs(5)).expect("the fix command");
    assert_eq!(cmd["action"], "enable_encryption", "{cmd}");
    assert_eq!((cmd["policy"].as_str(), cmd["rule"].as_str()), (Some("kiosk"), Some("disk-encrypted")));
    for field in ["id", "issued", "expires"] {
        assert!(cmd[field].is_string(), "{field} in {cmd}");
    }
    assert!(cmd["expires"].as_str() > cmd["issued"].as_str(), "{cmd}");
    let v = wait_for("the session quarantined", Duration::from_secs(5), || {
        let v = w.device("pos-0001")?;
        (v["sessions"][0]["access"] == "quarantine").then_some(v)
    });
    // The device view shows its real RADIUS session.
    let session = &v["sessions"][0];
    assert_eq!((session["plane"].as_str(), session["acct_session_id"].as_str()), (Some("radius"), Some("sess-7")));
    assert_eq!(session["calling_station_id"], "AA-BB-CC-00-00-01", "{v}");
    assert_eq!(v["remediation"]["plans"][0]["rule"], "disk-encrypted", "{v}");
    assert_eq!(v["remediation"]["plans"][0]["commands"][0]["state"], "sent", "{v}");

    // The device does it and says so; the command is done, the rule still
    // fails (nothing counts until a report passes).
    ack(w.mqtt, "pos-0001", &cmd["id"], "done");
    wait_for("the command done", Duration::from_secs(5), || {
        (w.device("pos-0001")?["remediation"]["plans"][0]["commands"][0]["state"] == "done").then_some(())
    });
    assert_eq!(w.device("pos-0001").unwrap()["verdict"], "noncompliant");
    assert!(nas.next(Duration::from_millis(300)).is_none(), "an ack alone restores nothing");

    // The report that passes: remediated, and the CoA gives the VLAN back.
    publish(w.mqtt, "devices/pos-0001/telemetry", &report(3, json!({})));
    let coa = nas.next(Duration::from_secs(5)).expect("CoA-Request after the passing report");
    assert_eq!((coa["code"].as_str(), coa["vlan"].as_str()), (Some("CoA-Request"), Some("100")), "{coa}");
    let v = w.wait_verdict("pos-0001", "compliant");
    assert!(v["remediation"].is_null(), "the plan is over: {v}");
    w.wait_metric("warden_remediation_seconds_count", 1.0);
    assert_eq!(w.metric("warden_remediation_commands_total{action=\"enable_encryption\",result=\"done\"}"), 1.0);
    assert!(w.log_text().contains("remediated: a fresh report passes the rule"));
    assert!(device.next(Duration::from_millis(1500)).is_none(), "nothing more is sent");

    // Acknowledgements for nothing, or not JSON, are refused and counted.
    publish(w.mqtt, "devices/pos-0001/acks", r#"{"id":"00000000-1","status":"done"}"#);
    publish(w.mqtt, "devices/pos-0001/acks", "not json");
    w.wait_metric("warden_remediation_acks_total{result=\"ack_unknown\"}", 1.0);
    w.wait_metric("warden_remediation_acks_total{result=\"ack_malformed\"}", 1.0);
}

/// Dynamic groups for the kiosk test: the escalated ones to a portal VLAN.
const GROUPS: &str = r#"
[[groups]]
name = "escalated"
description = "Plans that ran out: to the remediation portal"
when = { remediation = "escalated" }
vlan = "950"
filter_id = "remediation-portal"

[[groups]]
name = "remediating"
when = { remediation = "running" }
"#;

#[test]
fn a_kiosk_that_stays_off_its_wifi_gets_each_step_on_time_then_is_escalated_into_its_groups_vlan() {
    let dir = kiosk_workdir();
    std::fs::write(dir.join("policies/groups.toml"), GROUPS).unwrap();
    let nas_port = free_udp_port();
    let (w, acct) = launch(&dir, nas_port);
    let ids = json!({"mac_addresses": ["aa:bb:cc:00:00:02"], "cert_identity": "pos-0002"});
    publish(w.mqtt, "devices/pos-0002/telemetry", &report(1, ids.clone()));
    w.wait_verdict("pos-0002", "compliant");
    common::nas::accounting(
        acct,
        SECRET,
        "Acct-Status-Type = Start, Acct-Session-Id = \"kiosk-2\", Calling-Station-Id = \"AA-BB-CC-00-00-02\", NAS-IP-Address = 127.0.0.1, NAS-Port = 2",
    );
    let nas = TestNas::start(nas_port, SECRET, false);
    let device = Device::subscribe(w.mqtt, "pos-0002");
    let mut off_wifi = ids.clone();
    off_wifi["wifi_ssid"] = json!("Guest");
    publish(w.mqtt, "devices/pos-0002/telemetry", &report(2, off_wifi.clone()));
    let began = Instant::now();
    let coa = nas.next(Duration::from_secs(5)).expect("the quarantine CoA");
    assert_eq!((coa["vlan"].as_str(), coa["filter_id"].as_str()), (Some("999"), None), "{coa}");
    let mut got = Vec::new();
    let mut seq = 2;
    while got.len() < 3 {
        let (at, cmd) = device.next(Duration::from_secs(10)).expect("the next step's command");
        got.push((at.duration_since(began), cmd["action"].as_str().unwrap().to_string()));
        // The device does each, and stays off its Wi-Fi.
        ack(w.mqtt, "pos-0002", &cmd["id"], "done");
        seq += 1;
        publish(w.mqtt, "devices/pos-0002/telemetry", &report(seq, off_wifi.clone()));
        if cmd["action"] == "toggle_airplane_mode" {
            assert_eq!(cmd["args"], json!({"seconds": 10}), "{cmd}");
        }
    }
    let actions: Vec<&str> = got.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(actions, ["connect_store_wifi", "toggle_airplane_mode", "reboot"], "{got:?}");
    // Each on its delay from the violation (2 s and 4 s), not before.
    assert!(got[1].0 >= Duration::from_millis(1900) && got[1].0 < Duration::from_secs(4), "{got:?}");
    assert!(got[2].0 >= Duration::from_millis(3900) && got[2].0 < Duration::from_secs(6), "{got:?}");
    assert_eq!(w.device("pos-0002").unwrap()["member_of"], json!(["remediating"]));

    // Escalated at 6 s: into the escalated group, whose VLAN and Filter-Id
    // reach the running session by CoA and the next admission by MAB.
    let coa = nas.next(Duration::from_secs(10)).expect("the CoA into the escalated group's VLAN");
    assert!(began.elapsed() >= Duration::from_millis(5900), "escalated at 6 s, not before: {coa}");
    assert_eq!(coa["code"], "CoA-Request", "{coa}");
    assert_eq!((coa["vlan"].as_str(), coa["filter_id"].as_str()), (Some("950"), Some("remediation-portal")), "{coa}");
    let v = w.device("pos-0002").unwrap();
    assert_eq!(v["remediation"]["plans"][0]["escalated"], true, "{v}");
    assert_eq!(v["member_of"], json!(["escalated", "remediating"]), "{v}");
    let out = common::nas::mab(ports_of(&w).0, SECRET, "AA-BB-CC-00-00-02");
    assert_eq!(common::nas::vlan(&out).as_deref(), Some("950"), "{out}");
    assert_eq!(common::nas::filter_id(&out).as_deref(), Some("remediation-portal"), "{out}");
    assert_eq!(w.metric("warden_remediation_escalations_total"), 1.0);
    assert!(w.log_text().contains("remediation escalated"));
    assert!(device.next(Duration::from_millis(500)).is_none(), "escalating sends the device nothing");
    let (_, body) = w.get("/api/v1/groups").unwrap();
    let groups: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(groups["groups"][0]["name"], "escalated", "{groups}");
    assert_eq!(groups["groups"][0]["members"], 1, "{groups}");
    assert_eq!(groups["groups"][0]["vlan"], "950", "{groups}");
    let (_, body) = w.get("/api/v1/groups/escalated").unwrap();
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["devices"], json!(["pos-0002"]), "{body}");
    assert_eq!(w.get("/api/v1/groups/nope").unwrap().0, 404);

    // Back on its Wi-Fi: the plan ends, the groups empty, full access again.
    publish(w.mqtt, "devices/pos-0002/telemetry", &report(seq + 1, ids));
    let coa = nas.next(Duration::from_secs(5)).expect("the CoA back to the compliant VLAN");
    assert_eq!((coa["vlan"].as_str(), coa["filter_id"].as_str()), (Some("100"), None), "{coa}");
    let v = w.wait_verdict("pos-0002", "compliant");
    assert!(v["remediation"].is_null(), "{v}");
    assert_eq!(v["member_of"], json!([]), "{v}");
}

/// The RADIUS auth port from warden's config file.
fn ports_of(w: &Warden) -> (u16,) {
    let text = std::fs::read_to_string(w.dir.join(format!("warden-{}.toml", w.http))).unwrap();
    let line = text.lines().find(|l| l.starts_with("auth_listen")).unwrap();
    (line.rsplit(':').next().unwrap().trim_end_matches('"').parse().unwrap(),)
}

#[test]
fn an_unanswered_command_is_sent_again_and_a_device_back_from_away_gets_only_the_latest_step() {
    let dir = kiosk_workdir();
    // Two sends 700 ms apart: away at 1.4 s, before the 2 s step.
    let plan = KIOSK.replace("retry_every = \"1s\"", "retry_every = \"700ms\"\nmax_attempts = 2");
    std::fs::write(dir.join("policies/kiosk.toml"), plan).unwrap();
    let (w, _) = launch(&dir, free_udp_port());
    let ids = json!({"mac_addresses": ["aa:bb:cc:00:00:03"], "cert_identity": "pos-0003"});
    publish(w.mqtt, "devices/pos-0003/telemetry", &report(1, ids.clone()));
    w.wait_verdict("pos-0003", "compliant");
    let device = Device::subscribe(w.mqtt, "pos-0003");
    let mut off_wifi = ids.clone();
    off_wifi["wifi_ssid"] = json!("Guest");
    publish(w.mqtt, "devices/pos-0003/telemetry", &report(2, off_wifi.clone()));
    // No answer: sent twice, then the device is away.
    let (_, first) = device.next(Duration::from_secs(5)).unwrap();
    let (_, again) = device.next(Duration::from_secs(5)).unwrap();
    assert_eq!(first["id"], again["id"], "the same command, sent again");
    w.wait_metric("warden_remediation_commands_total{action=\"connect_store_wifi\",result=\"unanswered\"}", 1.0);
    // Away past the 2 s and 4 s steps: nothing is sent.
    if let Some((_, c)) = device.next(Duration::from_millis(4500)) {
        panic!("sent while away: {c}");
    }
    // Heard from again: only the latest step due (reboot), no storm.
    publish(w.mqtt, "devices/pos-0003/telemetry", &report(3, off_wifi));
    let (_, cmd) = device.next(Duration::from_secs(5)).expect("the latest step");
    assert_eq!(cmd["action"], "reboot", "{cmd}");
    ack(w.mqtt, "pos-0003", &cmd["id"], "accepted");
    let v = wait_for("the command accepted", Duration::from_secs(5), || {
        let v = w.device("pos-0003")?;
        (v["remediation"]["plans"][0]["commands"][2]["state"] == "accepted").then_some(v)
    });
    let states: Vec<&str> = v["remediation"]["plans"][0]["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["unanswered", "skipped", "accepted"], "{v}");
}
