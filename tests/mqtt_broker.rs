//! warden against an external mosquitto as operators run one: over TLS with
//! a client certificate and a password, and across a broker restart.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A throwaway CA, a server certificate for 127.0.0.1 and a client
/// certificate, made with the openssl command line.
fn pki(dir: &Path) {
    require("openssl", "openssl");
    let sh = |script: &str| {
        let out = Command::new("sh").arg("-ec").arg(script).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=test-ca \
           -keyout ca.key -out ca.pem -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null");
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), format!("basicConstraints=CA:FALSE\n{ext}\n")).unwrap();
        sh(&format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN={name} -keyout {name}.key -out {name}.csr 2>/dev/null && \
             openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile {name}.ext -out {name}.pem 2>/dev/null"
        ));
    }
}

#[test]
fn mqtts_with_client_certificate_and_password() {
    let dir = Warden::workdir();
    pki(&dir);
    require("mosquitto_passwd", "mosquitto");
    let ok = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(dir.join("passwd"))
        .args(["warden", "broker-pass-123"])
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::write(dir.join("mqtt.password"), "broker-pass-123\n").unwrap();
    let d = dir.display();
    let tls_port = free_port();
    // TLS with client certificates required, and a password; a second,
    // plain listener is for mosquitto_pub playing the device.
    let plain = free_port();
    // mosquitto drops root for its own user: let it read its key.
    std::fs::set_permissions(dir.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let broker = Mosquitto::start_with(
        &dir,
        tls_port,
        "per_listener_settings true\n",
        &format!(
            "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nrequire_certificate true\n\
             allow_anonymous false\npassword_file {d}/passwd\n\
             listener {plain} 127.0.0.1\nallow_anonymous true\n"
        ),
    );
    let config = format!(
        "[node]\nstate_dir = \"state\"\n[mqtt]\nbroker = \"mqtts://127.0.0.1:{tls_port}\"\n\
         client_id = \"warden-tls-{plain}\"\nca_file = \"ca.pem\"\ncert_file = \"client.pem\"\n\
         key_file = \"client.key\"\nusername = \"warden\"\npassword_file = \"mqtt.password\"\n\
         [policy]\ndir = \"policies\"\n"
    );
    let mut w = Warden::launch(&dir, &config, broker.port, "");
    w.wait_ready();
    publish(plain, "devices/pos-0001/telemetry", &pos_report(1, json!({"rooted": true})));
    let d = w.wait_verdict("pos-0001", "noncompliant");
    assert_eq!(d["failed_rules"][0]["rule"], "not-rooted");
    assert!(!w.log_text().contains("broker-pass-123"), "the password is never logged");

    // Without the client certificate the broker refuses warden: never ready,
    // and the log says why.
    let config = config.replace("cert_file = \"client.pem\"\nkey_file = \"client.key\"\n", "");
    let refused = Warden::launch(&dir, &config, broker.port, "");
    std::thread::sleep(Duration::from_secs(2));
    let (code, _) = http_get(refused.http, "/readyz").expect("HTTP answers while MQTT is down");
    assert_eq!(code, 503, "no client certificate: the telemetry plane must not be ready");
    assert!(refused.log_text().contains("MQTT connection lost"), "{}", refused.log_text());
}

#[test]
fn reconnects_and_resubscribes_after_a_broker_restart() {
    let dir = Warden::workdir();
    let mut broker = Mosquitto::start(&dir);
    let w = Warden::start(&dir, &Setup::external(broker.port));
    publish(broker.port, "devices/pos-0001/telemetry", &pos_report(1, json!({})));
    w.wait_verdict("pos-0001", "compliant");

    // The broker dies and comes back empty (no persistence): warden must
    // reconnect and subscribe again on its own.
    broker.kill();
    wait_for("readyz to drop", Duration::from_secs(10), || {
        http_get(w.http, "/readyz").filter(|(c, _)| *c == 503).map(|_| ())
    });
    assert_eq!(w.metric("warden_mqtt_connected"), 0.0);
    broker.restart();
    wait_for("readyz to recover", Duration::from_secs(40), || {
        http_get(w.http, "/readyz").filter(|(c, _)| *c == 200).map(|_| ())
    });
    publish(broker.port, "devices/pos-0001/telemetry", &pos_report(2, json!({"encrypted": false})));
    w.wait_verdict("pos-0001", "noncompliant");
    assert!(w.metric("warden_mqtt_connections_total{event=\"connected\"}") >= 2.0);
    assert!(w.metric("warden_mqtt_connections_total{event=\"lost\"}") >= 1.0);
}
