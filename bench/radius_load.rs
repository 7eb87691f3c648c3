//! RADIUS load generator for bench/radius.py: keeps WINDOW Access-Requests
//! in flight against one server (loopback only) for SECONDS, and prints
//! requests/s and latency percentiles. The same program drives warden and
//! FreeRADIUS, so the two are measured alike.
//!
//!   radius_load HOST:PORT SECRET pap|mab|acct WINDOW SECONDS [LIMIT]
//!
//! `acct` sends Accounting-Start for new sessions (one MAC each, from a
//! counter) to the accounting port, to fill a server's session table;
//! LIMIT stops after that many requests.
//!
//! Every request carries Message-Authenticator; every answer is checked
//! (Response Authenticator) and counted as accept or reject.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use warden::radius::{AttrType, Builder, Code, Packet};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: radius_load HOST:PORT SECRET pap|mab|acct WINDOW SECONDS [LIMIT]";
    let target: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let secret = args.get(2).expect(usage).as_bytes().to_vec();
    let mab = args.get(3).map(String::as_str) == Some("mab");
    let acct = args.get(3).map(String::as_str) == Some("acct");
    let window: usize = args.get(4).and_then(|a| a.parse().ok()).expect(usage);
    let seconds: u64 = args.get(5).and_then(|a| a.parse().ok()).expect(usage);
    let limit: u64 = args.get(6).and_then(|a| a.parse().ok()).unwrap_or(u64::MAX);
    // One socket per 200 requests in flight: each has 256 identifiers.
    let sockets: Vec<UdpSocket> = (0..window.div_ceil(200))
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect();
    let per_socket = window.div_ceil(sockets.len());
    let mut inflight: Vec<HashMap<u8, (Instant, [u8; 16])>> = vec![HashMap::new(); sockets.len()];
    let mut next_id = vec![0u8; sockets.len()];
    let mut latencies: Vec<Duration> = Vec::with_capacity(1 << 20);
    let (mut accepts, mut rejects, mut lost, mut bad) = (0u64, 0u64, 0u64, 0u64);
    let mut counter = 0u64;
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut buf = [0u8; 4096];
    while Instant::now() < end && (counter < limit || inflight.iter().any(|f| !f.is_empty())) {
        for (i, s) in sockets.iter().enumerate() {
            // Top up this socket's share of the window.
            while inflight[i].len() < per_socket && counter < limit {
                let id = next_id[i];
                next_id[i] = id.wrapping_add(1);
                if inflight[i].contains_key(&id) {
                    break;
                }
                counter += 1;
                let ra: [u8; 16] = {
                    let mut a = [0u8; 16];
                    a[..8].copy_from_slice(&counter.to_be_bytes());
                    a[8..].copy_from_slice(&(i as u64).to_be_bytes());
                    a
                };
                if acct {
                    let mut b = Builder::new(Code::AccountingRequest, id, true);
                    let mac = format!(
                        "02:00:{:02x}:{:02x}:{:02x}:{:02x}",
                        (counter >> 24) & 0xff,
                        (counter >> 16) & 0xff,
                        (counter >> 8) & 0xff,
                        counter & 0xff
                    );
                    b.attr_u32(AttrType::AcctStatusType, 1).unwrap();
                    b.attr(AttrType::AcctSessionId, format!("s{counter}").as_bytes()).unwrap();
                    b.attr(AttrType::CallingStationId, mac.as_bytes()).unwrap();
                    b.attr(AttrType::NasIpAddress, &[127, 0, 0, 1]).unwrap();
                    let pkt = b.finish_request(&secret);
                    let ra: [u8; 16] = pkt[4..20].try_into().unwrap();
                    if s.send_to(&pkt, target).is_err() {
                        break;
                    }
                    inflight[i].insert(id, (Instant::now(), ra));
                    continue;
                }
                let mut b = Builder::new(Code::AccessRequest, id, true);
                if mab {
                    let mac = format!("aabbcc{:06x}", counter % 1000);
                    b.attr(AttrType::UserName, mac.as_bytes()).unwrap();
                    b.user_password(mac.as_bytes(), &secret, &ra).unwrap();
                    b.attr(AttrType::CallingStationId, mac.as_bytes()).unwrap();
                    b.attr_u32(AttrType::ServiceType, 10).unwrap();
                } else {
                    b.attr(AttrType::UserName, b"alice").unwrap();
                    b.user_password(b"correct horse", &secret, &ra).unwrap();
                }
                b.attr(AttrType::NasIpAddress, &[127, 0, 0, 1]).unwrap();
                let pkt = b.finish_access_request(&secret, &ra);
                if s.send_to(&pkt, target).is_err() {
                    break;
                }
                inflight[i].insert(id, (Instant::now(), ra));
            }
            // Read what has arrived.
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                let Ok(p) = Packet::decode(&buf[..n]) else {
                    bad += 1;
                    continue;
                };
                let Some((sent, ra)) = inflight[i].remove(&p.identifier()) else { continue };
                if !p.response_authenticator_valid(&secret, &ra) {
                    bad += 1;
                    continue;
                }
                latencies.push(sent.elapsed());
                match p.code() {
                    Code::AccessAccept | Code::AccountingResponse => accepts += 1,
                    _ => rejects += 1,
                }
            }
            // A request unanswered for a second is lost: free its id.
            let now = Instant::now();
            let before = inflight[i].len();
            inflight[i].retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(1));
            lost += (before - inflight[i].len()) as u64;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    latencies.sort();
    let q =
        |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p) as usize).map_or(0.0, |d| d.as_secs_f64() * 1e3);
    println!(
        "{} req/s  p50 {:.3} ms  p99 {:.3} ms  accept {accepts}  reject {rejects}  lost {lost}  bad {bad}",
        ((accepts + rejects) as f64 / secs) as u64,
        q(0.5),
        q(0.99)
    );
}
