//! The embedded broker as devices meet it (issue 12): logins by password
//! and by client certificate, each device confined to its own topics,
//! anonymous clients refused unless allowed, MQTT conformance where
//! rumqttd failed, and a burst of 30,000 new devices with nothing lost.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn config(mqtt: u16, extra: &str) -> String {
    format!(
        "[node]\nname = \"test\"\nstate_dir = \"state\"\n\
         [mqtt]\nbroker = \"embedded\"\nlisten = \"127.0.0.1:{mqtt}\"\n{extra}\
         [policy]\ndir = \"policies\"\nstale_after = \"15m\"\n"
    )
}

/// Runs `mosquitto_pub` (QoS 1, MQTT 3.1.1) with `args`, the payload on stdin.
fn mosquitto_pub(port: u16, args: &[&str], payload: &str) -> Output {
    require("mosquitto_pub", "mosquitto-clients");
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(payload.as_bytes())?;
            c.wait_with_output()
        })
        .expect("run mosquitto_pub")
}

/// A passing POS report of device number `n` with its own identities
/// (the shipped example's would collide across devices); `patch` edits it.
fn report(n: u64, seq: u64, patch: serde_json::Value) -> String {
    let mut r: serde_json::Value = serde_json::from_str(&pos_report(seq, patch)).unwrap();
    r["mac_addresses"] = json!([format!("02:00:00:{:02x}:{:02x}:{:02x}", n >> 16, (n >> 8) & 0xff, n & 0xff)]);
    r["cert_identity"] = json!(format!("device-{n}"));
    r.to_string()
}

fn users(dir: &Path) {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"warden-test-salt").unwrap();
    let phc = argon2::Argon2::default().hash_password(b"pw-nine", &salt).unwrap().to_string();
    std::fs::write(
        dir.join("mqtt-users.toml"),
        format!(
            "[[users]]\nname = \"pos-0001\"\npassword = \"pw-one\"\n\
             [[users]]\nname = \"agent-7\"\npassword = \"pw-seven\"\ndevice_id = \"pos-0007\"\n\
             [[users]]\nname = \"pos-0009\"\nargon2 = \"{phc}\"\n"
        ),
    )
    .unwrap();
}

#[test]
fn devices_log_in_and_act_only_for_themselves() {
    let dir = Warden::workdir();
    users(&dir);
    let certs = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["certs", "init", "--device", "pos-0003", "--dir"])
        .arg(dir.join("certs"))
        .output()
        .unwrap();
    assert!(certs.status.success(), "{}", String::from_utf8_lossy(&certs.stderr));
    let (mqtt, mqtts) = (free_port(), free_port());
    let tls = format!(
        "credentials_file = \"mqtt-users.toml\"\ntls_listen = \"127.0.0.1:{mqtts}\"\n\
         server_cert = \"certs/server.pem\"\nserver_key = \"certs/server.key\"\nclient_ca = \"certs/ca.pem\"\n"
    );
    let mut w = Warden::launch(&dir, &config(mqtt, &tls), mqtt, "");
    w.wait_ready();
    let refusals = |reason: &str| w.metric(&format!("warden_broker_refusals_total{{reason=\"{reason}\"}}"));

    // A password login publishes its own report.
    let out = mosquitto_pub(
        mqtt,
        &["-u", "pos-0001", "-P", "pw-one", "-t", "devices/pos-0001/telemetry"],
        &report(1, 1, json!({})),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    w.wait_verdict("pos-0001", "compliant");
    // A user acting for another device id publishes as that device.
    let out = mosquitto_pub(
        mqtt,
        &["-u", "agent-7", "-P", "pw-seven", "-t", "devices/pos-0007/telemetry"],
        &report(7, 1, json!({})),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    w.wait_verdict("pos-0007", "compliant");

    // An argon2 login (checked off the broker's threads, a few at a time).
    let out = mosquitto_pub(
        mqtt,
        &["-u", "pos-0009", "-P", "pw-nine", "-t", "devices/pos-0009/telemetry"],
        &report(9, 1, json!({})),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    w.wait_verdict("pos-0009", "compliant");

    // Valid credentials, another device's topic: refused, nothing applied.
    let forged = report(1, 2, json!({"rooted": true}));
    let _ = mosquitto_pub(mqtt, &["-u", "pos-0001", "-P", "pw-one", "-t", "devices/pos-0007/telemetry"], &forged);
    let _ = mosquitto_pub(mqtt, &["-u", "agent-7", "-P", "pw-seven", "-t", "devices/pos-0001/telemetry"], &forged);
    w.wait_metric("warden_broker_refusals_total{reason=\"publish\"}", 2.0);
    // MQTT 5 says why: the PUBACK carries "not authorized" and a reason.
    let out = mosquitto_pub(
        mqtt,
        &["-V", "mqttv5", "-u", "pos-0001", "-P", "pw-one", "-t", "devices/pos-0007/telemetry"],
        &forged,
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Not authorized") && said.contains("not this client's topic"), "{said}");
    w.wait_metric("warden_broker_refusals_total{reason=\"publish\"}", 3.0);
    assert_eq!(w.device("pos-0007").unwrap()["verdict"], "compliant");
    assert_eq!(w.device("pos-0001").unwrap()["verdict"], "compliant");
    assert_eq!(w.device("pos-0001").unwrap()["seq"], 1);

    // A wrong password and no credentials at all: the CONNACK refuses.
    let out = mosquitto_pub(mqtt, &["-u", "pos-0001", "-P", "wrong", "-t", "devices/pos-0001/telemetry"], &forged);
    assert!(!out.status.success(), "a wrong password is refused");
    let out = mosquitto_pub(mqtt, &["-t", "devices/pos-0001/telemetry"], &forged);
    assert!(!out.status.success(), "anonymous is refused when not allowed");
    let out = mosquitto_pub(mqtt, &["-u", "pos-0009", "-P", "pw-NINE", "-t", "devices/pos-0009/telemetry"], &forged);
    assert!(!out.status.success(), "a wrong argon2 password is refused");
    let out = mosquitto_pub(mqtt, &["-u", "$warden", "-P", "guess", "-t", "devices/pos-0001/telemetry"], &forged);
    assert!(!out.status.success(), "warden's own user name needs its password");
    assert_eq!(refusals("credentials"), 3.0);
    assert_eq!(refusals("anonymous"), 1.0);

    // A device may not listen to another device's commands.
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &mqtt.to_string(), "-u", "pos-0001", "-P", "pw-one"])
        .args(["-t", "devices/pos-0007/commands", "-W", "2", "-C", "1"])
        .output()
        .unwrap();
    assert!(!sub.status.success() || String::from_utf8_lossy(&sub.stderr).contains("denied"));
    w.wait_metric("warden_broker_refusals_total{reason=\"subscribe\"}", 1.0);

    // mqtts: the device certificate of `warden certs init` names pos-0003.
    let c = dir.join("certs");
    let tls_args = |topic: &'static str| {
        vec![
            "--cafile".to_string(),
            c.join("ca.pem").display().to_string(),
            "--cert".to_string(),
            c.join("device.pem").display().to_string(),
            "--key".to_string(),
            c.join("device.key").display().to_string(),
            // The dev server certificate names radius.warden.test, not 127.0.0.1.
            "--insecure".to_string(),
            "-t".to_string(),
            topic.to_string(),
        ]
    };
    let args = tls_args("devices/pos-0003/telemetry");
    let out = mosquitto_pub(mqtts, &args.iter().map(String::as_str).collect::<Vec<_>>(), &report(3, 1, json!({})));
    assert!(out.status.success(), "mqtts with a device certificate: {}", String::from_utf8_lossy(&out.stderr));
    w.wait_verdict("pos-0003", "compliant");
    let args = tls_args("devices/pos-0001/telemetry");
    let _ = mosquitto_pub(mqtts, &args.iter().map(String::as_str).collect::<Vec<_>>(), &forged);
    w.wait_metric("warden_broker_refusals_total{reason=\"publish\"}", 4.0);
    assert_eq!(w.device("pos-0001").unwrap()["seq"], 1, "the certificate names pos-0003 only");
    // Without a client certificate the TLS handshake fails.
    let out = mosquitto_pub(
        mqtts,
        &["--cafile", &c.join("ca.pem").display().to_string(), "--insecure", "-t", "devices/pos-0003/telemetry"],
        &forged,
    );
    assert!(!out.status.success(), "mqtts without a client certificate is refused");
    let log = w.log_text();
    assert!(log.contains("refused a publish outside the client's own topics"), "{log}");
}

/// An MQTT 3.1.1 CONNECT with `keep_alive` and a client id.
fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
    body.extend(keep_alive.to_be_bytes());
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

/// Reads until `n` bytes, end of stream, or `limit`; returns what came.
fn read_some(s: &mut TcpStream, n: usize, limit: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let (mut got, end) = (Vec::new(), Instant::now() + limit);
    let mut buf = [0u8; 64];
    while got.len() < n && Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

/// Where rumqttd failed MQTT 3.1.1: keep-alive 0 means "off" and gets a
/// CONNACK; a PUBLISH to a wildcard topic is a protocol error that closes
/// the connection, unacknowledged and unapplied.
#[test]
fn keep_alive_zero_is_accepted_and_a_wildcard_publish_is_refused() {
    let dir = Warden::workdir();
    let mqtt = free_port();
    let mut w = Warden::launch(&dir, &config(mqtt, "allow_anonymous = true\n"), mqtt, "");
    w.wait_ready();
    let mut s = TcpStream::connect(("127.0.0.1", mqtt)).unwrap();
    s.write_all(&connect_packet("keepalive-zero", 0)).unwrap();
    let (connack, _) = read_some(&mut s, 4, Duration::from_secs(5));
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted for keep-alive 0");

    let topic = b"devices/+/telemetry";
    let payload = report(1, 1, json!({}));
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend(topic);
    body.extend(7u16.to_be_bytes());
    body.extend(payload.as_bytes());
    let mut publish = vec![0x32];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        publish.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    publish.extend(body);
    s.write_all(&publish).unwrap();
    let (answer, closed) = read_some(&mut s, 4, Duration::from_secs(5));
    assert!(closed, "the connection is closed after a wildcard PUBLISH (got {answer:?})");
    assert!(!answer.starts_with(&[0x40]), "no PUBACK for a wildcard PUBLISH: {answer:?}");
    assert_eq!(w.metric("warden_telemetry_messages_total{result=\"accepted\"}"), 0.0);
    assert_eq!(w.metric("warden_telemetry_messages_total{result=\"bad_topic\"}"), 0.0, "it never reached warden");
}

/// 30,000 new devices publish one QoS 1 report each in a burst, over 100
/// connections (the embedded broker takes one report per connection at a
/// time, acknowledged once durable, so a fleet's own connections are its
/// parallelism): every PUBACK is a report applied, and all are known.
#[test]
fn a_burst_of_30000_new_devices_through_the_embedded_broker_is_all_known() {
    const BURST: u64 = 30_000;
    const CONNECTIONS: u64 = 100;
    let dir = Warden::workdir();
    let mqtt = free_port();
    let mut w = Warden::launch(&dir, &config(mqtt, "allow_anonymous = true\n"), mqtt, "");
    w.wait_ready();
    let started = Instant::now();
    let publishers: Vec<_> = (0..CONNECTIONS)
        .map(|p| {
            std::thread::spawn(move || {
                use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
                let mut opts = MqttOptions::new(format!("burst-{p}"), "127.0.0.1", mqtt);
                opts.set_keep_alive(Duration::from_secs(30)).set_inflight(100);
                let (client, mut connection) = Client::new(opts, 400);
                let mine: Vec<u64> = (p..BURST).step_by(CONNECTIONS as usize).collect();
                let expected = mine.len();
                let sender = std::thread::spawn(move || {
                    for &device in &mine {
                        let topic = format!("devices/burst-{device:05}/telemetry");
                        client.publish(topic, QoS::AtLeastOnce, false, report(device, 1, json!({}))).unwrap();
                    }
                    client
                });
                let mut acked = 0;
                for event in connection.iter() {
                    if let Ok(Event::Incoming(Packet::PubAck(_))) = event {
                        acked += 1;
                        if acked == expected {
                            break;
                        }
                    }
                    event.expect("publisher connection");
                }
                drop(sender.join());
                acked
            })
        })
        .collect();
    let acked: usize = publishers.into_iter().map(|p| p.join().unwrap()).sum();
    let took = started.elapsed();
    assert_eq!(acked as u64, BURST);
    // Acknowledged means applied: no waiting needed.
    let known: f64 = ["compliant", "noncompliant", "unknown"]
        .iter()
        .map(|v| w.metric(&format!("warden_devices{{verdict=\"{v}\"}}")))
        .sum();
    assert_eq!(known, BURST as f64, "every device of the burst is known once its PUBACK is in");
    assert_eq!(w.metric("warden_telemetry_messages_total{result=\"accepted\"}"), BURST as f64);
    assert_eq!(w.metric("warden_broker_dropped_total"), 0.0);
    eprintln!("30,000 new devices, one QoS 1 report each, all acknowledged in {took:?}");
}

/// The embedded broker's retained verdicts die with the process: at start
/// warden publishes every device's current verdict again, so a consumer
/// subscribing after a `kill -9` and restart still finds each one.
#[test]
fn retained_verdicts_are_back_after_a_restart() {
    let dir = Warden::workdir();
    let mqtt = free_port();
    let config = config(mqtt, "allow_anonymous = true\n");
    let mut w = Warden::launch(&dir, &config, mqtt, "");
    w.wait_ready();
    publish(mqtt, "devices/keep-1/telemetry", &report(1, 1, json!({})));
    publish(mqtt, "devices/keep-2/telemetry", &report(2, 1, json!({"rooted": true})));
    w.wait_verdict("keep-1", "compliant");
    w.wait_verdict("keep-2", "noncompliant");
    w.kill();
    let mut w = Warden::launch(&dir, &config, mqtt, "");
    w.wait_ready();
    // Retained ones, or (subscribed while the restart republishes) live
    // ones: listen a while and take each device's latest.
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &mqtt.to_string(), "-t", "warden/compliance/+", "-v", "-W", "3"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&sub.stdout);
    let verdict = |id: &str| {
        let line = text
            .lines()
            .rfind(|l| l.starts_with(&format!("warden/compliance/{id} ")))
            .unwrap_or_else(|| panic!("no verdict for {id} after the restart: {text}"));
        let v: serde_json::Value = serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
        (v["verdict"].as_str().unwrap().to_string(), v["cause"].as_str().unwrap().to_string())
    };
    assert_eq!(verdict("keep-1"), ("compliant".into(), "restart".into()));
    // keep-2's rooted rule resumes its remediation at start, which may move
    // it into a remediation group after its verdict was restated: then the
    // newer status (cause `remediation`) is the retained one, as it should.
    let (v, cause) = verdict("keep-2");
    assert_eq!(v, "noncompliant");
    assert!(cause == "restart" || cause == "remediation", "{cause}");
    w.stop();
}
