//! Nothing acknowledged is lost, and a crash never widens access (issue 12):
//! the real binary, killed with SIGKILL at random moments while reports
//! stream in through mosquitto (Debian), comes back with every report the
//! publisher had a PUBACK for; a device that turned noncompliant just
//! before a crash is noncompliant after it.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEVICES: u64 = 1000;

/// The settings docs/telemetry.md gives for mosquitto: no silent drop of
/// queued QoS 1 messages, and enough in flight that acknowledging after a
/// disk sync does not throttle delivery.
const MOSQUITTO_QUEUES: &str = "max_queued_messages 0\nmax_inflight_messages 1000\n";

fn report(device: u64, seq: u64) -> String {
    pos_report(
        seq,
        json!({
            "mac_addresses": [format!("02:00:00:00:{:02x}:{:02x}", device >> 8, device & 0xff)],
            "cert_identity": format!("crash-{device:04}"),
        }),
    )
}

fn config(broker: u16, snapshot_every: &str) -> String {
    format!(
        "[node]\nname = \"test\"\nstate_dir = \"state\"\nsnapshot_every = \"{snapshot_every}\"\n\
         [mqtt]\nbroker = \"mqtt://127.0.0.1:{broker}\"\nclient_id = \"warden-durability\"\n\
         [policy]\ndir = \"policies\"\nstale_after = \"15m\"\n"
    )
}

/// Publishes numbered reports round-robin over the fleet at a steady rate
/// and records, per device, the highest `seq` the broker acknowledged.
struct Publisher {
    stop: Arc<AtomicBool>,
    /// Bursts begun so far.
    bursts: Arc<std::sync::atomic::AtomicU64>,
    acked: Arc<Mutex<HashMap<u64, u64>>>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Publisher {
    fn start(port: u16, per_second: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(HashMap::new()));
        let mut opts = MqttOptions::new("crash-loop-publisher", "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30)).set_inflight(200);
        let (client, mut connection) = Client::new(opts, 1000);
        // rumqttc hands out packet ids in the order publishes go out: the
        // sent queue maps each id back to its (device, seq) until its PUBACK.
        let sent: Arc<Mutex<VecDeque<(u64, u64)>>> = Arc::default();
        let (events_sent, events_acked, events_stop) = (Arc::clone(&sent), Arc::clone(&acked), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut pkids: HashMap<u16, (u64, u64)> = HashMap::new();
            for event in connection.iter() {
                match event {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let next = events_sent.lock().unwrap().pop_front().expect("a publish for every id");
                        pkids.insert(pkid, next);
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        let (device, seq) = pkids.remove(&ack.pkid).expect("an ack for a sent id");
                        let mut acked = events_acked.lock().unwrap();
                        let best = acked.entry(device).or_insert(0);
                        *best = (*best).max(seq);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        assert!(events_stop.load(Ordering::Acquire), "publisher lost its broker: {e}");
                        return;
                    }
                }
                if events_stop.load(Ordering::Acquire) && pkids.is_empty() && events_sent.lock().unwrap().is_empty() {
                    return;
                }
            }
        });
        let thread_stop = Arc::clone(&stop);
        let bursts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let thread_bursts = Arc::clone(&bursts);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut n = 0u64;
            while !thread_stop.load(Ordering::Acquire) {
                // In bursts of one report per device: a kill then often
                // finds a backlog inside warden, which is what an early
                // acknowledgement would lose.
                if n.is_multiple_of(DEVICES) {
                    let due = started + Duration::from_micros(n * 1_000_000 / per_second);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    thread_bursts.fetch_add(1, Ordering::AcqRel);
                }
                let (device, seq) = (n % DEVICES, n / DEVICES + 1);
                sent.lock().unwrap().push_back((device, seq));
                let topic = format!("devices/crash-{device:04}/telemetry");
                if let Err(e) = client.publish(topic, QoS::AtLeastOnce, false, report(device, seq)) {
                    panic!("publisher's event loop is gone ({e}); see its panic above");
                }
                n += 1;
            }
            n
        });
        Self { stop, bursts, acked, thread: Some(thread) }
    }

    /// Stops publishing; returns how many were sent. PUBACKs still in flight
    /// keep arriving for a moment: [`Publisher::settled`] waits for them.
    fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        self.thread.take().unwrap().join().unwrap()
    }

    /// Returns a few milliseconds into the next burst: warden is then
    /// most likely holding reports it has read and not yet stored.
    fn mid_burst(&self, rng: &mut fastrand::Rng) {
        let seen = self.bursts.load(Ordering::Acquire);
        while self.bursts.load(Ordering::Acquire) == seen {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(rng.u64(2..20)));
    }

    fn acked(&self) -> HashMap<u64, u64> {
        self.acked.lock().unwrap().clone()
    }

    /// Waits until the acknowledged set stops growing.
    fn settled(&self) -> HashMap<u64, u64> {
        let mut last = self.acked();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = self.acked();
            if now == last {
                return now;
            }
            last = now;
        }
    }
}

#[test]
fn every_acknowledged_report_survives_twenty_kill_9s() {
    let dir = Warden::workdir();
    let broker = Mosquitto::start_with(&dir, free_port(), MOSQUITTO_QUEUES, "allow_anonymous true\n");
    // A short snapshot interval, so kills also land mid-compaction.
    let config = config(broker.port, "2s");
    let mut w = Warden::launch(&dir, &config, broker.port, "");
    w.wait_ready();
    let mut publisher = Publisher::start(broker.port, 1500);
    let mut rng = fastrand::Rng::with_seed(0x12);
    for _ in 0..19 {
        std::thread::sleep(Duration::from_millis(rng.u64(150..900)));
        w.kill();
        w = Warden::launch(&dir, &config, broker.port, "");
        // Some kills land before warden is even subscribed again.
        if rng.bool() {
            w.wait_ready();
        }
    }
    // The last kill lands mid-burst and publishing stops right after it, so
    // no later report can hide one that was acknowledged and then lost.
    w.wait_ready();
    publisher.mid_burst(&mut rng);
    w.kill();
    let sent = publisher.stop();
    let acked = publisher.settled();
    let mut w = Warden::launch(&dir, &config, broker.port, "");
    w.wait_ready();
    assert_eq!(acked.len() as u64, DEVICES, "every device had reports acknowledged");
    let total: u64 = acked.values().sum();
    assert!(total >= sent / 2, "most of {sent} reports acknowledged ({total} by seq)");

    // Every acknowledged report is reflected: the device's seq is at
    // least the highest one acknowledged (redelivered backlog included).
    let mut behind: Vec<(u64, u64, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        behind.clear();
        for (&device, &seq) in &acked {
            let have = w.device(&format!("crash-{device:04}")).map_or(0, |d| d["seq"].as_u64().unwrap_or(0));
            if have < seq {
                behind.push((device, have, seq));
            }
        }
        if behind.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        behind.is_empty(),
        "{} devices lost acknowledged reports, e.g. {:?}",
        behind.len(),
        &behind[..behind.len().min(5)]
    );
    let log = w.log_text();
    assert!(log.contains("compliance table restored"), "{log}");
}

/// Devices with their own connections to warden's embedded broker (as
/// devices connect in the field): each connection sends its devices'
/// numbered reports one at a time, each waiting for its PUBACK, and after
/// a lost connection reconnects and sends the unacknowledged one again.
struct DeviceConnections {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashMap<u64, u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl DeviceConnections {
    fn start(port: u16, connections: u64, per_second: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
        let pause = Duration::from_micros((1_000_000 * connections).checked_div(per_second).unwrap_or(0));
        let threads = (0..connections)
            .map(|c| {
                let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
                std::thread::spawn(move || {
                    let mine: Vec<u64> = (c..DEVICES).step_by(connections as usize).collect();
                    let (mut next, mut seq) = (0usize, 1u64);
                    'connect: while !stop.load(Ordering::Acquire) {
                        let mut opts = MqttOptions::new(format!("crash-conn-{c}"), "127.0.0.1", port);
                        opts.set_keep_alive(Duration::from_secs(30));
                        let (client, mut connection) = Client::new(opts, 10);
                        let mut events = connection.iter();
                        loop {
                            match events.next() {
                                Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                                Some(Ok(_)) => {}
                                _ => {
                                    std::thread::sleep(Duration::from_millis(50));
                                    continue 'connect;
                                }
                            }
                        }
                        while !stop.load(Ordering::Acquire) {
                            let device = mine[next];
                            let topic = format!("devices/crash-{device:04}/telemetry");
                            if client.publish(topic, QoS::AtLeastOnce, false, report(device, seq)).is_err() {
                                continue 'connect;
                            }
                            loop {
                                match events.next() {
                                    Some(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
                                    Some(Ok(_)) => {}
                                    // Lost before the PUBACK: not acknowledged;
                                    // the same report goes again.
                                    _ => continue 'connect,
                                }
                            }
                            let mut acked = acked.lock().unwrap();
                            let best = acked.entry(device).or_insert(0);
                            *best = (*best).max(seq);
                            drop(acked);
                            next += 1;
                            if next == mine.len() {
                                (next, seq) = (0, seq + 1);
                            }
                            if !pause.is_zero() {
                                std::thread::sleep(pause);
                            }
                        }
                    }
                })
            })
            .collect();
        Self { stop, acked, threads }
    }

    fn stop(self) -> HashMap<u64, u64> {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            t.join().unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// The crash loop through the embedded broker: warden and the broker die
/// together 20 times; every report a device had a PUBACK for is reflected
/// after the last restart. With the PUBACK sent before the report is
/// stored (rumqttd's way, or rmqtt without the hook), reports are lost.
#[test]
fn every_acknowledged_report_survives_twenty_kill_9s_through_the_embedded_broker() {
    let dir = Warden::workdir();
    let mqtt = free_port();
    let config = format!(
        "[node]\nname = \"test\"\nstate_dir = \"state\"\nsnapshot_every = \"2s\"\n\
         [mqtt]\nbroker = \"embedded\"\nlisten = \"127.0.0.1:{mqtt}\"\nallow_anonymous = true\n\
         [policy]\ndir = \"policies\"\nstale_after = \"15m\"\n"
    );
    let mut w = Warden::launch(&dir, &config, mqtt, "");
    w.wait_ready();
    // As fast as warden acknowledges: an early PUBACK would then leave a
    // backlog of acknowledged, unstored reports inside warden at each kill.
    let devices = DeviceConnections::start(mqtt, 100, 0);
    let mut rng = fastrand::Rng::with_seed(0x13);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(rng.u64(150..900)));
        w.kill();
        w = Warden::launch(&dir, &config, mqtt, "");
        if rng.bool() {
            w.wait_ready();
        }
    }
    // The last kill: publishing stops with it, so no later report can hide
    // an acknowledged one that was lost.
    w.wait_ready();
    std::thread::sleep(Duration::from_millis(rng.u64(150..900)));
    w.kill();
    let acked = devices.stop();
    let w = Warden::launch(&dir, &config, mqtt, "");
    let total: u64 = acked.values().sum();
    assert!(acked.len() as u64 == DEVICES && total > DEVICES, "reports were acknowledged ({total} by seq)");
    wait_for("the restarted warden to answer", Duration::from_secs(20), || w.device("crash-0000"));
    let behind: Vec<(u64, u64, u64)> = acked
        .iter()
        .filter_map(|(&device, &seq)| {
            let have = w.device(&format!("crash-{device:04}")).map_or(0, |d| d["seq"].as_u64().unwrap_or(0));
            (have < seq).then_some((device, have, seq))
        })
        .collect();
    assert!(
        behind.is_empty(),
        "{} devices lost acknowledged reports, e.g. {:?}",
        behind.len(),
        &behind[..behind.len().min(5)]
    );
}

#[test]
fn a_device_that_drifted_just_before_a_crash_is_still_quarantined_after_it() {
    let dir = Warden::workdir();
    let broker = Mosquitto::start_with(&dir, free_port(), MOSQUITTO_QUEUES, "allow_anonymous true\n");
    // No snapshot during the test: the journal alone must carry the change.
    let config = config(broker.port, "1h");
    let mut w = Warden::launch(&dir, &config, broker.port, "");
    w.wait_ready();
    publish(broker.port, "devices/crash-0001/telemetry", &report(1, 1));
    w.wait_verdict("crash-0001", "compliant");
    // Watch the status topic: the first moment the quarantine is visible
    // outside warden (as a CoA to a NAS would be), kill it.
    require("mosquitto_sub", "mosquitto-clients");
    let mut watcher = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-t", "warden/compliance/crash-0001"])
        .args(["-W", "20"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run mosquitto_sub");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(watcher.stdout.take().unwrap()));
    let retained = lines.next().expect("the retained status").unwrap();
    assert!(retained.contains("\"verdict\":\"compliant\""), "{retained}");
    publish(broker.port, "devices/crash-0001/telemetry", &pos_report(2, json!({"rooted": true})));
    let told = lines.next().expect("the quarantine on the status topic").unwrap();
    // The planes and the status topic hear of a change only once its
    // journal record is written (gateway/commit.rs): killed right now, the
    // record is there.
    w.kill();
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert!(told.contains("\"verdict\":\"noncompliant\""), "{told}");
    // Restarted with the broker gone: nothing can be redelivered, so what
    // warden says comes from its own state alone.
    drop(broker);
    let w = Warden::launch(&dir, &config, free_port(), "");
    let d = wait_for("the restarted warden to answer", Duration::from_secs(20), || w.device("crash-0001"));
    assert_eq!(d["verdict"], "noncompliant", "a crash never widens access: {d}");
    assert_eq!(d["seq"], 2, "{d}");
}

/// 30,000 new devices each publish QoS 1 reports in a burst through
/// mosquitto (with the settings docs/telemetry.md gives): the first makes
/// every one known, and all 120,000 are applied. Acknowledging after the
/// disk sync must not stall delivery: an ack path that waited on the MQTT
/// event loop once deadlocked under this load (warden's queues full).
#[test]
fn a_burst_of_30000_new_devices_through_mosquitto_is_all_known() {
    const BURST: u64 = 30_000;
    const REPORTS: u64 = 4;
    let dir = Warden::workdir();
    let broker = Mosquitto::start_with(&dir, free_port(), MOSQUITTO_QUEUES, "allow_anonymous true\n");
    let mut w = Warden::launch(&dir, &config(broker.port, "1m"), broker.port, "");
    w.wait_ready();
    let publishers: Vec<_> = (0..4u64)
        .map(|p| {
            let port = broker.port;
            std::thread::spawn(move || {
                let mut opts = MqttOptions::new(format!("burst-{p}"), "127.0.0.1", port);
                opts.set_keep_alive(Duration::from_secs(30)).set_inflight(500);
                let (client, mut connection) = Client::new(opts, 1000);
                let mine: Vec<u64> = (p..BURST).step_by(4).collect();
                let expected = mine.len() * REPORTS as usize;
                let sender = std::thread::spawn(move || {
                    for seq in 1..=REPORTS {
                        for &device in &mine {
                            let topic = format!("devices/burst-{device:05}/telemetry");
                            client.publish(topic, QoS::AtLeastOnce, false, report(device, seq)).unwrap();
                        }
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
    assert_eq!(acked as u64, BURST * REPORTS);
    let known = || {
        ["compliant", "noncompliant", "unknown"]
            .iter()
            .map(|v| w.metric(&format!("warden_devices{{verdict=\"{v}\"}}")))
            .sum::<f64>()
    };
    let accepted = || w.metric("warden_telemetry_messages_total{result=\"accepted\"}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted() < (BURST * REPORTS) as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(known(), BURST as f64, "every device of the burst is known");
    assert_eq!(accepted(), (BURST * REPORTS) as f64, "every report applied");
}

/// The retained status messages lose no final state: 2,000 devices flip
/// compliant → noncompliant → compliant → noncompliant (odd ones stop one
/// step earlier) as fast as the publisher can send, through mosquitto; a
/// consumer subscribing afterwards finds every device's retained verdict
/// equal to the one warden's API gives.
#[test]
fn the_status_topic_converges_on_every_final_verdict() {
    const FLEET: u64 = 2_000;
    require("mosquitto_sub", "mosquitto-clients");
    let dir = Warden::workdir();
    let broker = Mosquitto::start_with(&dir, free_port(), MOSQUITTO_QUEUES, "allow_anonymous true\n");
    let mut w = Warden::launch(&dir, &config(broker.port, "1m"), broker.port, "");
    w.wait_ready();
    let mut opts = MqttOptions::new("status-flipper", "127.0.0.1", broker.port);
    opts.set_keep_alive(Duration::from_secs(30)).set_inflight(500);
    let (client, mut connection) = Client::new(opts, 1000);
    let steps = |device: u64| if device.is_multiple_of(2) { 4 } else { 3 };
    let total: u64 = (0..FLEET).map(steps).sum();
    let sender = std::thread::spawn(move || {
        for seq in 1..=4u64 {
            for device in (0..FLEET).filter(|d| steps(*d) >= seq) {
                let payload = pos_report(
                    seq,
                    json!({
                        "rooted": seq % 2 == 0,
                        "mac_addresses": [format!("02:00:00:01:{:02x}:{:02x}", device >> 8, device & 0xff)],
                        "cert_identity": format!("flip-{device:04}"),
                    }),
                );
                client
                    .publish(format!("devices/flip-{device:04}/telemetry"), QoS::AtLeastOnce, false, payload)
                    .unwrap();
            }
        }
        client
    });
    let mut acked = 0;
    for event in connection.iter() {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = event {
            acked += 1;
            if acked == total {
                break;
            }
        }
        event.expect("publisher connection");
    }
    drop(sender.join());
    wait_for("every report applied", Duration::from_secs(60), || {
        (w.metric("warden_telemetry_messages_total{result=\"accepted\"}") >= total as f64).then_some(())
    });
    // Give the status publisher a moment to drain what is pending.
    std::thread::sleep(Duration::from_secs(2));
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-t", "warden/compliance/+", "-v"])
        .args(["-C", &FLEET.to_string(), "-W", "20"])
        .output()
        .expect("run mosquitto_sub");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut retained: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        let (topic, body) = line.split_once(' ').expect("topic and payload");
        let v: serde_json::Value = serde_json::from_str(body).expect("status JSON");
        retained.insert(topic.to_string(), v["verdict"].as_str().unwrap().to_string());
    }
    assert_eq!(retained.len() as u64, FLEET, "a retained status for every device");
    let mut wrong = Vec::new();
    for device in 0..FLEET {
        let id = format!("flip-{device:04}");
        let want = if steps(device).is_multiple_of(2) { "noncompliant" } else { "compliant" };
        let api = w.device(&id).unwrap()["verdict"].as_str().unwrap().to_string();
        assert_eq!(api, want, "{id} in the API");
        if retained[&format!("warden/compliance/{id}")] != want {
            wrong.push(id);
        }
    }
    assert!(wrong.is_empty(), "{} retained verdicts are stale, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
}

/// Damaged state files: a byte turned invalid UTF-8 in the snapshot, a
/// flipped byte and a torn last record in the journal. warden starts,
/// restores every good record, counts and logs what it dropped, and a device
/// whose record was lost is unknown (never compliant).
#[test]
fn damaged_state_files_cost_only_the_damaged_records() {
    let dir = Warden::workdir();
    let setup = Setup::embedded();
    let config = format!(
        "[node]\nname = \"test\"\nstate_dir = \"state\"\nsnapshot_every = \"1h\"\n\
         [mqtt]\nbroker = \"embedded\"\nlisten = \"127.0.0.1:{}\"\nallow_anonymous = true\n\
         [policy]\ndir = \"policies\"\nstale_after = \"15m\"\n",
        setup.mqtt
    );
    let send = |w: &Warden, device: u64, rooted: bool| {
        publish(
            w.mqtt,
            &format!("devices/crash-{device:04}/telemetry"),
            &pos_report(
                1,
                json!({
                    "rooted": rooted,
                    "mac_addresses": [format!("02:00:00:02:00:{device:02x}")],
                    "cert_identity": format!("crash-{device:04}"),
                }),
            ),
        );
    };
    // Devices 1 and 2 end up in the snapshot (a graceful stop writes it)...
    let mut w = Warden::launch(&dir, &config, setup.mqtt, "");
    w.wait_ready();
    send(&w, 1, false);
    send(&w, 2, true);
    w.wait_verdict("crash-0002", "noncompliant");
    w.wait_verdict("crash-0001", "compliant");
    w.stop();
    // ...devices 3 to 5 only in the journal (killed, no snapshot since).
    let mut w = Warden::launch(&dir, &config, setup.mqtt, "");
    w.wait_ready();
    send(&w, 3, true);
    send(&w, 4, false);
    send(&w, 5, false);
    w.wait_verdict("crash-0003", "noncompliant");
    w.wait_verdict("crash-0004", "compliant");
    w.wait_verdict("crash-0005", "compliant");
    w.kill();

    let state = dir.join("state");
    let damage = |path: &std::path::Path, device: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let text = std::fs::read(path).unwrap();
        let mut out = Vec::new();
        for line in text.split_inclusive(|b| *b == b'\n') {
            let mut line = line.to_vec();
            if String::from_utf8_lossy(&line).contains(&format!("\"id\":\"{device}\"")) {
                f(&mut line);
            }
            out.extend(line);
        }
        std::fs::write(path, out).unwrap();
    };
    // The snapshot is binary: a byte of crash-0001's record flipped to one
    // that is not UTF-8 (its checksum catches it first).
    let snap = state.join("compliance.snap");
    let mut bytes = std::fs::read(&snap).unwrap();
    let at = bytes.windows(10).position(|w| w == b"crash-0001").expect("crash-0001 in the snapshot");
    bytes[at + 2] = 0xff;
    std::fs::write(&snap, bytes).unwrap();
    let segment = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("journal-"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a journal segment");
    damage(&segment, "crash-0004", &|l| l[9] ^= 0x20);
    damage(&segment, "crash-0005", &|l| l.truncate(l.len() / 2));

    let w = Warden::launch(&dir, &config, setup.mqtt, "");
    let d2 = wait_for("the restarted warden", Duration::from_secs(20), || w.device("crash-0002"));
    assert_eq!(d2["verdict"], "noncompliant", "{d2}");
    assert_eq!(w.device("crash-0003").unwrap()["verdict"], "noncompliant");
    for lost in ["crash-0001", "crash-0004", "crash-0005"] {
        assert!(w.device(lost).is_none(), "{lost}: a damaged record vouches for nothing");
    }
    assert_eq!(w.metric("warden_snapshot_bad_lines_total"), 1.0);
    assert_eq!(w.metric("warden_journal_bad_lines_total"), 2.0);
    let log = w.log_text();
    assert!(log.contains("compliance table restored"), "{log}");
}

/// A policy reload sets failure start times no journal record holds: a
/// snapshot is begun right after it, so a `kill -9` soon after does not
/// restart the grace periods it began.
#[test]
fn a_reloads_failure_start_times_survive_a_kill_9() {
    let dir = Warden::workdir();
    let policy = dir.join("policies/pos-baseline.toml");
    let strict = std::fs::read_to_string(&policy).unwrap();
    let lenient = strict.replace("\"ACME-STORE-5G\"]", "\"ACME-STORE-5G\", \"ACME-GUEST\"]");
    assert_ne!(strict, lenient);
    std::fs::write(&policy, &lenient).unwrap();
    let mqtt = free_port();
    let config = format!(
        "[node]\nname = \"test\"\nstate_dir = \"state\"\nsnapshot_every = \"1h\"\n\
         [mqtt]\nbroker = \"embedded\"\nlisten = \"127.0.0.1:{mqtt}\"\nallow_anonymous = true\n\
         [policy]\ndir = \"policies\"\nstale_after = \"15m\"\n"
    );
    let mut w = Warden::launch(&dir, &config, mqtt, "");
    w.wait_ready();
    publish(mqtt, "devices/pos-0001/telemetry", &pos_report(1, json!({"wifi_ssid": "ACME-GUEST"})));
    w.wait_verdict("pos-0001", "compliant");
    std::fs::write(&policy, &strict).unwrap();
    let d = w.wait_verdict("pos-0001", "noncompliant");
    let since = d["failed_rules"][0]["failing_since"].clone();
    assert!(since.is_string(), "{d}");
    wait_for("the snapshot after the reload", Duration::from_secs(10), || {
        dir.join("state/compliance.snap").is_file().then_some(())
    });
    std::thread::sleep(Duration::from_millis(1100));
    w.kill();
    let mut w = Warden::launch(&dir, &config, mqtt, "");
    w.wait_ready();
    let d = w.device("pos-0001").unwrap();
    assert_eq!(d["verdict"], "noncompliant");
    assert_eq!(d["failed_rules"][0]["failing_since"], since, "the grace period runs from the reload: {d}");
}
