//! The audit trail as a compliance officer uses it (issue 15), with the real
//! binary: a drift → quarantine → exemption → remediation → restore
//! sequence leaves its entries in order, across a restart; `warden audit
//! verify` passes with the signing key from `warden certs init`, and fails
//! naming the entry once a byte of the file is changed.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};

const ADMIN: &str = "an-admin-token-0123456789";

fn warden(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden")).current_dir(dir).args(args).output().unwrap()
}

/// Waits for a verdict through the API, with the admin token.
fn wait_verdict(w: &Warden, id: &str, verdict: &str) {
    let auth = format!("Bearer {ADMIN}");
    wait_for(&format!("{id} {verdict}"), std::time::Duration::from_secs(10), || {
        let (code, body) = http_get_with(w.http, &format!("/api/v1/devices/{id}"), &[("Authorization", &auth)])?;
        (code == 200 && serde_json::from_str::<Value>(&body).ok()?["verdict"] == verdict).then_some(())
    });
}

fn entries(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("state/audit/audit-1.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_drift_and_its_remediation_leave_a_verifiable_trail_and_tampering_is_named() {
    let dir = Warden::workdir();
    let out = warden(&dir, &["certs", "init", "--dir", "certs"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.join("admin.token"), ADMIN).unwrap();
    let mqtt = free_port();
    let config = format!(
        "[node]\nstate_dir = \"state\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\nallow_anonymous = true\n\
         [policy]\ndir = \"policies\"\n[audit]\nsigning_key_file = \"certs/audit.key\"\ncheckpoint_every = \"1ms\"\n"
    );
    let mut w = Warden::launch(&dir, &config, mqtt, "token_file = \"admin.token\"\n");
    w.wait_ready();
    publish(mqtt, "devices/pos-0001/telemetry", &pos_report(1, json!({})));
    wait_verdict(&w, "pos-0001", "compliant");
    publish(mqtt, "devices/pos-0001/telemetry", &pos_report(2, json!({"rooted": true})));
    wait_verdict(&w, "pos-0001", "noncompliant");
    let api = format!("http://127.0.0.1:{}", w.http);
    let out = warden(
        &dir,
        &[
            "device",
            "exempt",
            "pos-0001",
            "--for",
            "1h",
            "--reason",
            "repair ticket 7",
            "--api",
            &api,
            "--token-file",
            "admin.token",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    publish(mqtt, "devices/pos-0001/telemetry", &pos_report(3, json!({})));
    wait_verdict(&w, "pos-0001", "compliant");
    // A second device claiming pos-0001's MAC and certificate.
    publish(mqtt, "devices/pos-0002/telemetry", &pos_report(1, json!({})));
    wait_verdict(&w, "pos-0002", "noncompliant");
    w.stop();

    // Restarted, the chain goes on in the same file.
    let mut w = Warden::launch(&dir, &config, mqtt, "token_file = \"admin.token\"\n");
    w.wait_ready();
    publish(mqtt, "devices/pos-0001/telemetry", &pos_report(4, json!({"encrypted": false})));
    wait_verdict(&w, "pos-0001", "noncompliant");
    w.stop();

    // The API pages through it with filters (admin token).
    let mut w = Warden::launch(&dir, &config, mqtt, "token_file = \"admin.token\"\n");
    w.wait_ready();
    let auth = format!("Bearer {ADMIN}");
    let get = |path: &str| -> Value {
        let (code, body) = http_get_with(w.http, path, &[("Authorization", &auth)]).unwrap();
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    };
    let overrides = get("/api/v1/audit?kind=warden.override.set");
    assert_eq!(overrides["entries"].as_array().unwrap().len(), 1, "{overrides}");
    assert_eq!(overrides["entries"][0]["device"], "pos-0001");
    let first = get("/api/v1/audit?device=pos-0001&limit=2");
    assert_eq!(first["entries"].as_array().unwrap().len(), 2);
    let next = first["next"].as_u64().expect("a cursor");
    let rest = get(&format!("/api/v1/audit?device=pos-0001&after={next}"));
    assert!(rest["entries"][0]["seq"].as_u64().unwrap() > next, "{rest}");
    assert_eq!(get("/api/v1/audit?since=2999-01-01T00:00:00Z")["entries"], json!([]));
    assert_eq!(http_get(w.http, "/api/v1/audit").unwrap().0, 401, "no token, no trail");
    w.stop();

    let all = entries(&dir);
    let kinds: Vec<(&str, &str)> = all
        .iter()
        .filter(|e| e["kind"].is_string())
        .map(|e| (e["kind"].as_str().unwrap(), e["data"]["to"].as_str().or(e["data"]["state"].as_str()).unwrap_or("")))
        .collect();
    let at = |k: (&str, &str)| kinds.iter().position(|x| *x == k).unwrap_or_else(|| panic!("no {k:?} in {kinds:?}"));
    let drift = at(("warden.verdict.changed", "noncompliant"));
    assert!(at(("warden.verdict.changed", "compliant")) < drift, "{kinds:?}");
    assert!(drift < at(("warden.remediation.command", "sent")), "{kinds:?}");
    assert!(drift < at(("warden.override.set", "")), "{kinds:?}");
    assert!(at(("warden.override.set", "")) < at(("warden.remediation.completed", "")), "{kinds:?}");
    let set = &all.iter().find(|e| e["kind"] == "warden.override.set").unwrap()["data"];
    assert_eq!((set["by"].as_str(), set["reason"].as_str()), (Some("admin"), Some("repair ticket 7")), "{set}");
    assert_eq!(set["from"], "127.0.0.1", "where the write came from: {set}");
    let conflict = all.iter().find(|e| e["kind"] == "warden.identity.conflict").expect("the identity conflict");
    assert_eq!((conflict["device"].as_str(), conflict["data"]["owner"].as_str()), (Some("pos-0002"), Some("pos-0001")));
    assert!(all.iter().any(|e| e["checkpoint"].is_u64() && e["sig"].is_string()), "signed checkpoints");
    let seqs: Vec<u64> = all.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "one chain across the restart");

    // The drift report over the same trail, as a compliance officer runs it.
    let out = warden(&dir, &["report", "--dir", "state/audit", "--since", "1h", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rule =
        |k: &str| report["rules"].as_array().unwrap().iter().find(|r| r["rule"] == k).cloned().unwrap_or_default();
    assert_eq!(rule("pos-baseline/not-rooted")["drifts"], 1, "{report}");
    assert_eq!(rule("pos-baseline/not-rooted")["remediated"], 1, "{report}");
    assert_eq!(rule("pos-baseline/disk-encrypted")["drifts"], 1, "{report}");
    let failing: Vec<&str> =
        report["failing"].as_array().unwrap().iter().map(|f| f["device"].as_str().unwrap()).collect();
    assert_eq!(failing, ["pos-0002", "pos-0001"], "{report}");
    assert_eq!(report["overrides"][0]["by"], "admin", "{report}");
    let out = warden(&dir, &["report", "--dir", "state/audit", "--format", "html", "--out", "report.html"]);
    assert!(out.status.success());
    assert!(std::fs::read_to_string(dir.join("report.html")).unwrap().contains("pos-baseline/not-rooted"));

    let out = warden(&dir, &["audit", "verify", "--dir", "state/audit", "--key", "certs/audit.key"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("OK ({} entries", seqs.len())), "{text}");

    // One byte changed in the drift's entry: named, non-zero.
    let path = dir.join("state/audit/audit-1.jsonl");
    let mut lines: Vec<String> = std::fs::read_to_string(&path).unwrap().lines().map(String::from).collect();
    let i = lines.iter().position(|l| l.contains("\"to\":\"noncompliant\"")).unwrap();
    lines[i] = lines[i].replacen("\"rooted", "\"r00ted", 1).replacen("not-rooted", "not-r00ted", 1);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let out = warden(&dir, &["audit", "verify", "--dir", "state/audit", "--key", "certs/audit.key"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("audit-1.jsonl:{}", i + 1)) && err.contains("edited"), "{err}");
}

/// `[[reports]]`: a report whose latest due time passed while warden was not
/// running is written at start, in every format, with an index; a restart
/// does not write it again.
#[test]
fn a_scheduled_report_that_fell_due_is_written_at_start_once() {
    let dir = Warden::workdir();
    let mqtt = free_port();
    let config = format!(
        "[node]\nstate_dir = \"state\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\nallow_anonymous = true\n[policy]\ndir = \"policies\"\n\
         [[reports]]\nname = \"daily-drift\"\nschedule = \"daily 00:00\"\nsince = \"1d\"\nformats = [\"html\", \"csv\", \"json\"]\nout_dir = \"reports\"\n"
    );
    let mut w = Warden::launch(&dir, &config, mqtt, "");
    w.wait_ready();
    let index = wait_for("the report's index", std::time::Duration::from_secs(10), || {
        let text = std::fs::read_to_string(dir.join("reports/index.json")).ok()?;
        serde_json::from_str::<Value>(&text).ok()
    });
    let reports = index["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 1, "{index}");
    let files: Vec<&str> = reports[0]["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert_eq!(files.len(), 3);
    for f in &files {
        assert!(dir.join("reports").join(f).exists(), "{f}");
    }
    assert!(reports[0]["until"].as_str().unwrap().ends_with("T00:00:00Z"), "{index}");
    assert!(std::fs::read_to_string(dir.join("reports/index.html")).unwrap().contains(files[0]));
    w.stop();
    // Restarted: the same due time is already written.
    let mut w = Warden::launch(&dir, &config, mqtt, "");
    w.wait_ready();
    std::thread::sleep(std::time::Duration::from_millis(500));
    w.stop();
    let text = std::fs::read_to_string(dir.join("reports/index.json")).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["reports"].as_array().unwrap().len(), 1, "{text}");
    assert!(w.log_text().lines().all(|l| !l.contains("scheduled report written")), "not written twice");
}

#[test]
fn a_device_silent_past_forget_after_is_forgotten_recorded_and_stays_gone() {
    let dir = Warden::workdir();
    std::fs::write(dir.join("admin.token"), ADMIN).unwrap();
    let mqtt = free_port();
    let config = format!(
        "[node]\nstate_dir = \"state\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\nallow_anonymous = true\n\
         [policy]\ndir = \"policies\"\nstale_after = \"1s\"\nforget_after = \"2s\"\n"
    );
    let mut w = Warden::launch(&dir, &config, mqtt, "token_file = \"admin.token\"\n");
    w.wait_ready();
    publish(mqtt, "devices/pos-0001/telemetry", &pos_report(1, json!({})));
    wait_verdict(&w, "pos-0001", "compliant");
    let auth = format!("Bearer {ADMIN}");
    let status = |w: &Warden| {
        http_get_with(w.http, "/api/v1/devices/pos-0001", &[("Authorization", &auth)]).map(|(code, _)| code)
    };
    // Silent: stale after 1 s, then gone after 2 s.
    wait_for("pos-0001 forgotten", std::time::Duration::from_secs(15), || (status(&w)? == 404).then_some(()));
    let forgotten: Vec<Value> = entries(&dir).into_iter().filter(|e| e["kind"] == "warden.device.forgotten").collect();
    assert_eq!(forgotten.len(), 1, "one forgotten entry: {forgotten:?}");
    assert_eq!(forgotten[0]["device"], "pos-0001");
    assert_eq!(w.metric("warden_devices_forgotten_total"), 1.0);
    w.stop();

    // A restart does not bring it back from the journal or the snapshot.
    let mut w = Warden::launch(&dir, &config, mqtt, "token_file = \"admin.token\"\n");
    w.wait_ready();
    assert_eq!(status(&w), Some(404), "forgotten stays forgotten");
    // Reporting again, it is a new device like any other.
    publish(mqtt, "devices/pos-0001/telemetry", &pos_report(2, json!({})));
    wait_verdict(&w, "pos-0001", "compliant");
    w.stop();
}
