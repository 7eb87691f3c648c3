//! MQTT load generator for the ingest and latency benchmarks (driven by
//! bench/ingest.py, bench/quarantine.py, bench/wireguard.py). Loopback or the
//! benchmark's own network namespaces only.
//!
//!   mqtt_load publish PORT COUNT PUBLISHERS QOS DEVICES   # 300-byte reports
//!   mqtt_load latency PORT FLIPS                          # publish → retained verdict
//!   mqtt_load quarantine MQTT ACCT NAS SECRET FLIPS       # publish → Disconnect received
//!   mqtt_load udpsend ADDR RATE                           # a steady UDP flow (WireGuard bench)
//!   mqtt_load wgflip MQTT LISTEN DEVICE FLIPS             # publish → flow cut by the WireGuard ACL
//!   mqtt_load flap PORT RATE SECONDS DEVICES FIRST_SEQ     # RATE verdict changes/s, paced
//!
//! `publish` prints the time it took to hand every message to the broker
//! (QoS 1: until every PUBACK). `latency` flips one device between compliant
//! and noncompliant FLIPS times, each time waiting for warden's retained
//! status message, and prints p50/p99 of publish → status received.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::time::{Duration, Instant};

fn report(seq: u64, encrypted: bool, ts: &str) -> Vec<u8> {
    let mut r = format!(
        r#"{{"seq":{seq},"ts":"{ts}","os":"android","os_version":"14.0.1","security_patch":"{}","encrypted":{encrypted},"passcode":true,"rooted":false,"kiosk_mode":true,"apps_running":["com.acme.pos"],"apps_installed":["com.acme.pos"],"wifi_ssid":"ACME-STORE","open_ports":[443],"groups":["pos"],"agent_version":"3.2.0""#,
        &ts[..10]
    );
    // Pad to 300 bytes, the message size the targets are stated for.
    let pad = 300usize.saturating_sub(r.len() + 22);
    r.push_str(&format!(r#","attributes":{{"p":"{}"}}}}"#, "x".repeat(pad)));
    r.into_bytes()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn connect(id: &str, port: u16, cap: usize) -> (AsyncClient, rumqttc::EventLoop) {
    let (c, mut el) = AsyncClient::new(options(id, port), cap);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    (c, el)
}

fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30)).set_inflight(1000).set_request_channel_capacity(10_000);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

async fn publish(port: u16, count: u64, publishers: u64, qos: QoS, devices: u64) {
    let ts = now_rfc3339();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let ts = ts.clone();
        tasks.push(tokio::spawn(async move {
            let (client, mut el) = connect(&format!("bench-pub-{p}-{}", std::process::id()), port, 10_000);
            let mine = count / publishers + u64::from(p < count % publishers);
            let done = tokio::spawn(async move {
                let mut acked = 0u64;
                let mut sent = 0u64;
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                        Ok(Event::Outgoing(Outgoing::Publish(_))) => sent += 1,
                        Ok(_) => {}
                        Err(e) => panic!("publisher connection failed: {e}"),
                    }
                    let finished = if qos == QoS::AtMostOnce { sent >= mine } else { acked >= mine };
                    if finished {
                        // Let the last packets leave the socket buffer.
                        let _ = tokio::time::timeout(Duration::from_millis(50), el.poll()).await;
                        return;
                    }
                }
            });
            // Publisher p owns devices p, p+P, p+2P...: each device's seq rises in order.
            let mine_devices = (devices / publishers).max(1);
            for i in 0..mine {
                let device = p + (i % mine_devices) * publishers;
                let seq = i / mine_devices + 1;
                let topic = format!("devices/dev-{device}/telemetry");
                client.publish(topic, qos, false, report(seq, true, &ts)).await.expect("queue publish");
            }
            done.await.expect("publisher task");
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    println!("published {count} in {:.3} s", start.elapsed().as_secs_f64());
}

/// Reports at `rate` per second for `seconds`, QoS 1, each one flipping a
/// device of `dev-0..devices` (the `publish` fleet) between compliant and
/// noncompliant (the first round makes them noncompliant, the next
/// compliant again...): `first_seq` must be above every seq those devices
/// sent. Paced per millisecond; prints the rate it kept.
async fn flap(port: u16, rate: u64, seconds: u64, devices: u64, first_seq: u64) {
    let ts = now_rfc3339();
    let (client, mut el) = connect(&format!("bench-flap-{}", std::process::id()), port, 100_000);
    let total = rate * seconds;
    let acks = tokio::spawn(async move {
        let mut acked = 0u64;
        while acked < total {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("flap connection failed: {e}"),
            }
        }
    });
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let due = (start.elapsed().as_micros() as u64 * rate / 1_000_000).min(total);
        while sent < due {
            let device = sent % devices;
            let seq = first_seq + sent / devices;
            // Odd rounds noncompliant, even rounds compliant again.
            let encrypted = (seq - first_seq) % 2 == 1;
            let topic = format!("devices/dev-{device}/telemetry");
            client.publish(topic, QoS::AtLeastOnce, false, report(seq, encrypted, &ts)).await.expect("queue publish");
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let paced = start.elapsed().as_secs_f64();
    acks.await.expect("acks");
    println!(
        "flap: {sent} reports in {paced:.3} s ({:.0}/s), all acknowledged after {:.3} s",
        sent as f64 / paced,
        start.elapsed().as_secs_f64()
    );
}

async fn latency(port: u16, flips: u32) {
    let (client, mut el) = connect(&format!("bench-lat-{}", std::process::id()), port, 100);
    let device = format!("lat-{}", std::process::id());
    client.subscribe(format!("warden/compliance/{device}"), QoS::AtMostOnce).await.expect("subscribe");
    // Wait for the SUBACK.
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await.expect("connect") {
            break;
        }
    }
    let mut samples = Vec::with_capacity(flips as usize);
    for i in 0..flips {
        let encrypted = i % 2 == 1;
        let want: &[u8] = if encrypted { b"\"verdict\":\"compliant\"" } else { b"\"verdict\":\"noncompliant\"" };
        let start = Instant::now();
        client
            .publish(
                format!("devices/{device}/telemetry"),
                QoS::AtMostOnce,
                false,
                report(u64::from(i) + 1, encrypted, &now_rfc3339()),
            )
            .await
            .expect("publish");
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Event::Incoming(Packet::Publish(p)) = el.poll().await.expect("connection")
                    && p.payload.windows(want.len()).any(|w| w == want)
                {
                    return;
                }
            }
        })
        .await;
        assert!(got.is_ok(), "no status message within 5 s for flip {i}");
        samples.push(start.elapsed());
    }
    samples.sort();
    let q = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3;
    println!("latency over {flips} flips: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms", q(0.5), q(0.99), q(1.0));
}

/// A plain subscriber of `topic` through the broker on `mqtt`: the receive
/// time of each message, for splitting the MQTT hop off a measurement.
async fn observe(mqtt: u16, topic: &str, name: &str) -> tokio::sync::mpsc::UnboundedReceiver<Instant> {
    let (observer, mut el) = connect(&format!("{name}-{}", std::process::id()), mqtt, 100);
    observer.subscribe(topic, QoS::AtMostOnce).await.expect("subscribe");
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await.expect("observer connect") {
            break;
        }
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _keep = observer;
        while let Ok(event) = el.poll().await {
            if let Event::Incoming(Packet::Publish(_)) = event
                && tx.send(Instant::now()).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Publish → Disconnect-Request received, over FLIPS verdict flips of one
/// device whose session warden knows from an Accounting Start we send.
async fn quarantine(mqtt: u16, acct: u16, nas_port: u16, secret: String, flips: u32) {
    use warden::radius::{AttrType, Builder, Code, Packet as Radius};
    let secret = secret.into_bytes();
    let nas = tokio::net::UdpSocket::bind(("127.0.0.1", nas_port)).await.expect("bind the NAS port");
    let (client, mut el) = connect(&format!("bench-q-{}", std::process::id()), mqtt, 100);
    tokio::spawn(async move {
        loop {
            if el.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let device = format!("q-{}", std::process::id());
    // A MAC of its own per run: a MAC belongs to one live device, and the
    // previous run's device still holds its own.
    let pid = std::process::id();
    let mac = &format!("aa:bb:cc:fe:{:02x}:{:02x}", (pid >> 8) & 0xff, pid & 0xff);
    // An observer subscribed to the same telemetry topic through the same
    // broker: its receive time splits the end-to-end figure into the MQTT hop
    // (publish → a subscriber has it) and what follows (warden + the UDP hop).
    let mut seen = observe(mqtt, &format!("devices/{device}/telemetry"), "bench-obs").await;
    let publish = |seq: u64, encrypted: bool| {
        let mut r: serde_json::Value = serde_json::from_slice(&report(seq, encrypted, &now_rfc3339())).expect("json");
        r["mac_addresses"] = serde_json::json!([mac]);
        let topic = format!("devices/{device}/telemetry");
        let client = client.clone();
        async move { client.publish(topic, QoS::AtMostOnce, false, r.to_string()).await.expect("publish") }
    };
    publish(1, true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The session: Accounting Start from "the NAS" (127.0.0.1).
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut b = Builder::new(Code::AccountingRequest, 1, false);
    b.attr_u32(AttrType::AcctStatusType, 1).unwrap();
    b.attr(AttrType::AcctSessionId, format!("bench-session-{pid}").as_bytes()).unwrap();
    b.attr(AttrType::CallingStationId, mac.as_bytes()).unwrap();
    sock.send_to(&b.finish_request(&secret), ("127.0.0.1", acct)).await.expect("send accounting");
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("Accounting-Response")
        .expect("recv");
    // After each Disconnect-ACK the device re-authenticates and its NAS
    // starts a new session (warden ends the disconnected one's record).
    let restart_session = |n: u32| {
        let mut b = Builder::new(Code::AccountingRequest, (n % 256) as u8, false);
        b.attr_u32(AttrType::AcctStatusType, 1).unwrap();
        b.attr(AttrType::AcctSessionId, format!("bench-session-{pid}-{n}").as_bytes()).unwrap();
        b.attr(AttrType::CallingStationId, mac.as_bytes()).unwrap();
        b.finish_request(&secret)
    };
    // The observer saw the first report before the session existed.
    let _ = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await;
    let mut samples = Vec::with_capacity(flips as usize);
    let mut hops = Vec::with_capacity(flips as usize);
    for i in 0..flips {
        let start = Instant::now();
        // Even flips break the encryption rule (quarantine), odd ones restore it.
        publish(u64::from(i) + 2, i % 2 == 1).await;
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), nas.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no Disconnect-Request within 5 s for flip {i}"))
            .expect("recv");
        samples.push(start.elapsed());
        let observed = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("the observer missed flip {i}"));
        hops.push(observed.saturating_duration_since(start));
        let req = Radius::decode(&buf[..n]).expect("a RADIUS packet");
        assert_eq!(req.code(), Code::DisconnectRequest);
        assert!(req.request_authenticator_valid(&secret), "Disconnect-Request authenticator");
        let ack =
            Builder::new(Code::DisconnectAck, req.identifier(), false).finish_response(&secret, &req.authenticator());
        nas.send_to(&ack, from).await.expect("ack");
        sock.send_to(&restart_session(i), ("127.0.0.1", acct)).await.expect("send accounting");
        tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("Accounting-Response")
            .expect("recv");
        // Paced below warden's CoA rate cap (500/s per NAS): back-to-back
        // flips would measure the cap's queue, not the path.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    samples.sort();
    hops.sort();
    let q = |v: &[Duration], p: f64| v[((v.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3;
    println!(
        "quarantine over {flips} flips: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        q(&samples, 0.5),
        q(&samples, 0.99),
        q(&samples, 1.0)
    );
    println!(
        "mqtt hop (publish → observer subscriber) over {flips} flips: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        q(&hops, 0.5),
        q(&hops, 0.99),
        q(&hops, 1.0)
    );
}

/// Sends 64-byte UDP datagrams to `to` at about `rate` per second until
/// killed: the steady flow the WireGuard flip benchmark cuts.
fn udp_send(to: std::net::SocketAddr, rate: u64) {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
    let gap = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut next = Instant::now();
    let mut seq = 0u64;
    let mut msg = [0u8; 64];
    loop {
        msg[..8].copy_from_slice(&seq.to_be_bytes());
        let _ = sock.send_to(&msg, to);
        seq += 1;
        next += gap;
        // Sleep rather than spin: the sender must not take a core from
        // what it measures (2 cores here). The timer slack makes the real
        // rate a little lower; the gaps stay around 0.1 ms.
        if let Some(ahead) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(ahead);
        } else {
            next = Instant::now();
        }
    }
}

/// Flips `device` noncompliant and back FLIPS times while a steady UDP flow
/// arrives on `listen`; for each quarantine, publish → the last datagram
/// that still got through (the first dropped one comes right after it).
async fn wg_flip(mqtt: u16, listen: std::net::SocketAddr, device: String, flips: u32) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let base = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let sock = std::net::UdpSocket::bind(listen).expect("bind the receiver");
    let seen = Arc::clone(&last);
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while sock.recv(&mut buf).is_ok() {
            seen.store(base.elapsed().as_nanos() as u64, Ordering::Release);
        }
    });
    let (client, mut el) = connect(&format!("bench-wgflip-{}", std::process::id()), mqtt, 100);
    tokio::spawn(async move {
        loop {
            if el.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    // An observer of the same topic through the same broker: its receive
    // time is the MQTT hop alone (as in `quarantine`).
    let mut seen = observe(mqtt, &format!("devices/{device}/telemetry"), "bench-wgobs").await;
    let mut hops = Vec::with_capacity(flips as usize);
    let mut after_hop = Vec::with_capacity(flips as usize);
    let now_ns = || base.elapsed().as_nanos() as u64;
    let mut seq = 1_000u64;
    let mut samples = Vec::with_capacity(flips as usize);
    for i in 0..flips {
        // Flowing: a datagram within the last 2 ms.
        let wait = Instant::now();
        while now_ns().saturating_sub(last.load(Ordering::Acquire)) > 2_000_000 {
            assert!(wait.elapsed() < Duration::from_secs(5), "no flow before flip {i}");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        seq += 1;
        let t0 = now_ns();
        let started = Instant::now();
        client
            .publish(format!("devices/{device}/telemetry"), QoS::AtMostOnce, false, report(seq, false, &now_rfc3339()))
            .await
            .expect("publish");
        let observed = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.ok().flatten();
        if let Some(at) = observed {
            hops.push(at.saturating_duration_since(started));
        }
        // Stopped: nothing for 20 ms (the flow runs at 20k/s).
        let wait = Instant::now();
        while now_ns().saturating_sub(last.load(Ordering::Acquire)) < 20_000_000 {
            assert!(wait.elapsed() < Duration::from_secs(5), "the flow did not stop after flip {i}");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let last_through = last.load(Ordering::Acquire);
        samples.push(Duration::from_nanos(last_through.saturating_sub(t0)));
        // Broker delivered (≈ warden has it, ≈ the verdict) → the flow cut:
        // the path after the MQTT hop.
        if let Some(at) = observed {
            let at_ns = at.saturating_duration_since(base).as_nanos() as u64;
            after_hop.push(Duration::from_nanos(last_through.saturating_sub(at_ns)));
        }
        seq += 1;
        client
            .publish(format!("devices/{device}/telemetry"), QoS::AtMostOnce, false, report(seq, true, &now_rfc3339()))
            .await
            .expect("publish");
        let _ = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await;
    }
    hops.sort();
    after_hop.sort();
    after_hop.sort();
    samples.sort();
    let q = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3;
    println!(
        "publish → last packet through, over {flips} quarantines: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        q(0.5),
        q(0.99),
        q(1.0)
    );
    let h = |p: f64| hops[((hops.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3;
    if !hops.is_empty() {
        println!("mqtt hop alone (publish → observer subscriber): p50 {:.3} ms  p99 {:.3} ms", h(0.5), h(0.99));
        let a = |p: f64| after_hop[((after_hop.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3;
        println!(
            "after the hop (broker delivered → last packet through): p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            a(0.5),
            a(0.99),
            a(1.0)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| -> u64 {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("usage: see bench/mqtt_load.rs"))
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    match args.get(1).map(String::as_str) {
        Some("publish") => {
            let qos = if arg(5) == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
            rt.block_on(publish(arg(2) as u16, arg(3), arg(4), qos, arg(6)));
        }
        Some("latency") => rt.block_on(latency(arg(2) as u16, arg(3) as u32)),
        Some("flap") => rt.block_on(flap(arg(2) as u16, arg(3), arg(4), arg(5), arg(6))),
        Some("quarantine") => {
            let secret = args.get(5).cloned().expect("secret");
            rt.block_on(quarantine(arg(2) as u16, arg(3) as u16, arg(4) as u16, secret, arg(6) as u32));
        }
        Some("udpsend") => {
            let to = args.get(2).and_then(|a| a.parse().ok()).expect("udpsend ADDR RATE");
            udp_send(to, arg(3));
        }
        Some("wgflip") => {
            let listen = args.get(3).and_then(|a| a.parse().ok()).expect("wgflip MQTT LISTEN DEVICE FLIPS");
            let device = args.get(4).cloned().expect("device");
            rt.block_on(wg_flip(arg(2) as u16, listen, device, arg(5) as u32));
        }
        _ => eprintln!("usage: mqtt_load publish PORT COUNT PUBLISHERS QOS DEVICES | latency PORT FLIPS"),
    }
}
