//! The test NAS (tests/nas.py): an independent RADIUS CoA/Disconnect
//! listener that checks warden's authenticators; its JSON lines arrive on a
//! channel.

use super::require;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The test NAS, with its JSON lines delivered on a channel.
pub struct TestNas {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl TestNas {
    pub fn start(port: u16, secret: &str, nak_coa: bool) -> Self {
        require("python3", "python3");
        let mut cmd = Command::new("python3");
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nas.py"))
            .arg(port.to_string())
            .arg(secret)
            .args(["--seconds", "60"]);
        if nak_coa {
            cmd.arg("--nak-coa");
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("start tests/nas.py");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        let nas = Self { child, lines };
        let first = nas.next(Duration::from_secs(10)).expect("test NAS listening");
        assert_eq!(first["listening"], port);
        nas
    }

    pub fn next(&self, limit: Duration) -> Option<Value> {
        self.lines.recv_timeout(limit).ok()
    }
}

impl Drop for TestNas {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one Accounting-Request with `attributes` (radclient syntax) to
/// warden's accounting port, as a NAS would, and checks it is answered.
pub fn accounting(acct: u16, secret: &str, attributes: &str) {
    require("radclient", "freeradius-utils");
    let mut child = Command::new("radclient")
        .args(["-r", "1", "-t", "2", &format!("127.0.0.1:{acct}"), "acct", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), attributes.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Accounting-Response"), "accounting answered");
}

/// Runs radclient once (one try, 2 s timeout) against warden's `port`:
/// (answered, output).
pub fn radclient(port: u16, kind: &str, secret: &str, attrs: &str) -> (bool, String) {
    require("radclient", "freeradius-utils");
    let mut child = Command::new("radclient")
        .args(["-x", "-r", "1", "-t", "2", &format!("127.0.0.1:{port}"), kind, secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run radclient");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), attrs.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (text.contains("Received "), text)
}

/// MAC Authentication Bypass for `mac`, as a switch sends it; the answer.
pub fn mab(auth: u16, secret: &str, mac: &str) -> String {
    let (answered, out) = radclient(
        auth,
        "auth",
        secret,
        &format!(
            "User-Name = \"{mac}\", User-Password = \"{mac}\", Calling-Station-Id = \"{mac}\", Service-Type = Call-Check, Message-Authenticator = 0x00"
        ),
    );
    assert!(answered, "no answer: {out}");
    out
}

/// The VLAN (Tunnel-Private-Group-Id) radclient printed; every answer must be signed.
pub fn vlan(out: &str) -> Option<String> {
    assert!(out.contains("Message-Authenticator = 0x"), "every answer is signed: {out}");
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Tunnel-Private-Group-Id:0 = ").map(|v| v.trim_matches('"').to_string()))
}

/// The Filter-Id radclient printed.
pub fn filter_id(out: &str) -> Option<String> {
    out.lines().find_map(|l| l.trim().strip_prefix("Filter-Id = ").map(|v| v.trim_matches('"').to_string()))
}

/// warden's RADIUS ports.
pub struct Ports {
    pub auth: u16,
    pub acct: u16,
}

/// A config (every table but `[http]`) with RADIUS for a test NAS on
/// loopback (client `lab-switch`, `secret`) whose CoA port is `nas_port`.
/// `broker` is the `[mqtt]` broker line, `mqtt` its port; `policy` adds
/// `[policy]` lines.
pub fn radius_config(
    broker: &str,
    mqtt: u16,
    policy: &str,
    secret: &str,
    nas_port: u16,
    coa_mode: &str,
) -> (String, Ports) {
    let (auth, acct) = (super::free_udp_port(), super::free_udp_port());
    let anonymous = if broker.contains("mqtt://") { "" } else { "allow_anonymous = true\n" };
    let config = format!(
        "[node]\nstate_dir = \"state\"\n[mqtt]\n{broker}\nlisten = \"127.0.0.1:{mqtt}\"\nclient_id = \"warden-{auth}\"\n{anonymous}\
         [policy]\ndir = \"policies\"\n{policy}\
         [radius]\nauth_listen = \"127.0.0.1:{auth}\"\nacct_listen = \"127.0.0.1:{acct}\"\n\
         [[radius.clients]]\nname = \"lab-switch\"\naddress = \"127.0.0.0/8\"\nsecret = \"{secret}\"\n\
         coa_port = {nas_port}\ncoa_mode = \"{coa_mode}\"\n"
    );
    (config, Ports { auth, acct })
}
