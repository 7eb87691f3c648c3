//! The WireGuard plane end to end: the real warden binary in one network
//! namespace, a real wireguard-go peer configured with `wg` in another,
//! joined by a veth pair the test creates. Nothing leaves those namespaces.
//!
//! In the gateway namespace, 10.99.0.1 (warden's TUN address) is the
//! remediation host and 10.98.0.2 (on its loopback) stands for the rest of
//! the network. Needs root (network namespaces, TUN); skips with a message
//! without it. CI runs as root.

mod common;

use common::{Warden, pos_report, require, wait_for};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const WG_PORT: u16 = 51820;
const REMEDIATION: &str = "10.99.0.1";
const ELSEWHERE: &str = "10.98.0.2";

static LABS: AtomicU32 = AtomicU32::new(0);

/// Two namespaces, a veth between them, keys, and (once started) the
/// wireguard-go peer. Everything is deleted on drop.
struct Lab {
    gw: String,
    peer: String,
    dir: PathBuf,
    wggo: Option<Child>,
    server_pub: String,
    peer_pub: String,
    /// wireguard-go's interface: unique, as its control socket lives in
    /// /var/run/wireguard, shared by every namespace.
    wg: String,
}

fn run(cmd: &[&str]) -> Output {
    Command::new(cmd[0]).args(&cmd[1..]).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &[&str]) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `None` (and a message) where namespaces cannot be made.
fn can_run() -> bool {
    let root = run(&["id", "-u"]).stdout == b"0\n";
    if !root {
        eprintln!("SKIPPED: the WireGuard tests need root (network namespaces and a TUN device); CI runs them as root");
        return false;
    }
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("SKIPPED: no /dev/net/tun on this machine");
        return false;
    }
    require("ip", "iproute2");
    require("wireguard-go", "wireguard-go");
    require("wg", "wireguard-tools");
    require("ping", "iputils-ping");
    true
}

impl Lab {
    fn new(dir: &Path) -> Self {
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let id = std::process::id() % 100_000;
        let (gw, peer) = (format!("wgt{id}g{n}"), format!("wgt{id}p{n}"));
        let (va, vb) = (format!("wv{id}a{n}"), format!("wv{id}b{n}"));
        ok(&["ip", "netns", "add", &gw]);
        ok(&["ip", "netns", "add", &peer]);
        let lab = Lab {
            gw: gw.clone(),
            peer: peer.clone(),
            dir: dir.to_path_buf(),
            wggo: None,
            server_pub: String::new(),
            peer_pub: String::new(),
            wg: format!("wg{id}x{n}"),
        };
        ok(&["ip", "link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ok(&["ip", "link", "set", &va, "netns", &gw]);
        ok(&["ip", "link", "set", &vb, "netns", &peer]);
        for (ns, dev, addr) in [(&gw, &va, "10.200.0.1/24"), (&peer, &vb, "10.200.0.2/24")] {
            ok(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            ok(&["ip", "-n", ns, "link", "set", dev, "up"]);
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        ok(&["ip", "-n", &gw, "addr", "add", &format!("{ELSEWHERE}/32"), "dev", "lo"]);
        let mut lab = lab;
        for name in ["server", "peer"] {
            let key = ok(&["wg", "genkey"]);
            std::fs::write(dir.join(format!("{name}.key")), format!("{key}\n")).unwrap();
            let public = Command::new("sh")
                .arg("-c")
                .arg(format!("wg pubkey < {}", dir.join(format!("{name}.key")).display()))
                .output()
                .unwrap();
            let public = String::from_utf8_lossy(&public.stdout).trim().to_string();
            if name == "server" {
                lab.server_pub = public;
            } else {
                lab.peer_pub = public;
            }
        }
        lab
    }

    fn config(&self, with_peer: bool) -> String {
        self.config_with(with_peer, "")
    }

    /// The config, with `extra` lines in `[wireguard]`.
    fn config_with(&self, with_peer: bool, extra: &str) -> String {
        let mut c = format!(
            "[node]\nstate_dir = \"state\"\n[mqtt]\nlisten = \"127.0.0.1:1883\"\nallow_anonymous = true\n[policy]\ndir = \"policies\"\n\
             [wireguard]\nlisten = \"10.200.0.1:{WG_PORT}\"\nprivate_key_file = \"server.key\"\n\
             interface = \"warden0\"\naddress = \"10.99.0.1/24\"\nremediation = [\"{REMEDIATION}/32\"]\n{extra}"
        );
        if with_peer {
            c.push_str(&format!(
                "[[wireguard.peers]]\ndevice_id = \"laptop-1\"\npublic_key = \"{}\"\nallowed_ips = [\"10.99.0.2/32\"]\n",
                self.peer_pub
            ));
        }
        c
    }

    fn in_ns(&self, ns: &str, cmd: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(cmd);
        run(&full)
    }

    /// wireguard-go in the peer namespace, pointed at warden.
    fn start_peer(&mut self) {
        self.start_peer_at("10.99.0.2");
    }

    /// The same, with tunnel address `address`.
    fn start_peer_at(&mut self, address: &str) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.peer, "wireguard-go", &self.wg])
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("wireguard-go.log")).unwrap())
            .spawn()
            .expect("start wireguard-go");
        self.wggo = Some(child);
        let (peer, wg) = (self.peer.clone(), self.wg.clone());
        wait_for("wireguard-go's interface", Duration::from_secs(10), || {
            self.in_ns(&peer, &["ip", "link", "show", &wg]).status.success().then_some(())
        });
        let key = self.dir.join("peer.key");
        let endpoint = format!("10.200.0.1:{WG_PORT}");
        let p = &self.peer;
        ok(&[
            "ip",
            "netns",
            "exec",
            p,
            "wg",
            "set",
            &self.wg,
            "private-key",
            key.to_str().unwrap(),
            "peer",
            &self.server_pub,
            "endpoint",
            &endpoint,
            "allowed-ips",
            "10.99.0.0/24,10.98.0.0/24",
        ]);
        let wg = self.wg.as_str();
        ok(&["ip", "-n", p, "addr", "add", &format!("{address}/32"), "dev", wg]);
        ok(&["ip", "-n", p, "link", "set", wg, "up"]);
        ok(&["ip", "-n", p, "route", "add", "10.99.0.0/24", "dev", wg]);
        ok(&["ip", "-n", p, "route", "add", "10.98.0.0/24", "dev", wg]);
    }

    /// Pings from the peer; returns (sent, received).
    fn ping(&self, args: &[&str]) -> (u32, u32) {
        let mut cmd = vec!["ping", "-n", "-q"];
        cmd.extend_from_slice(args);
        let out = self.in_ns(&self.peer, &cmd);
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.contains("transmitted")).unwrap_or_else(|| panic!("ping said: {text}"));
        let num = |word: &str| -> u32 {
            let before = line.split(word).next().unwrap_or("");
            before.split(',').next_back().unwrap().trim().parse().unwrap_or(0)
        };
        (num(" packets transmitted"), num(" received"))
    }

    /// The peer's latest handshake with warden (seconds since the epoch).
    fn latest_handshake(&self) -> u64 {
        let out = ok(&["ip", "netns", "exec", &self.peer, "wg", "show", &self.wg, "latest-handshakes"]);
        out.split_whitespace().nth(1).and_then(|t| t.parse().ok()).unwrap_or(0)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.wggo.take() {
            // SIGTERM first: wireguard-go then removes its control socket.
            let _ = run(&["kill", "-TERM", &c.id().to_string()]);
            for _ in 0..50 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = run(&["ip", "netns", "del", &self.gw]);
        let _ = run(&["ip", "netns", "del", &self.peer]);
    }
}

fn start(lab: &Lab, dir: &Path) -> Warden {
    let mut w = Warden::launch_in(Some(&lab.gw), dir, &lab.config(true), 1883, "");
    w.wait_ready();
    w
}

/// A lab with warden (one configured peer) and the wireguard-go peer up;
/// `None` where the tests cannot run here (the reason is printed).
fn connected() -> Option<(PathBuf, Lab, Warden)> {
    if !can_run() {
        return None;
    }
    let dir = Warden::workdir();
    let mut lab = Lab::new(&dir);
    let w = start(&lab, &dir);
    lab.start_peer();
    Some((dir, lab, w))
}

fn report(w: &Warden, seq: u64, encrypted: bool) {
    let r = pos_report(seq, json!({"encrypted": encrypted}));
    common::publish_in(w.netns.as_deref(), w.mqtt, "devices/laptop-1/telemetry", &r);
}

fn packets(w: &Warden, direction: &str, verdict: &str) -> f64 {
    w.metric(&format!("warden_wireguard_packets_total{{direction=\"{direction}\",verdict=\"{verdict}\"}}"))
}

#[test]
fn a_wireguard_go_peer_is_quarantined_mid_flow_and_restored() {
    let Some((_dir, lab, w)) = connected() else { return };

    // Never reported: unknown_device = quarantine → remediation only.
    let (_, got) = lab.ping(&["-c", "3", "-i", "0.2", "-W", "1", REMEDIATION]);
    assert_eq!(got, 3, "an unknown device still reaches remediation; log:\n{}", w.log_text());
    assert_eq!(lab.ping(&["-c", "2", "-i", "0.2", "-W", "1", ELSEWHERE]).1, 0, "and nothing else");
    assert!(packets(&w, "from_peer", "drop_quarantine") >= 2.0);

    // Compliant: everything, including a TCP transfer.
    report(&w, 1, true);
    w.wait_verdict("laptop-1", "compliant");
    w.wait_metric("warden_enforcement_seconds_count{plane=\"wireguard\"}", 1.0);
    assert_eq!(lab.ping(&["-c", "3", "-i", "0.2", "-W", "1", ELSEWHERE]).1, 3);
    let server = Command::new("ip")
        .args(["netns", "exec", &lab.gw, "python3", "-c"])
        .arg(format!(
            "import socket\ns=socket.socket();s.bind(('{ELSEWHERE}',5001));s.listen(1);s.settimeout(10)\n\
             c,_=s.accept();c.settimeout(10);n=0\nwhile True:\n    d=c.recv(65536)\n    if not d: break\n    n+=len(d)\nprint(n)"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    ok(&[
        "ip",
        "netns",
        "exec",
        &lab.peer,
        "python3",
        "-c",
        &format!(
            "import socket\nc=socket.create_connection(('{ELSEWHERE}',5001),timeout=10)\nc.sendall(b'x'*2097152);c.close()"
        ),
    ]);
    let received = String::from_utf8_lossy(&server.wait_with_output().unwrap().stdout).trim().to_string();
    assert_eq!(received, "2097152", "a 2 MiB TCP transfer through the tunnel");

    // Mid-flow: two pings at 100/s, one to elsewhere and one to remediation.
    // A violating report lands a second in; the first stops, the second
    // does not notice, and the peer never handshakes again.
    let handshake = lab.latest_handshake();
    let enforced = w.metric("warden_enforcement_seconds_count{plane=\"wireguard\"}");
    let spent = w.metric("warden_enforcement_seconds_sum{plane=\"wireguard\"}");
    let pings = [ELSEWHERE, REMEDIATION].map(|to| {
        let (peer, to) = (lab.peer.clone(), to.to_string());
        std::thread::spawn(move || {
            let out =
                run(&["ip", "netns", "exec", &peer, "ping", "-n", "-q", "-i", "0.01", "-c", "250", "-W", "1", &to]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    });
    std::thread::sleep(Duration::from_millis(1000));
    report(&w, 2, false);
    let [elsewhere, remediation] = pings.map(|t| t.join().unwrap());
    let received = |text: &str| -> u32 {
        let line = text.lines().find(|l| l.contains("transmitted")).unwrap();
        line.split(',').nth(1).unwrap().trim().split(' ').next().unwrap().parse().unwrap()
    };
    let (e, r) = (received(&elsewhere), received(&remediation));
    assert!(e > 20 && e < 200, "the flow to elsewhere stopped mid-way: {elsewhere}");
    assert!(r >= 245, "remediation traffic kept flowing: {remediation}");
    assert_eq!(lab.latest_handshake(), handshake, "no reconnect");
    w.wait_metric("warden_enforcement_seconds_count{plane=\"wireguard\"}", enforced + 1.0);
    let took = w.metric("warden_enforcement_seconds_sum{plane=\"wireguard\"}") - spent;
    assert!(took < 0.05, "telemetry arrival → ACL in force took {took} s");
    assert_eq!(w.device("laptop-1").unwrap()["verdict"], "noncompliant");

    // Compliant again: restored, same session.
    report(&w, 3, true);
    w.wait_metric("warden_enforcement_seconds_count{plane=\"wireguard\"}", enforced + 2.0);
    assert_eq!(lab.ping(&["-c", "3", "-i", "0.2", "-W", "1", ELSEWHERE]).1, 3, "restored");
    assert_eq!(lab.latest_handshake(), handshake, "still no reconnect");

    // Each flip is in the audit trail: quarantine → full → quarantine → full.
    let flips = wait_for("three flips in the audit trail", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(w.dir.join("state/audit/audit-1.jsonl")).ok()?;
        let flips: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["kind"] == "warden.enforcement.applied" && e["data"]["plane"] == "wireguard")
            .map(|e| format!("{}>{}", e["data"]["from"].as_str().unwrap_or(""), e["data"]["to"].as_str().unwrap_or("")))
            .collect();
        (flips.len() >= 3).then_some(flips)
    });
    assert_eq!(flips, ["quarantine>full", "full>quarantine", "quarantine>full"]);

    // A spoofed inner source (an address not in the peer's allowed IPs).
    ok(&["ip", "-n", &lab.peer, "addr", "add", "10.99.0.3/32", "dev", &lab.wg]);
    let spoofed = packets(&w, "from_peer", "drop_spoofed");
    assert_eq!(lab.ping(&["-c", "2", "-i", "0.2", "-W", "1", "-I", "10.99.0.3", REMEDIATION]).1, 0);
    assert!(packets(&w, "from_peer", "drop_spoofed") >= spoofed + 2.0);
}

/// Remediation through the WireGuard plane (issue 14): a violating report
/// quarantines the peer and brings the rule's fix command to the device's
/// agent; the agent acknowledges it, a report that passes ends the plan, and
/// the peer regains full access through the normal verdict path.
#[test]
fn a_remediated_device_regains_full_access_through_its_tunnel() {
    let Some((_dir, lab, w)) = connected() else { return };
    report(&w, 1, true);
    w.wait_verdict("laptop-1", "compliant");
    assert_eq!(lab.ping(&["-c", "3", "-i", "0.2", "-W", "1", ELSEWHERE]).1, 3);
    // The device's agent, on its command topic.
    let mut agent = Command::new("ip")
        .args(["netns", "exec", &lab.gw, "mosquitto_sub", "-h", "127.0.0.1", "-p", &w.mqtt.to_string()])
        .args(["-q", "1", "-t", "devices/laptop-1/commands", "-W", "15"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run mosquitto_sub");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(agent.stdout.take().unwrap()));
    std::thread::sleep(Duration::from_millis(300));
    report(&w, 2, false);
    let command: serde_json::Value = lines
        .by_ref()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|c| c.get("action").is_some())
        .expect("the fix command");
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(command["action"], "enable_encryption", "{command}");
    assert_eq!(lab.ping(&["-c", "2", "-i", "0.2", "-W", "1", ELSEWHERE]).1, 0, "quarantined");
    assert_eq!(lab.ping(&["-c", "3", "-i", "0.2", "-W", "1", REMEDIATION]).1, 3, "remediation still reachable");
    // The device view shows its peer, as the tunnel has it.
    let v = w.device("laptop-1").unwrap();
    let peer = v["sessions"].as_array().unwrap().iter().find(|s| s["plane"] == "wireguard").cloned();
    let peer = peer.unwrap_or_else(|| panic!("no WireGuard peer in {v}"));
    assert_eq!(peer["access"], "quarantine", "{peer}");
    assert!(peer["seconds_since_handshake"].is_u64(), "{peer}");
    let ack = json!({"id": command["id"], "status": "done"}).to_string();
    common::publish_in(w.netns.as_deref(), w.mqtt, "devices/laptop-1/acks", &ack);
    report(&w, 3, true);
    w.wait_verdict("laptop-1", "compliant");
    wait_for("full access again", Duration::from_secs(5), || {
        (lab.ping(&["-c", "1", "-W", "1", ELSEWHERE]).1 == 1).then_some(())
    });
    w.wait_metric("warden_remediation_seconds_count", 1.0);
    assert_eq!(w.metric("warden_remediation_acks_total{result=\"accepted\"}"), 1.0);
    let v = w.device("laptop-1").unwrap();
    assert!(
        v["sessions"].as_array().unwrap().iter().any(|s| s["plane"] == "wireguard" && s["access"] == "full"),
        "{v}"
    );
}

#[test]
fn garbage_gets_no_answer_and_a_removed_peer_stops_at_once() {
    let Some((dir, lab, w)) = connected() else { return };
    assert_eq!(lab.ping(&["-c", "2", "-i", "0.2", "-W", "1", REMEDIATION]).1, 2, "log:\n{}", w.log_text());

    // Random bytes, a handshake-sized message with a bad mac1, and data for
    // an index nobody has: each counted, none answered.
    let probe = format!(
        "import socket, os\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);s.settimeout(1.0)\n\
         for m in [os.urandom(100), b'\\x01\\0\\0\\0' + os.urandom(144), b'\\x04\\0\\0\\0' + os.urandom(60)]:\n\
         \x20   s.sendto(m, ('10.200.0.1', {WG_PORT}))\n\
         try:\n    s.recvfrom(2048); print('answered')\nexcept socket.timeout:\n    print('silent')"
    );
    let out = ok(&["ip", "netns", "exec", &lab.peer, "python3", "-c", &probe]);
    assert_eq!(out, "silent", "garbage got an answer");
    for reason in ["malformed", "bad_mac", "unknown_index"] {
        w.wait_metric(&format!("warden_wireguard_discarded_total{{reason=\"{reason}\"}}"), 1.0);
    }

    // The peer leaves the config; SIGHUP; its very next packets stop.
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("warden-") && p.extension().unwrap() == "toml")
        .unwrap();
    let http = std::fs::read_to_string(&file).unwrap();
    let http = &http[http.find("[http]").unwrap()..];
    std::fs::write(&file, format!("{}\n{http}", lab.config(false))).unwrap();
    w.hup();
    wait_for("the peer's removal", Duration::from_secs(10), || {
        w.log_text().contains("WireGuard peers reloaded").then_some(())
    });
    let unknown = w.metric("warden_wireguard_discarded_total{reason=\"unknown_index\"}");
    assert_eq!(lab.ping(&["-c", "2", "-i", "0.2", "-W", "1", REMEDIATION]).1, 0, "a removed peer gets nothing");
    assert!(w.metric("warden_wireguard_discarded_total{reason=\"unknown_index\"}") >= unknown + 2.0);
}

#[test]
fn a_device_that_reported_its_key_is_admitted_with_a_pool_address() {
    if !can_run() {
        return;
    }
    require("mosquitto_sub", "mosquitto-clients");
    let dir = Warden::workdir();
    let mut lab = Lab::new(&dir);
    let config = lab.config_with(false, "peer_pool = \"10.99.0.128/25\"\n");
    let mut w = Warden::launch_in(Some(&lab.gw), &dir, &config, 1883, "");
    w.wait_ready();
    // Not in the config: only its report names the key.
    let r = pos_report(1, json!({"wg_public_key": lab.peer_pub}));
    common::publish_in(w.netns.as_deref(), w.mqtt, "devices/laptop-1/telemetry", &r);
    w.wait_verdict("laptop-1", "compliant");
    // The lowest free address of the pool.
    lab.start_peer_at("10.99.0.129");
    assert_eq!(lab.ping(&["-c", "3", "-i", "0.2", "-W", "1", ELSEWHERE]).1, 3, "log:\n{}", w.log_text());
    let sub = ok(&[
        "ip",
        "netns",
        "exec",
        &lab.gw,
        "mosquitto_sub",
        "-h",
        "127.0.0.1",
        "-p",
        "1883",
        "-t",
        "devices/laptop-1/commands",
        "-C",
        "1",
        "-W",
        "5",
    ]);
    let cmd: serde_json::Value = serde_json::from_str(&sub).unwrap();
    assert_eq!(cmd["address"], "10.99.0.129/32");
    assert_eq!(cmd["server_public_key"], lab.server_pub.as_str());
    wait_for("the pool saved", Duration::from_secs(5), || {
        std::fs::read_to_string(dir.join("state/wireguard-pool.txt"))
            .ok()
            .filter(|t| t.contains("laptop-1 10.99.0.129"))
    });

    // Its verdict binds it like a configured peer.
    let r = pos_report(2, json!({"wg_public_key": lab.peer_pub, "encrypted": false}));
    common::publish_in(w.netns.as_deref(), w.mqtt, "devices/laptop-1/telemetry", &r);
    w.wait_metric("warden_enforcement_seconds_count{plane=\"wireguard\"}", 1.0);
    assert_eq!(lab.ping(&["-c", "2", "-i", "0.2", "-W", "1", ELSEWHERE]).1, 0);
    assert_eq!(lab.ping(&["-c", "2", "-i", "0.2", "-W", "1", REMEDIATION]).1, 2);
    w.stop();
}

/// A BYOD device reporting `agent`: below 3.2 it fails an `admission` rule.
fn byod_report(w: &Warden, seq: u64, agent: &str) {
    let r = json!({"seq": seq, "ts": common::ts(0), "os": "android", "groups": ["byod"], "agent_version": agent});
    common::publish_in(w.netns.as_deref(), w.mqtt, "devices/laptop-1/telemetry", &r.to_string());
}

#[test]
fn an_admission_failure_restricts_a_new_tunnel_only() {
    if !can_run() {
        return;
    }
    let dir = Warden::workdir();
    let mut lab = Lab::new(&dir);
    let w = start(&lab, &dir);
    // Compliant, then an outdated agent, all before any handshake.
    byod_report(&w, 1, "3.2.0");
    w.wait_verdict("laptop-1", "compliant");
    byod_report(&w, 2, "3.0.0");
    let d = w.wait_verdict("laptop-1", "noncompliant");
    assert_eq!(d["enforce"]["deny_admission"], true, "{d}");
    assert_eq!(d["enforce"]["quarantine"], false, "{d}");

    // The tunnel established now is an admission: remediation only.
    lab.start_peer();
    let (_, got) = lab.ping(&["-c", "3", "-i", "0.2", "-W", "1", REMEDIATION]);
    assert_eq!(got, 3, "remediation reachable; log:\n{}", w.log_text());
    assert_eq!(lab.ping(&["-c", "2", "-i", "0.2", "-W", "1", ELSEWHERE]).1, 0, "and nothing else");

    // Fixed: the running tunnel is restored.
    byod_report(&w, 3, "3.2.0");
    w.wait_verdict("laptop-1", "compliant");
    wait_for("the tunnel restored", Duration::from_secs(5), || {
        (lab.ping(&["-c", "1", "-W", "1", ELSEWHERE]).1 == 1).then_some(())
    });

    // An admission failure does not cut the tunnel that is up.
    let handshake = lab.latest_handshake();
    byod_report(&w, 4, "3.0.0");
    w.wait_verdict("laptop-1", "noncompliant");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        lab.ping(&["-c", "3", "-i", "0.2", "-W", "1", ELSEWHERE]).1,
        3,
        "a running tunnel follows `always` only"
    );
    assert_eq!(lab.latest_handshake(), handshake, "no new handshake meanwhile");
}

/// mosquitto inside the gateway's namespace (`ip netns exec` replaces
/// itself with mosquitto, so killing the child kills the broker).
fn mosquitto_in(lab: &Lab, dir: &Path, port: u16) -> std::process::Child {
    let conf = dir.join("mosquitto-wg.conf");
    std::fs::write(
        &conf,
        format!("persistence false\nset_tcp_nodelay true\nlistener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.gw, "mosquitto", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    wait_for("mosquitto in the namespace", Duration::from_secs(10), || {
        lab.in_ns(&lab.gw, &["bash", "-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
            .status
            .success()
            .then_some(())
    });
    child
}

#[test]
fn a_broker_outage_longer_than_stale_after_restricts_no_tunnel() {
    if !can_run() {
        return;
    }
    require("mosquitto", "mosquitto");
    let dir = Warden::workdir();
    let mut lab = Lab::new(&dir);
    let port = 1884;
    let mut broker = mosquitto_in(&lab, &dir, port);
    let config = lab
        .config(true)
        .replace(
            "[mqtt]\nlisten = \"127.0.0.1:1883\"\nallow_anonymous = true\n",
            &format!("[mqtt]\nbroker = \"mqtt://127.0.0.1:{port}\"\n"),
        )
        .replace("[policy]\ndir = \"policies\"\n", "[policy]\ndir = \"policies\"\nstale_after = \"3s\"\n");
    let mut w = Warden::launch_in(Some(&lab.gw), &dir, &config, port, "");
    w.wait_ready();
    lab.start_peer();
    report(&w, 1, true);
    w.wait_verdict("laptop-1", "compliant");
    wait_for("the tunnel up", Duration::from_secs(5), || {
        (lab.ping(&["-c", "1", "-W", "1", ELSEWHERE]).1 == 1).then_some(())
    });

    // The broker is gone for twice stale_after: the tunnel keeps its access.
    let _ = broker.kill();
    let _ = broker.wait();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(w.metric("warden_telemetry_source_up"), 0.0);
    assert_eq!(w.device("laptop-1").unwrap()["held"], true);
    assert_eq!(lab.ping(&["-c", "3", "-i", "0.2", "-W", "1", ELSEWHERE]).1, 3, "no restriction from silence");
    assert_eq!(packets(&w, "from_peer", "drop_quarantine"), 0.0);

    // Back: listening again, the verdict released.
    broker = mosquitto_in(&lab, &dir, port);
    wait_for("the source up again", Duration::from_secs(3), || {
        (w.metric("warden_telemetry_source_up") == 1.0).then_some(())
    });
    assert_eq!(w.device("laptop-1").unwrap()["held"], false);
    w.stop();
    let _ = broker.kill();
    let _ = broker.wait();
}
