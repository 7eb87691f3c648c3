//! The circuit breaker end to end: a policy reload that would quarantine
//! half the fleet changes nothing until an operator confirms it with
//! `warden changes confirm`, through the API of the running binary.

mod common;

use common::*;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "s3cret-token-0123456789";

fn warden_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warden")).args(args).output().expect("run warden");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_reload_that_would_quarantine_half_the_fleet_waits_for_confirmation() {
    let dir = Warden::workdir();
    std::fs::write(dir.join("api.token"), format!("{TOKEN}\n")).unwrap();
    let mut setup = Setup::embedded();
    setup.extra = "token_file = \"api.token\"\n".into();
    let w = Warden::start(&dir, &setup);
    // Ten tablets, half on Android 14, half on 15.
    for i in 0..10 {
        let r = pos_report(
            1,
            json!({
                "os_version": if i % 2 == 0 { "14.0.1" } else { "15.1" },
                "mac_addresses": [format!("aa:bb:cc:00:10:{i:02x}")],
                "cert_identity": format!("pos-10{i:02}"),
            }),
        );
        publish(w.mqtt, &format!("devices/pos-10{i:02}/telemetry"), &r);
    }
    wait_for("ten compliant tablets", Duration::from_secs(10), || {
        (w.metric("warden_devices{verdict=\"compliant\"}") == 10.0).then_some(())
    });

    // Android 15 becomes the minimum: five of ten would be quarantined.
    let policy = dir.join("policies/pos-baseline.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(text.contains("version_gte = \"14.0\""));
    std::fs::write(&policy, text.replace("version_gte = \"14.0\"", "version_gte = \"15.0\"")).unwrap();
    w.wait_metric("warden_changes_pending", 1.0);
    assert_eq!(w.metric("warden_devices{verdict=\"compliant\"}"), 10.0, "nothing applied yet");
    assert!(w.log_text().contains("circuit breaker"), "a WARN says so");
    let auth = [("Authorization", format!("Bearer {TOKEN}"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, body) = http_get_with(w.http, "/api/v1/changes", &auth).unwrap();
    assert_eq!(code, 200, "{body}");
    let changes: Value = serde_json::from_str(&body).unwrap();
    let held = &changes["changes"][0];
    assert_eq!((held["restricting"].as_u64(), held["devices"].as_u64()), (Some(5), Some(10)), "{body}");
    assert_eq!(held["cause"], "policy_reload");
    let id = held["id"].as_u64().unwrap().to_string();

    // The CLI lists and confirms it, with the config's API address and token.
    let config = dir.join(format!("warden-{}.toml", w.http));
    let config = config.to_str().unwrap();
    let (ok, out) = warden_cli(&["changes", "list", "--config", config]);
    assert!(ok && out.contains("\"restricting\":5"), "{out}");
    let (ok, out) = warden_cli(&["changes", "confirm", "999", "--config", config]);
    assert!(!ok && out.contains("404"), "an unknown id is refused: {out}");
    let (ok, out) = warden_cli(&["changes", "confirm", &id, "--api", &format!("http://127.0.0.1:{}", w.http)]);
    assert!(!ok && out.contains("401"), "no token, no confirmation: {out}");
    let (ok, out) = warden_cli(&["changes", "confirm", &id, "--config", config]);
    assert!(ok, "{out}");
    wait_for("five quarantined tablets", Duration::from_secs(10), || {
        (w.metric("warden_devices{verdict=\"noncompliant\"}") == 5.0).then_some(())
    });
    assert_eq!(w.device_with("pos-1000", &auth)["failed_rules"][0]["rule"], "min-os");
    assert_eq!(w.metric("warden_changes_pending"), 0.0);

    // The trail says who held and who confirmed, from where.
    let text = std::fs::read_to_string(dir.join("state/audit/audit-1.jsonl")).unwrap();
    let entries: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let held = entries.iter().position(|e| e["kind"] == "warden.changes.held").expect("held");
    let confirmed = entries.iter().position(|e| e["kind"] == "warden.changes.confirmed").expect("confirmed");
    assert!(held < confirmed);
    assert_eq!(entries[confirmed]["data"]["from"], "127.0.0.1", "{}", entries[confirmed]);
    assert!(entries[confirmed]["data"]["by"].is_string(), "{}", entries[confirmed]);
}
