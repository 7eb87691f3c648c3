//! The event stream (issue 15) with the real binary: a webhook receiver in
//! this test gets every audit entry as a signed CloudEvent, in order,
//! including the ones produced while it was down, across a graceful stop
//! and a `kill -9`; `GET /api/v1/events` answers a long poll the moment an
//! event is durable.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// One request the receiver took.
#[derive(Debug)]
struct Delivery {
    id: String,
    event: Value,
}

/// A webhook receiver on loopback: verifies each request's Standard
/// Webhooks signature (with ring's HMAC directly, not warden's code),
/// records it, and answers 204, or 503 while it is "down".
struct Receiver {
    port: u16,
    up: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Delivery>>>,
    refused: Arc<Mutex<u64>>,
    bad_signatures: Arc<Mutex<u64>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = Self {
            port,
            up: Arc::new(AtomicBool::new(true)),
            got: Arc::default(),
            refused: Arc::default(),
            bad_signatures: Arc::default(),
        };
        let (up, got, refused, bad) =
            (Arc::clone(&r.up), Arc::clone(&r.got), Arc::clone(&r.refused), Arc::clone(&r.bad_signatures));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (up, got, refused, bad) =
                    (Arc::clone(&up), Arc::clone(&got), Arc::clone(&refused), Arc::clone(&bad));
                std::thread::spawn(move || serve(stream, &up, &got, &refused, &bad));
            }
        });
        r
    }

    fn received(&self) -> Vec<Value> {
        self.got.lock().unwrap().iter().map(|d| d.event.clone()).collect()
    }
}

fn serve(
    stream: std::net::TcpStream,
    up: &AtomicBool,
    got: &Mutex<Vec<Delivery>>,
    refused: &Mutex<u64>,
    bad: &Mutex<u64>,
) {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.decode(SECRET.trim_start_matches("whsec_")).unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut headers = std::collections::HashMap::new();
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        assert!(line.starts_with("POST /hook/path?x=1 HTTP/1.1"), "{line}");
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.insert(k.to_ascii_lowercase(), v.trim().to_string());
        }
        let len: usize = headers["content-length"].parse().unwrap();
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        if !up.load(Ordering::Acquire) {
            *refused.lock().unwrap() += 1;
            out.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").unwrap();
            continue;
        }
        let (id, ts, sig) = (&headers["webhook-id"], &headers["webhook-timestamp"], &headers["webhook-signature"]);
        let signed = [id.as_bytes(), b".", ts.as_bytes(), b".", &body].concat();
        let want = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, &signed)));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        if *sig != want || (ts.parse::<i64>().unwrap() - now).abs() > 300 {
            *bad.lock().unwrap() += 1;
            out.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n").unwrap();
            continue;
        }
        assert_eq!(headers["content-type"], "application/cloudevents+json");
        let event: Value = serde_json::from_slice(&body).unwrap();
        got.lock().unwrap().push(Delivery { id: id.clone(), event });
        out.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
    }
}

/// The audit trail's entry sequence numbers, in the file.
fn trail(dir: &Path) -> Vec<u64> {
    let mut seqs = Vec::new();
    for n in 1.. {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("state/audit/audit-{n}.jsonl"))) else { break };
        seqs.extend(text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()?["seq"].as_u64()));
    }
    seqs
}

fn seq_of(e: &Value) -> u64 {
    e["sequence"].as_str().unwrap().parse().unwrap()
}

/// Waits until the receiver holds every entry of the trail.
fn wait_all(r: &Receiver, dir: &Path) -> Vec<Value> {
    wait_for("every audit entry delivered", Duration::from_secs(60), || {
        let got: BTreeSet<u64> = r.received().iter().map(seq_of).collect();
        let want = trail(dir);
        (!want.is_empty() && want.iter().all(|s| got.contains(s))).then_some(())
    });
    r.received()
}

/// A second device's report patch: its own identities.
fn second(mut patch: Value) -> Value {
    patch["mac_addresses"] = json!(["aa:bb:cc:00:00:02"]);
    patch["cert_identity"] = json!("pos-0002");
    patch
}

fn config(mqtt: u16, receiver: u16) -> String {
    format!(
        "[node]\nstate_dir = \"state\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\nallow_anonymous = true\n\
         [policy]\ndir = \"policies\"\n\
         [events]\nsource = \"urn:warden:test\"\n\
         [[events.webhooks]]\nname = \"siem\"\nurl = \"http://127.0.0.1:{receiver}/hook/path?x=1\"\nsecret_file = \"hook.secret\"\ntimeout = \"2s\"\n"
    )
}

#[test]
fn webhooks_get_every_event_signed_in_order_across_outages_and_restarts() {
    let dir = Warden::workdir();
    std::fs::write(dir.join("hook.secret"), format!("{SECRET}\n")).unwrap();
    let receiver = Receiver::start();
    let mqtt = free_port();
    let config = config(mqtt, receiver.port);
    let mut w = Warden::launch(&dir, &config, mqtt, "");
    w.wait_ready();
    publish(mqtt, "devices/pos-0001/telemetry", &pos_report(1, json!({})));
    w.wait_verdict("pos-0001", "compliant");
    publish(mqtt, "devices/pos-0001/telemetry", &pos_report(2, json!({"rooted": true})));
    w.wait_verdict("pos-0001", "noncompliant");
    let got = wait_all(&receiver, &dir);
    let drift =
        got.iter().find(|e| e["type"] == "warden.verdict.changed" && e["data"]["to"] == "noncompliant").unwrap();
    assert_eq!(drift["specversion"], "1.0");
    assert_eq!(drift["source"], "urn:warden:test");
    assert_eq!(drift["subject"], "pos-0001");
    assert!(drift["data"]["failed_rules"].to_string().contains("rooted"), "{drift}");

    // The receiver goes down; events keep happening, then warden stops.
    receiver.up.store(false, Ordering::Release);
    publish(mqtt, "devices/pos-0001/telemetry", &pos_report(3, json!({})));
    w.wait_verdict("pos-0001", "compliant");
    publish(mqtt, "devices/pos-0002/telemetry", &pos_report(1, second(json!({"encrypted": false}))));
    w.wait_verdict("pos-0002", "noncompliant");
    wait_for("a refused attempt", Duration::from_secs(10), || (*receiver.refused.lock().unwrap() > 0).then_some(()));
    w.stop();
    let before_restart = trail(&dir).len();

    // Back up after a restart: what happened while it was down arrives,
    // then what happens next.
    receiver.up.store(true, Ordering::Release);
    let mut w = Warden::launch(&dir, &config, mqtt, "");
    w.wait_ready();
    publish(mqtt, "devices/pos-0002/telemetry", &pos_report(2, second(json!({}))));
    w.wait_verdict("pos-0002", "compliant");
    let got = wait_all(&receiver, &dir);
    assert!(trail(&dir).len() > before_restart);

    // kill -9 with events in flight: nothing is lost (some may come twice).
    receiver.up.store(false, Ordering::Release);
    for seq in 3..8 {
        let patch = if seq % 2 == 1 { json!({"rooted": true}) } else { json!({}) };
        publish(mqtt, "devices/pos-0002/telemetry", &pos_report(seq, second(patch)));
    }
    w.wait_verdict("pos-0002", "noncompliant");
    std::thread::sleep(Duration::from_millis(300));
    w.kill();
    receiver.up.store(true, Ordering::Release);
    let mut w = Warden::launch(&dir, &config, mqtt, "");
    w.wait_ready();
    let after = wait_all(&receiver, &dir);
    assert!(after.len() > got.len());

    // In trail order (a redelivery repeats a run, never reorders one).
    let seqs: Vec<u64> = after.iter().map(seq_of).collect();
    let mut highest = 0;
    for s in &seqs {
        assert!(*s > highest || seqs.iter().filter(|x| *x == s).count() > 1, "out of order: {seqs:?}");
        highest = highest.max(*s);
    }
    // One id per event, stable across redeliveries.
    let deliveries = receiver.got.lock().unwrap();
    for d in deliveries.iter() {
        assert_eq!(d.id, d.event["id"].as_str().unwrap());
    }
    drop(deliveries);
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);
    assert!(w.metric("warden_webhook_deliveries_total{result=\"delivered\"}") > 0.0);
    assert!(w.metric("warden_audit_entries_total") > 0.0);
    w.stop();
}

#[test]
fn the_events_long_poll_answers_when_an_event_is_durable() {
    let dir = Warden::workdir();
    let mqtt = free_port();
    let config = format!(
        "[node]\nstate_dir = \"state\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\nallow_anonymous = true\n[policy]\ndir = \"policies\"\n"
    );
    let mut w = Warden::launch(&dir, &config, mqtt, "");
    w.wait_ready();
    publish(mqtt, "devices/pos-0001/telemetry", &pos_report(1, json!({})));
    w.wait_verdict("pos-0001", "compliant");
    let get = |path: &str| -> Value {
        let (code, body) = w.get(path).unwrap();
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    };
    let first = get("/api/v1/events?after=0&wait=1s");
    let events = first["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["type"] == "warden.verdict.changed" && e["subject"] == "pos-0001"), "{first}");
    let next = first["next"].as_u64().unwrap();

    // Nothing new: the poll waits, then answers empty with the same cursor.
    let started = Instant::now();
    let idle = get(&format!("/api/v1/events?after={next}&wait=1s"));
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!((idle["events"].clone(), idle["next"].as_u64()), (json!([]), Some(next)));

    // A drift while a poll waits: it answers with it at once.
    let port = w.http;
    let poll = std::thread::spawn(move || {
        let started = Instant::now();
        let (code, body) =
            http_get(port, &format!("/api/v1/events?after={next}&wait=20s&types=warden.verdict.changed")).unwrap();
        (code, body, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    let published = Instant::now();
    publish(mqtt, "devices/pos-0001/telemetry", &pos_report(2, json!({"rooted": true})));
    let (code, body, _) = poll.join().unwrap();
    let answered = published.elapsed();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["events"][0]["data"]["to"], "noncompliant", "{v}");
    assert!(answered < Duration::from_secs(5), "answered {answered:?} after the publish");
    eprintln!("long poll answered {answered:?} after the publish (mosquitto_pub included)");
    assert_eq!(w.get("/api/v1/events?types=warden.nope").unwrap().0, 400);
    w.stop();
}
