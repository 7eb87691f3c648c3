//! Overrides as an administrator uses them (issue 14): `warden device
//! exempt | quarantine | clear` against the real binary, with named API
//! tokens and roles; the RADIUS answer (MAB through `radclient`) follows at
//! once, an override expires by itself, and survives a `kill -9`.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

mod common;

use common::nas::{mab, vlan};
use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SECRET: &str = "a-long-shared-secret";
const ADMIN: &str = "alice-admin-token-0123456789";
const READER: &str = "grafana-read-token-0123456789";

fn sha256_hex(t: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, t.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn setup(dir: &Path) -> (String, u16, u16) {
    std::fs::write(
        dir.join("tokens.toml"),
        format!(
            "[[tokens]]\nname = \"alice\"\nrole = \"admin\"\nsha256 = \"{}\"\n\
             [[tokens]]\nname = \"grafana\"\nrole = \"read\"\nsha256 = \"{}\"\n",
            sha256_hex(ADMIN),
            sha256_hex(READER)
        ),
    )
    .unwrap();
    std::fs::write(dir.join("admin.token"), ADMIN).unwrap();
    std::fs::write(dir.join("read.token"), READER).unwrap();
    let (auth, acct, mqtt) = (free_udp_port(), free_udp_port(), free_port());
    let config = format!(
        "[node]\nstate_dir = \"state\"\nsnapshot_every = \"1h\"\n\
         [mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\nallow_anonymous = true\n\
         [policy]\ndir = \"policies\"\n\
         [radius]\nauth_listen = \"127.0.0.1:{auth}\"\nacct_listen = \"127.0.0.1:{acct}\"\n\
         [[radius.clients]]\nname = \"lab-switch\"\naddress = \"127.0.0.0/8\"\nsecret = \"{SECRET}\"\n"
    );
    (config, mqtt, auth)
}

/// `warden device ARGS` against `w`'s API with the token in `token_file`.
fn device(w: &Warden, dir: &Path, token_file: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("device")
        .args(args)
        .args(["--api", &format!("http://127.0.0.1:{}", w.http)])
        .arg("--token-file")
        .arg(dir.join(token_file))
        .output()
        .unwrap()
}

fn view(w: &Warden, id: &str) -> Value {
    let auth = format!("Bearer {READER}");
    let (code, body) = http_get_with(w.http, &format!("/api/v1/devices/{id}"), &[("Authorization", &auth)]).unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn wait_verdict(w: &Warden, id: &str, verdict: &str) {
    wait_for(&format!("{id} {verdict}"), Duration::from_secs(10), || {
        let auth = format!("Bearer {READER}");
        let (code, body) = http_get_with(w.http, &format!("/api/v1/devices/{id}"), &[("Authorization", &auth)])?;
        (code == 200 && serde_json::from_str::<Value>(&body).ok()?["verdict"] == verdict).then_some(())
    });
}

fn report(seq: u64, mac: &str, rooted: bool) -> String {
    pos_report(seq, json!({"rooted": rooted, "mac_addresses": [mac], "cert_identity": mac}))
}

#[test]
fn an_exemption_lifts_a_quarantine_at_once_and_expires_by_itself() {
    let dir = Warden::workdir();
    let (config, mqtt, auth) = setup(&dir);
    let mut w = Warden::launch(&dir, &config, mqtt, "tokens_file = \"tokens.toml\"\n");
    w.wait_ready();
    publish(mqtt, "devices/pos-0001/telemetry", &report(1, "AA-BB-CC-00-00-01", true));
    wait_verdict(&w, "pos-0001", "noncompliant");
    assert_eq!(vlan(&mab(auth, SECRET, "AA-BB-CC-00-00-01")).as_deref(), Some("999"));

    // A read token may look, not write; no token may not even look.
    let out = device(&w, &dir, "read.token", &["exempt", "pos-0001", "--for", "3s", "--reason", "repair 42"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(http_get(w.http, "/api/v1/devices/pos-0001").unwrap().0, 401);

    // The admin exempts it: the next admission is into the compliant VLAN.
    let out = device(&w, &dir, "admin.token", &["exempt", "pos-0001", "--for", "3s", "--reason", "repair ticket 42"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let set_at = Instant::now();
    assert_eq!(vlan(&mab(auth, SECRET, "AA-BB-CC-00-00-01")).as_deref(), Some("100"), "lifted at once");
    let v = view(&w, "pos-0001");
    assert_eq!(v["verdict"], "noncompliant", "the verdict stays the reports': {v}");
    assert_eq!(v["override"]["mode"], "exempt");
    assert_eq!(v["override"]["by"], "alice", "the token's name is the actor");
    assert_eq!(v["override"]["reason"], "repair ticket 42");

    // Bad requests are refused with a reason.
    let out = device(&w, &dir, "admin.token", &["exempt", "pos-0001", "--for", "0s", "--reason", "x"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("duration"));
    let out = device(&w, &dir, "admin.token", &["exempt", "never-seen", "--for", "1h", "--reason", "x"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("404"));

    // It expires by itself: quarantined again, with nothing sent.
    wait_for("the exemption to expire", Duration::from_secs(10), || {
        view(&w, "pos-0001")["override"].is_null().then_some(())
    });
    assert!(set_at.elapsed() >= Duration::from_millis(2900), "not before its time");
    assert_eq!(vlan(&mab(auth, SECRET, "AA-BB-CC-00-00-01")).as_deref(), Some("999"));
    assert!(w.log_text().contains("override expired"));
    w.stop();
    // And the trail says so, with whose it was and why.
    let text = std::fs::read_to_string(dir.join("state/audit/audit-1.jsonl")).unwrap();
    let expired: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["kind"] == "warden.override.expired")
        .collect();
    assert_eq!(expired.len(), 1, "{text}");
    assert_eq!(
        (expired[0]["device"].as_str(), expired[0]["data"]["mode"].as_str()),
        (Some("pos-0001"), Some("exempt"))
    );
}

#[test]
fn a_quarantine_override_survives_kill_9_and_clear_ends_it() {
    let dir = Warden::workdir();
    let (config, mqtt, auth) = setup(&dir);
    let mut w = Warden::launch(&dir, &config, mqtt, "tokens_file = \"tokens.toml\"\n");
    w.wait_ready();
    publish(mqtt, "devices/pos-0002/telemetry", &report(1, "AA-BB-CC-00-00-02", false));
    wait_verdict(&w, "pos-0002", "compliant");
    assert_eq!(vlan(&mab(auth, SECRET, "AA-BB-CC-00-00-02")).as_deref(), Some("100"));
    let out =
        device(&w, &dir, "admin.token", &["quarantine", "pos-0002", "--for", "1h", "--reason", "reported stolen"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(vlan(&mab(auth, SECRET, "AA-BB-CC-00-00-02")).as_deref(), Some("999"));
    // A passing report does not lift it.
    publish(mqtt, "devices/pos-0002/telemetry", &report(2, "AA-BB-CC-00-00-02", false));
    wait_for("report 2", Duration::from_secs(10), || (view(&w, "pos-0002")["seq"] == 2).then_some(()));
    assert_eq!(vlan(&mab(auth, SECRET, "AA-BB-CC-00-00-02")).as_deref(), Some("999"));

    // Acknowledged means durable: a kill -9 right after keeps it.
    w.kill();
    let mut w = Warden::launch(&dir, &config, mqtt, "tokens_file = \"tokens.toml\"\n");
    w.wait_ready();
    assert_eq!(view(&w, "pos-0002")["override"]["reason"], "reported stolen");
    assert_eq!(vlan(&mab(auth, SECRET, "AA-BB-CC-00-00-02")).as_deref(), Some("999"));

    let out = device(&w, &dir, "admin.token", &["clear", "pos-0002"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(view(&w, "pos-0002")["override"].is_null());
    assert_eq!(vlan(&mab(auth, SECRET, "AA-BB-CC-00-00-02")).as_deref(), Some("100"));
    w.kill();
    let w = Warden::launch(&dir, &config, mqtt, "tokens_file = \"tokens.toml\"\n");
    wait_for("the restarted warden", Duration::from_secs(20), || {
        http_get_with(w.http, "/api/v1/devices/pos-0002", &[("Authorization", &format!("Bearer {READER}"))])
            .filter(|(c, _)| *c == 200)
    });
    assert!(view(&w, "pos-0002")["override"].is_null(), "the clearing was durable too");
}
