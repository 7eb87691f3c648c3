//! 802.1X end to end: the real warden binary against `eapol_test` (Debian
//! package eapoltest, wpa_supplicant's RADIUS test client), certificates
//! from `warden certs init` and from the same PKI code for the bad cases.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

mod common;

use common::nas::TestNas;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const SECRET: &str = "a-long-shared-secret";

struct Lab {
    w: Warden,
    auth: u16,
    acct: u16,
    dir: PathBuf,
}

/// warden with `[eap]` on certificates made by `warden certs init`
/// (device certificate for pos-0001), CoA to `nas_port`, and 4 auth shards
/// (so 4 EAP workers) whatever the machine's cores.
fn start(nas_port: u16) -> Lab {
    require("eapol_test", "eapoltest");
    let dir = Warden::workdir();
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["certs", "init", "--dir"])
        .arg(dir.join("certs"))
        .args(["--device", "pos-0001"])
        .output()
        .unwrap();
    assert!(out.status.success(), "certs init: {}", String::from_utf8_lossy(&out.stderr));
    let (auth, acct, mqtt) = (free_udp_port(), free_udp_port(), free_port());
    let config = format!(
        "[node]\nstate_dir = \"state\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\nclient_id = \"warden-{auth}\"\nallow_anonymous = true\n\
         [policy]\ndir = \"policies\"\n\
         [radius]\nauth_listen = \"127.0.0.1:{auth}\"\nacct_listen = \"127.0.0.1:{acct}\"\n\
         users_file = \"users.toml\"\nworkers = 4\n\
         [[radius.clients]]\nname = \"lab-switch\"\naddress = \"127.0.0.0/8\"\nsecret = \"{SECRET}\"\n\
         coa_port = {nas_port}\ncoa_mode = \"disconnect\"\n\
         [eap]\nserver_cert = \"certs/server.pem\"\nserver_key = \"certs/server.key\"\nclient_ca = \"certs/ca.pem\"\n"
    );
    std::fs::write(dir.join("users.toml"), "[[users]]\nname = \"alice\"\npassword = \"correct horse\"\n").unwrap();
    let mut w = Warden::launch(&dir, &config, mqtt, "");
    w.wait_ready();
    Lab { w, auth, acct, dir }
}

/// The outcome of one eapol_test run: success, and its output.
fn eapol(lab: &Lab, name: &str, network: &str) -> (bool, String) {
    eapol_via(lab, lab.auth, name, network)
}

/// eapol_test against `port` (warden's, or a relay's in front of it).
fn eapol_via(lab: &Lab, port: u16, name: &str, network: &str) -> (bool, String) {
    let conf = lab.dir.join(format!("{name}.conf"));
    std::fs::write(&conf, format!("network={{\n  key_mgmt=IEEE8021X\n  eapol_flags=0\n{network}\n}}\n")).unwrap();
    let out = Command::new("eapol_test")
        .arg("-c")
        .arg(&conf)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-s", SECRET, "-r", "0", "-t", "10"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && text.lines().any(|l| l == "SUCCESS"), text)
}

fn tls(dir: &Path, tls13: bool, cert: &str, key: &str) -> String {
    let phase1 = if tls13 {
        "tls_disable_tlsv1_0=1 tls_disable_tlsv1_1=1 tls_disable_tlsv1_2=1 tls_disable_tlsv1_3=0"
    } else {
        "tls_disable_tlsv1_3=1"
    };
    format!(
        "  eap=TLS\n  identity=\"pos-0001\"\n  ca_cert=\"{}\"\n  client_cert=\"{cert}\"\n  private_key=\"{key}\"\n  phase1=\"{phase1}\"",
        dir.join("certs/ca.pem").display()
    )
}

/// The VLAN (Tunnel-Private-Group-Id) of the Access-Accept eapol_test printed.
fn vlan(output: &str) -> Option<String> {
    let mut lines = output.lines();
    lines.find(|l| l.contains("(Tunnel-Private-Group-Id)"))?;
    let hex = lines.next()?.trim().strip_prefix("Value: ")?;
    let bytes: Vec<u8> =
        (0..hex.len()).step_by(2).filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect();
    Some(String::from_utf8_lossy(&bytes[1..]).into_owned())
}

#[test]
fn eap_tls_on_tls12_and_tls13_with_keys_and_the_verdict_s_vlan() {
    let lab = start(free_udp_port());
    let (cert, key) = (lab.dir.join("certs/device.pem"), lab.dir.join("certs/device.key"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    // Unknown device: quarantine VLAN (policy.unknown_device default).
    for tls13 in [false, true] {
        let (ok, out) = eapol(&lab, "tls", &tls(&lab.dir, tls13, cert, key));
        assert!(ok, "tls13={tls13}:\n{out}\nwarden:\n{}", lab.w.log_text());
        assert!(out.contains("MPPE keys OK: 1  mismatch: 0"), "the MSK in the Accept is the supplicant's:\n{out}");
        assert!(out.contains(if tls13 { "Using TLS version TLSv1.3" } else { "Using TLS version TLSv1.2" }));
        assert_eq!(vlan(&out).as_deref(), Some("999"));
    }
    // Compliant: the compliant VLAN; rooted (critical): quarantine.
    publish(lab.w.mqtt, "devices/pos-0001/telemetry", &pos_report(1, json!({})));
    lab.w.wait_verdict("pos-0001", "compliant");
    let (ok, out) = eapol(&lab, "tls", &tls(&lab.dir, true, cert, key));
    assert!(ok && vlan(&out).as_deref() == Some("100"), "{out}");
    publish(lab.w.mqtt, "devices/pos-0001/telemetry", &pos_report(2, json!({"rooted": true})));
    lab.w.wait_verdict("pos-0001", "noncompliant");
    let (ok, out) = eapol(&lab, "tls", &tls(&lab.dir, false, cert, key));
    assert!(ok && vlan(&out).as_deref() == Some("999"), "{out}");
    assert!(lab.w.metric("warden_radius_requests_total{kind=\"eap-tls\",result=\"quarantine\"}") >= 3.0);
    assert!(lab.w.metric("warden_radius_requests_total{kind=\"eap-tls\",result=\"accept\"}") >= 1.0);
}

#[test]
fn bad_certificates_are_rejected_and_the_server_keeps_serving() {
    let lab = start(free_udp_port());
    let other = warden::certs::Ca::new("another CA").unwrap();
    let now = time::OffsetDateTime::now_utc();
    let ca_pem = std::fs::read_to_string(lab.dir.join("certs/ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(lab.dir.join("certs/ca.key")).unwrap();
    let ours = warden::certs::Ca::from_pem(&ca_pem, &ca_key).unwrap();
    let write = |name: &str, issued: warden::certs::Issued| -> (String, String) {
        let (c, k) = (lab.dir.join(format!("{name}.pem")), lab.dir.join(format!("{name}.key")));
        std::fs::write(&c, issued.cert_pem).unwrap();
        std::fs::write(&k, issued.key_pem).unwrap();
        (c.display().to_string(), k.display().to_string())
    };
    let foreign = write("foreign", other.device_now("pos-0001").unwrap());
    let expired = write(
        "expired",
        ours.device("pos-0001", now - time::Duration::days(30), now - time::Duration::days(1)).unwrap(),
    );
    for tls13 in [false, true] {
        for (what, (c, k)) in [("another CA", &foreign), ("expired", &expired)] {
            let (ok, out) = eapol(&lab, "bad", &tls(&lab.dir, tls13, c, k));
            assert!(!ok, "{what}, tls13={tls13}: accepted!\n{out}");
            assert!(out.contains("Access-Reject") || out.contains("EAP-FAILURE"), "{what}: {out}");
        }
        // No client certificate at all.
        let ca = lab.dir.join("certs/ca.pem");
        let none = format!("  eap=TLS\n  identity=\"pos-0001\"\n  ca_cert=\"{}\"", ca.display());
        let (ok, out) = eapol(&lab, "none", &none);
        assert!(!ok, "no certificate: accepted!\n{out}");
    }
    assert!(lab.w.metric("warden_eap_refusals_total{reason=\"tls_failed\"}") >= 4.0);
    // Still serving.
    let (cert, key) = (lab.dir.join("certs/device.pem"), lab.dir.join("certs/device.key"));
    let (ok, out) = eapol(&lab, "good", &tls(&lab.dir, true, cert.to_str().unwrap(), key.to_str().unwrap()));
    assert!(ok, "{out}");
}

#[test]
fn a_coa_reaches_the_nas_when_an_eap_tls_device_drifts() {
    let nas_port = free_udp_port();
    let lab = start(nas_port);
    publish(lab.w.mqtt, "devices/pos-0001/telemetry", &pos_report(1, json!({})));
    lab.w.wait_verdict("pos-0001", "compliant");
    let (cert, key) = (lab.dir.join("certs/device.pem"), lab.dir.join("certs/device.key"));
    let (ok, out) = eapol(&lab, "tls", &tls(&lab.dir, true, cert.to_str().unwrap(), key.to_str().unwrap()));
    assert!(ok, "{out}");
    // The NAS's accounting for that session names the certificate identity.
    common::nas::accounting(
        lab.acct,
        SECRET,
        "Acct-Status-Type = Start, Acct-Session-Id = \"dot1x-1\", User-Name = \"pos-0001\", NAS-IP-Address = 127.0.0.1, NAS-Port = 3",
    );
    let nas = TestNas::start(nas_port, SECRET, false);
    publish(lab.w.mqtt, "devices/pos-0001/telemetry", &pos_report(2, json!({"rooted": true})));
    let req = nas.next(Duration::from_secs(5)).expect("Disconnect-Request after the violating report");
    assert_eq!(req["code"], "Disconnect-Request", "{req}");
    assert_eq!(req["request_authenticator_ok"], true, "{req}");
    assert_eq!(req["acct_session_id"], "dot1x-1", "{req}");
}

#[test]
fn peap_mschapv2_succeeds_and_a_wrong_password_is_rejected() {
    let lab = start(free_udp_port());
    let ca = lab.dir.join("certs/ca.pem");
    let peap = |password: &str| {
        format!(
            "  eap=PEAP\n  identity=\"alice\"\n  password=\"{password}\"\n  phase2=\"auth=MSCHAPV2\"\n  ca_cert=\"{}\"",
            ca.display()
        )
    };
    let (ok, out) = eapol(&lab, "peap", &peap("correct horse"));
    assert!(ok, "{out}\nwarden:\n{}", lab.w.log_text());
    assert!(out.contains("MPPE keys OK: 1  mismatch: 0"), "{out}");
    assert_eq!(vlan(&out).as_deref(), Some("999"), "alice has no device: unknown → quarantine");
    let (ok, out) = eapol(&lab, "peap-bad", &peap("wrong horse"));
    assert!(!ok && out.contains("Access-Reject"), "a wrong password must be rejected:\n{out}");
    assert_eq!(lab.w.metric("warden_eap_refusals_total{reason=\"inner_failed\"}"), 1.0);
    assert_eq!(lab.w.metric("warden_radius_requests_total{kind=\"peap\",result=\"reject\"}"), 1.0);
    assert_eq!(lab.w.metric("warden_radius_requests_total{kind=\"peap\",result=\"quarantine\"}"), 1.0);
    // And it keeps serving.
    let (ok, out) = eapol(&lab, "peap", &peap("correct horse"));
    assert!(ok, "{out}");
}

#[test]
fn a_device_claiming_another_s_certificate_identity_is_refused_and_the_certificate_keeps_its_owner() {
    let lab = start(free_udp_port());
    let (cert, key) = (lab.dir.join("certs/device.pem"), lab.dir.join("certs/device.key"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    // tablet-7 holds the certificate identity pos-0001, and is rooted.
    let r = pos_report(1, json!({"rooted": true, "mac_addresses": ["aa:bb:cc:00:00:07"]}));
    publish(lab.w.mqtt, "devices/tablet-7/telemetry", &r);
    lab.w.wait_verdict("tablet-7", "noncompliant");
    // A compliant tablet-8 claims the same identity: refused.
    let r = pos_report(1, json!({"mac_addresses": ["aa:bb:cc:00:00:08"]}));
    publish(lab.w.mqtt, "devices/tablet-8/telemetry", &r);
    let d = lab.w.wait_verdict("tablet-8", "noncompliant");
    let failed: Vec<&str> = d["failed_rules"].as_array().unwrap().iter().map(|f| f["rule"].as_str().unwrap()).collect();
    assert_eq!(failed, ["identity-conflict"], "{d}");
    assert_eq!(d["failed_rules"][0]["severity"], "critical", "{d}");
    lab.w.wait_metric("warden_identity_conflicts_total{kind=\"cert\"}", 1.0);
    // The certificate keeps its owner's verdict: quarantine, not the claimant's.
    let (ok, out) = eapol(&lab, "tls", &tls(&lab.dir, false, cert, key));
    assert!(ok && vlan(&out).as_deref() == Some("999"), "{out}");
    // The owner fixes itself: the certificate follows it.
    publish(lab.w.mqtt, "devices/tablet-7/telemetry", &pos_report(2, json!({"mac_addresses": ["aa:bb:cc:00:00:07"]})));
    lab.w.wait_verdict("tablet-7", "compliant");
    let (ok, out) = eapol(&lab, "tls", &tls(&lab.dir, true, cert, key));
    assert!(ok && vlan(&out).as_deref() == Some("100"), "{out}");
}

/// A NAS that sends each request from the next of `ports` source ports, as
/// NASes with extended source ports do: the rounds of one conversation
/// reach warden from different addresses, so on different shards. Relays
/// answers back to the one client that uses it. Stops by itself after 60 s.
fn port_hopping_relay(warden: u16, ports: usize) -> u16 {
    use std::net::UdpSocket;
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    front.set_nonblocking(true).unwrap();
    let port = front.local_addr().unwrap().port();
    let backs: Vec<UdpSocket> = (0..ports)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    std::thread::spawn(move || {
        let (mut buf, mut next, mut client) = ([0u8; 4096], 0usize, None);
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < end {
            let mut idle = true;
            while let Ok((n, from)) = front.recv_from(&mut buf) {
                client = Some(from);
                let _ = backs[next % backs.len()].send_to(&buf[..n], ("127.0.0.1", warden));
                next += 1;
                idle = false;
            }
            for b in &backs {
                while let Ok(n) = b.recv(&mut buf) {
                    if let Some(c) = client {
                        let _ = front.send_to(&buf[..n], c);
                    }
                    idle = false;
                }
            }
            if idle {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    port
}

#[test]
fn every_round_is_answered_when_a_conversation_hops_between_shards() {
    let lab = start(free_udp_port());
    publish(lab.w.mqtt, "devices/pos-0001/telemetry", &pos_report(1, json!({})));
    lab.w.wait_verdict("pos-0001", "compliant");
    let (cert, key) = (lab.dir.join("certs/device.pem"), lab.dir.join("certs/device.key"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    // Six conversations at once, each from a NAS hopping over 8 source
    // ports: every round may reach any of the 4 shards, and each round
    // must reach the EAP worker that holds its conversation.
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..6)
            .map(|i| {
                let network = if i % 2 == 0 {
                    tls(&lab.dir, i % 4 == 0, cert, key)
                } else {
                    format!(
                        "  eap=PEAP\n  identity=\"alice\"\n  password=\"correct horse\"\n  phase2=\"auth=MSCHAPV2\"\n  ca_cert=\"{}\"",
                        lab.dir.join("certs/ca.pem").display()
                    )
                };
                let relay = port_hopping_relay(lab.auth, 8);
                let lab = &lab;
                s.spawn(move || (i, eapol_via(lab, relay, &format!("hop{i}"), &network)))
            })
            .collect();
        for run in runs {
            let (i, (ok, out)) = run.join().unwrap();
            assert!(ok, "conversation {i}:\n{out}\nwarden:\n{}", lab.w.log_text());
            if i % 2 == 0 {
                assert!(out.contains("MPPE keys OK: 1  mismatch: 0"), "{out}");
                assert_eq!(vlan(&out).as_deref(), Some("100"), "{out}");
            }
        }
    });
    assert_eq!(lab.w.metric("warden_radius_requests_total{kind=\"eap-tls\",result=\"accept\"}"), 3.0);
    assert_eq!(lab.w.metric("warden_eap_refusals_total{reason=\"unknown_state\"}"), 0.0);
    assert!(lab.w.metric("warden_radius_requests_total{kind=\"eap-tls\",result=\"challenge\"}") >= 3.0 * 4.0);
}
