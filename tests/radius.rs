//! The RADIUS plane end to end: the real warden binary answering the real
//! `radclient` (freeradius-utils), with verdicts fed over MQTT; raw UDP
//! sockets for retransmissions, unknown sources and garbage.

mod common;

use common::nas::{radclient, vlan};
use common::*;
use serde_json::json;
use std::net::UdpSocket;
use std::time::Duration;
use warden::radius::{AttrType, Builder, Code, Packet};

const SECRET: &str = "a-long-shared-secret";

struct Nas {
    auth: u16,
    acct: u16,
}

/// warden with MQTT (embedded) and RADIUS for clients in `clients_cidr`, on
/// 4 auth shards whatever the machine's cores.
fn start(dir: &std::path::Path, clients_cidr: &str, noncompliant: &str) -> (Warden, Nas) {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"warden-test-salt").unwrap();
    let phc = argon2::Argon2::default().hash_password(b"battery staple", &salt).unwrap().to_string();
    std::fs::write(
        dir.join("users.toml"),
        format!(
            "[[users]]\nname = \"alice\"\npassword = \"correct horse\"\ndevice_id = \"pos-0001\"\n\
             [[users]]\nname = \"bob\"\nnt_hash = \"44ebba8d5312b8d611474411f56989ae\"\n\
             [[users]]\nname = \"carol\"\nargon2 = \"{phc}\"\n"
        ),
    )
    .unwrap();
    let (auth, acct, mqtt) = (free_udp_port(), free_udp_port(), free_port());
    let config = format!(
        "[node]\nstate_dir = \"state\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\nclient_id = \"warden-{auth}\"\nallow_anonymous = true\n\
         [policy]\ndir = \"policies\"\n\
         [radius]\nauth_listen = \"127.0.0.1:{auth}\"\nacct_listen = \"127.0.0.1:{acct}\"\nusers_file = \"users.toml\"\n\
         noncompliant = \"{noncompliant}\"\nworkers = 4\n\
         [[radius.clients]]\nname = \"lab-switch\"\naddress = \"{clients_cidr}\"\nsecret = \"{SECRET}\"\n"
    );
    let mut w = Warden::launch(dir, &config, mqtt, "");
    w.wait_ready();
    (w, Nas { auth, acct })
}

fn pap(nas: &Nas, user: &str, password: &str) -> String {
    let (answered, out) = radclient(
        nas.auth,
        "auth",
        SECRET,
        &format!("User-Name = \"{user}\", User-Password = \"{password}\", Message-Authenticator = 0x00"),
    );
    assert!(answered, "no answer: {out}");
    out
}

fn mab(nas: &Nas, mac: &str) -> String {
    common::nas::mab(nas.auth, SECRET, mac)
}

#[test]
fn pap_and_mab_follow_the_verdict() {
    let dir = Warden::workdir();
    let (w, nas) = start(&dir, "127.0.0.0/8", "quarantine");
    // Ready means every configured plane: here telemetry and RADIUS.
    let (code, body) = w.get("/readyz").unwrap();
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(ready["planes"], json!({"telemetry": true, "radius": true}), "{body}");

    // Nothing reported yet: unknown devices are quarantined (the default).
    let out = mab(&nas, "AA-BB-CC-00-00-01");
    assert!(out.contains("Received Access-Accept"), "{out}");
    assert_eq!(vlan(&out).as_deref(), Some("999"));

    publish(w.mqtt, "devices/pos-0001/telemetry", &pos_report(1, json!({})));
    w.wait_verdict("pos-0001", "compliant");
    assert_eq!(vlan(&pap(&nas, "alice", "correct horse")).as_deref(), Some("100"), "PAP, compliant device");
    assert_eq!(vlan(&mab(&nas, "aa:bb:cc:00:00:01")).as_deref(), Some("100"), "MAB, compliant device");
    assert_eq!(vlan(&mab(&nas, "aabb.cc00.0001")).as_deref(), Some("100"), "MAB, Cisco MAC format");

    let out = pap(&nas, "alice", "wrong horse");
    assert!(out.contains("Received Access-Reject") && out.contains("invalid credentials"), "{out}");
    let out = pap(&nas, "mallory", "correct horse");
    assert!(out.contains("Received Access-Reject"), "{out}");
    // NT-hash credentials (RFC 2759's "clientPass"); bob has no device: unknown → quarantine.
    assert_eq!(vlan(&pap(&nas, "bob", "clientPass")).as_deref(), Some("999"));
    // Argon2 credentials, checked off the RADIUS task.
    assert_eq!(vlan(&pap(&nas, "carol", "battery staple")).as_deref(), Some("999"));
    let out = pap(&nas, "carol", "battery stapler");
    assert!(out.contains("Received Access-Reject"), "{out}");

    publish(w.mqtt, "devices/pos-0001/telemetry", &pos_report(2, json!({"rooted": true})));
    w.wait_verdict("pos-0001", "noncompliant");
    assert_eq!(vlan(&mab(&nas, "aa:bb:cc:00:00:01")).as_deref(), Some("999"), "quarantined at once");
    assert_eq!(vlan(&pap(&nas, "alice", "correct horse")).as_deref(), Some("999"));

    // A monitor-only failure never changes the answer.
    publish(w.mqtt, "devices/pos-0001/telemetry", &pos_report(3, json!({"agent_version": "2.0"})));
    wait_for("only the monitored rule failing", Duration::from_secs(10), || {
        w.device("pos-0001").filter(|d| d["seq"] == 3 && d["failed_rules"][0]["rule"] == "agent-current")
    });
    assert_eq!(vlan(&mab(&nas, "aa:bb:cc:00:00:01")).as_deref(), Some("100"));

    assert!(w.metric("warden_radius_requests_total{kind=\"mab\",result=\"quarantine\"}") >= 2.0);
    assert!(w.metric("warden_radius_requests_total{kind=\"pap\",result=\"reject\"}") >= 2.0);
    let log = w.log_text();
    assert!(
        log.contains("access decision") && log.contains("pos-baseline/not-rooted"),
        "decisions logged with reasons"
    );
    assert!(!log.contains(SECRET) && !log.contains("correct horse"), "no secret or password in the log");
}

#[test]
fn noncompliant_reject_mode_says_why() {
    let dir = Warden::workdir();
    let (w, nas) = start(&dir, "127.0.0.0/8", "reject");
    publish(w.mqtt, "devices/pos-0001/telemetry", &pos_report(1, json!({"encrypted": false})));
    w.wait_verdict("pos-0001", "noncompliant");
    let out = mab(&nas, "aa:bb:cc:00:00:01");
    assert!(out.contains("Received Access-Reject"), "{out}");
    assert!(out.contains("pos-baseline/disk-encrypted"), "Reply-Message names the failed rule: {out}");
}

#[test]
fn accounting_and_status_server() {
    let dir = Warden::workdir();
    let (w, nas) = start(&dir, "127.0.0.0/8", "quarantine");
    for status in ["Start", "Interim-Update", "Stop"] {
        let (answered, out) = radclient(
            nas.acct,
            "acct",
            SECRET,
            &format!(
                "Acct-Status-Type = {status}, Acct-Session-Id = \"sess-42\", Calling-Station-Id = \"aa:bb:cc:00:00:01\", NAS-Port = 7, Framed-IP-Address = 10.0.0.7"
            ),
        );
        assert!(answered && out.contains("Received Accounting-Response"), "{out}");
    }
    let journal = std::fs::read_to_string(dir.join("state/accounting.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = journal.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 3, "{journal}");
    assert_eq!(records[2]["status"], "Stop");
    assert_eq!(records[0]["session_id"], "sess-42");
    assert_eq!(records[0]["framed_ip"], "10.0.0.7");

    for port in [nas.auth, nas.acct] {
        let (answered, out) = radclient(port, "status", SECRET, "Message-Authenticator = 0x00");
        assert!(answered, "Status-Server on {port}: {out}");
    }
    assert_eq!(w.metric("warden_radius_requests_total{kind=\"accounting\",result=\"stored\"}"), 3.0);
    assert_eq!(w.metric("warden_radius_requests_total{kind=\"status\",result=\"accept\"}"), 2.0);
}

/// A signed PAP Access-Request built with warden's own codec.
fn access_request(id: u8, secret: &[u8], signed: bool) -> Vec<u8> {
    let ra = [id.wrapping_mul(7); 16];
    let mut b = Builder::new(Code::AccessRequest, id, signed);
    b.attr(AttrType::UserName, b"alice").unwrap();
    b.user_password(b"correct horse", secret, &ra).unwrap();
    b.finish_access_request(secret, &ra)
}

fn exchange(sock: &UdpSocket, port: u16, datagram: &[u8]) -> Option<Vec<u8>> {
    sock.send_to(datagram, ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 4096];
    sock.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}

#[test]
fn hardening_duplicates_and_garbage() {
    let dir = Warden::workdir();
    // Only 127.0.0.1 is a client: 127.0.0.2 is an unknown source.
    let (w, nas) = start(&dir, "127.0.0.1/32", "quarantine");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(800))).unwrap();

    // Wrong secret, missing Message-Authenticator, unknown client: silence.
    let (answered, _) = radclient(
        nas.auth,
        "auth",
        "not-the-secret",
        "User-Name = \"alice\", User-Password = \"correct horse\", Message-Authenticator = 0x00",
    );
    assert!(!answered, "wrong secret must get no answer");
    let (answered, _) = radclient(nas.auth, "auth", SECRET, "User-Name = \"alice\", User-Password = \"correct horse\"");
    assert!(!answered, "no Message-Authenticator must get no answer");
    let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
    stranger.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
    assert_eq!(exchange(&stranger, nas.auth, &access_request(1, SECRET.as_bytes(), true)), None, "unknown client");

    // Garbage of every shape, then a good request is still answered.
    for junk in [
        &b""[..],
        b"\x01",
        &[0xffu8; 30],
        &[1, 2, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        &[0u8; 5000],
    ] {
        assert_eq!(exchange(&sock, nas.auth, junk), None);
    }
    // A retransmission gets the very same reply, decided once, whichever
    // shard the NAS's source address and port lead to (8 sources, 4 shards).
    let req = access_request(42, SECRET.as_bytes(), true);
    let sources: Vec<UdpSocket> = (0..8)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
            s
        })
        .collect();
    for s in &sources {
        let first = exchange(s, nas.auth, &req).expect("a good request is answered");
        let second = exchange(s, nas.auth, &req).expect("the retransmission is answered");
        assert_eq!(first, second);
        let p = Packet::decode(&first).unwrap();
        assert_eq!(p.code(), Code::AccessAccept);
        assert!(p.response_authenticator_valid(SECRET.as_bytes(), &[42u8.wrapping_mul(7); 16]));
    }
    assert_eq!(w.metric("warden_radius_discarded_total{reason=\"duplicate_answered_from_cache\"}"), 8.0);
    assert_eq!(
        w.metric("warden_radius_requests_total{kind=\"pap\",result=\"quarantine\"}"),
        8.0,
        "one decision for each pair of datagrams"
    );
    for reason in ["bad_message_authenticator", "missing_message_authenticator", "unknown_client", "malformed"] {
        assert!(w.metric(&format!("warden_radius_discarded_total{{reason=\"{reason}\"}}")) >= 1.0, "{reason} counted");
    }
}

#[test]
fn the_users_file_is_reloaded_on_sighup_without_a_pause_in_answers() {
    let dir = Warden::workdir();
    let (w, nas) = start(&dir, "127.0.0.0/8", "quarantine");
    let out = pap(&nas, "dave", "open sesame");
    assert!(out.contains("Received Access-Reject"), "not a user yet: {out}");

    // A large file, so that loading it takes a while: requests keep being
    // answered meanwhile, with the users in force.
    let mut text = std::fs::read_to_string(dir.join("users.toml")).unwrap();
    text.push_str("[[users]]\nname = \"dave\"\npassword = \"open sesame\"\n");
    for i in 0..200_000 {
        text.push_str(&format!("[[users]]\nname = \"filler-{i}\"\nnt_hash = \"44ebba8d5312b8d611474411f56989ae\"\n"));
    }
    std::fs::write(dir.join("users.toml.new"), &text).unwrap();
    std::fs::rename(dir.join("users.toml.new"), dir.join("users.toml")).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (answered, unanswered) = std::thread::scope(|s| {
        let asker = s.spawn(|| {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
            let (mut answered, mut unanswered, mut id) = (0u32, 0u32, 0u8);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                id = id.wrapping_add(1);
                match exchange(&sock, nas.auth, &access_request(id, SECRET.as_bytes(), true)) {
                    Some(a) if Packet::decode(&a).unwrap().code() == Code::AccessAccept => answered += 1,
                    _ => unanswered += 1,
                }
            }
            (answered, unanswered)
        });
        w.hup();
        w.wait_metric("warden_users_reloads_total{result=\"ok\"}", 1.0);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        asker.join().unwrap()
    });
    assert!(answered > 0 && unanswered == 0, "{answered} answered, {unanswered} not, during the reload");
    assert_eq!(w.metric("warden_radius_users"), 200_004.0);
    let out = pap(&nas, "dave", "open sesame");
    assert!(out.contains("Received Access-Accept"), "dave after the reload: {out}");

    // A file that does not load is refused, located, and the users in
    // force stay.
    text.push_str("[[users]]\nname = \"dave\"\npassword = \"again\"\n");
    std::fs::write(dir.join("users.toml"), &text).unwrap();
    w.hup();
    w.wait_metric("warden_users_reloads_total{result=\"error\"}", 1.0);
    let line = text.lines().count() - 1;
    assert!(w.log_text().contains(&format!("users.toml:{line}:8: duplicate user \"dave\"")), "{}", w.log_text());
    let out = pap(&nas, "dave", "open sesame");
    assert!(out.contains("Received Access-Accept"), "the previous users stay: {out}");
}
