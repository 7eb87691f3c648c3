//! RADIUS load generator for bench/radius.py: keeps WINDOW Access-Requests
//! in flight against one server (loopback only) for SECONDS, and prints
//! requests/s and latency percentiles. The same program drives warden and
//! FreeRADIUS, so the two are measured alike.
//!
//!   radius_load HOST:PORT SECRET pap|mab|acct WINDOW SECONDS [LIMIT]
//!               [--population N] [--sources S] [--rate R] [--blocking]
//!
//! `pap` asks for `user{i:07}` with password `pw-{i}`, `mab` for MAC
//! `aabbcc{i:06x}`, i drawn at random from 0..N (`--population`, default 1:
//! user `alice` / password `correct horse` and MAC aabbcc000000).
//! `--sources`: UDP source ports to spread the requests over, as a fleet of
//! NASes (or one NAS with several source ports) does; default 1.
//! `--rate`: requests per second at most (a fixed offered load, for latency
//! under a background storm); default unpaced, WINDOW in flight.
//!
//! `acct` sends Accounting-Start for new sessions (one MAC each, from a
//! counter) to the accounting port, to fill a server's session table;
//! LIMIT stops after that many requests.
//!
//! One thread polls every source without sleeping (the default): the server's
//! answers never have to wake a thread, as when the NASes are other
//! machines, at the price of one core. `--blocking` gives each source a
//! thread blocked in `recv` instead: less CPU, but on loopback every answer
//! then pays for waking its receiver, inside the server's `sendto`.
//!
//! Every request carries Message-Authenticator; every answer is checked
//! (Response Authenticator) and counted as accept or reject.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use warden::radius::{AttrType, Builder, Code, Packet, crypto};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Pap,
    Mab,
    Acct,
}

struct Plan {
    target: SocketAddr,
    secret: Vec<u8>,
    /// The secret with its HMAC key schedule done once, as a NAS keeps it.
    key: crypto::Key,
    mode: Mode,
    per_source: usize,
    end: Instant,
    limit: u64,
    population: u64,
    /// Requests per second for this source, if paced.
    rate: Option<f64>,
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    accepts: u64,
    rejects: u64,
    lost: u64,
    bad: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: radius_load HOST:PORT SECRET pap|mab|acct WINDOW SECONDS [LIMIT] [--population N] [--sources S] [--rate R] [--blocking]";
    let target: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let secret = args.get(2).expect(usage).as_bytes().to_vec();
    let mode = match args.get(3).map(String::as_str) {
        Some("pap") => Mode::Pap,
        Some("mab") => Mode::Mab,
        Some("acct") => Mode::Acct,
        _ => panic!("{usage}"),
    };
    let window: usize = args.get(4).and_then(|a| a.parse().ok()).expect(usage);
    let seconds: u64 = args.get(5).and_then(|a| a.parse().ok()).expect(usage);
    let limit: u64 = args.get(6).filter(|a| !a.starts_with("--")).and_then(|a| a.parse().ok()).unwrap_or(u64::MAX);
    let flag = |name: &str| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(|v| v.parse::<u64>().expect(usage))
    };
    let population = flag("--population").unwrap_or(1).max(1);
    // Each source has 256 identifiers: at most 200 in flight on one.
    let sources = (flag("--sources").unwrap_or(1).max(1) as usize).max(window.div_ceil(200));
    let rate = flag("--rate").map(|r| r as f64 / sources as f64);
    let start = Instant::now();
    let plan = Plan {
        target,
        key: crypto::Key::new(&secret),
        secret,
        mode,
        per_source: window.div_ceil(sources).max(1),
        end: start + Duration::from_secs(seconds),
        limit,
        population,
        rate,
    };
    let counter = AtomicU64::new(0);
    let tallies: Vec<Tally> = if args.iter().any(|a| a == "--blocking") {
        // A thread per source, blocked in recv while its requests are out.
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..sources)
                .map(|i| {
                    let (plan, counter) = (&plan, &counter);
                    s.spawn(move || {
                        let mut src = Source::new(i, true, plan);
                        while Instant::now() < plan.end && !src.finished() {
                            src.step(plan, counter, start);
                        }
                        src.tally
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().expect("a source thread failed")).collect()
        })
    } else {
        // One thread polling every source: it never sleeps, so answers
        // wake nobody (as with NASes on other machines), at the price of
        // the core it spins on.
        let mut srcs: Vec<Source> = (0..sources).map(|i| Source::new(i, false, &plan)).collect();
        while Instant::now() < plan.end && !srcs.iter().all(Source::finished) {
            for src in &mut srcs {
                src.step(&plan, &counter, start);
            }
        }
        srcs.into_iter().map(|s| s.tally).collect()
    };
    let secs = start.elapsed().as_secs_f64();
    let mut all = Tally::default();
    for t in tallies {
        all.latencies.extend(t.latencies);
        all.accepts += t.accepts;
        all.rejects += t.rejects;
        all.lost += t.lost;
        all.bad += t.bad;
    }
    all.latencies.sort();
    let q = |p: f64| {
        all.latencies.get(((all.latencies.len() as f64 - 1.0) * p) as usize).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "{} req/s  p50 {:.3} ms  p99 {:.3} ms  accept {}  reject {}  lost {}  bad {}",
        ((all.accepts + all.rejects) as f64 / secs) as u64,
        q(0.5),
        q(0.99),
        all.accepts,
        all.rejects,
        all.lost,
        all.bad
    );
}

/// One source port and its requests in flight.
struct Source {
    socket: UdpSocket,
    index: usize,
    inflight: HashMap<u8, (Instant, [u8; 16])>,
    next_id: u8,
    sent: u64,
    tally: Tally,
    rng: u64,
    swept: Instant,
    done: bool,
    /// Where answers land: allocated once, not zeroed per poll (that memset
    /// was 4% of the generator's CPU, taken from the server it measures).
    buf: Box<[u8; 4096]>,
}

impl Source {
    fn new(index: usize, blocking: bool, plan: &Plan) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        if blocking {
            let wait = Duration::from_millis(if plan.rate.is_some() { 1 } else { 5 });
            socket.set_read_timeout(Some(wait)).expect("timeout");
        } else {
            socket.set_nonblocking(true).expect("nonblocking");
        }
        Self {
            socket,
            index,
            inflight: HashMap::new(),
            next_id: 0,
            sent: 0,
            tally: Tally { latencies: Vec::with_capacity(1 << 18), ..Tally::default() },
            rng: 0x9E37_79B9_7F4A_7C15u64 ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
            swept: Instant::now(),
            done: false,
            buf: Box::new([0u8; 4096]),
        }
    }

    fn finished(&self) -> bool {
        self.done && self.inflight.is_empty()
    }

    /// Tops up this source's share of the window, then takes the answers
    /// that arrived (a blocking socket waits briefly for one).
    fn step(&mut self, plan: &Plan, counter: &AtomicU64, started: Instant) {
        while self.inflight.len() < plan.per_source
            && !self.done
            && plan.rate.is_none_or(|r| (self.sent as f64) < r * started.elapsed().as_secs_f64())
        {
            let id = self.next_id;
            self.next_id = id.wrapping_add(1);
            if self.inflight.contains_key(&id) {
                break;
            }
            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
            if n > plan.limit {
                self.done = true;
                break;
            }
            self.sent += 1;
            let ra: [u8; 16] = {
                let mut a = [0u8; 16];
                a[..8].copy_from_slice(&n.to_be_bytes());
                a[8..].copy_from_slice(&(self.index as u64).to_be_bytes());
                a
            };
            let (pkt, ra) = request(plan, id, n, ra, &mut self.rng);
            if self.socket.send_to(&pkt, plan.target).is_err() {
                break;
            }
            self.inflight.insert(id, (Instant::now(), ra));
        }
        while let Ok((n, _)) = self.socket.recv_from(&mut self.buf[..]) {
            answer(&self.buf[..n], plan, &mut self.inflight, &mut self.tally);
            if self.inflight.is_empty() {
                break;
            }
        }
        // A request unanswered for a second is lost: free its id.
        let now = Instant::now();
        if now.duration_since(self.swept) >= Duration::from_millis(100) {
            let before = self.inflight.len();
            self.inflight.retain(|_, (at, _)| now.duration_since(*at) < Duration::from_secs(1));
            self.tally.lost += (before - self.inflight.len()) as u64;
            self.swept = now;
        }
    }
}

/// Request number `n` with identifier `id`; returns it and the Request
/// Authenticator its answer is checked against.
fn request(plan: &Plan, id: u8, n: u64, ra: [u8; 16], rng: &mut u64) -> (Vec<u8>, [u8; 16]) {
    let secret = &plan.secret;
    if plan.mode == Mode::Acct {
        let mut b = Builder::new(Code::AccountingRequest, id, true);
        let mac =
            format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", (n >> 24) & 0xff, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
        b.attr_u32(AttrType::AcctStatusType, 1).unwrap();
        b.attr(AttrType::AcctSessionId, format!("s{n}").as_bytes()).unwrap();
        b.attr(AttrType::CallingStationId, mac.as_bytes()).unwrap();
        b.attr(AttrType::NasIpAddress, &[127, 0, 0, 1]).unwrap();
        let pkt = b.finish_request_with(&plan.key);
        let ra: [u8; 16] = pkt[4..20].try_into().unwrap();
        return (pkt, ra);
    }
    let mut b = Builder::new(Code::AccessRequest, id, true);
    // xorshift64: a different member of the population each time.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let who = *rng % plan.population;
    if plan.mode == Mode::Mab {
        let mac = format!("aabbcc{who:06x}");
        b.attr(AttrType::UserName, mac.as_bytes()).unwrap();
        b.user_password(mac.as_bytes(), secret, &ra).unwrap();
        b.attr(AttrType::CallingStationId, mac.as_bytes()).unwrap();
        b.attr_u32(AttrType::ServiceType, 10).unwrap();
    } else if plan.population == 1 {
        b.attr(AttrType::UserName, b"alice").unwrap();
        b.user_password(b"correct horse", secret, &ra).unwrap();
    } else {
        b.attr(AttrType::UserName, format!("user{who:07}").as_bytes()).unwrap();
        b.user_password(format!("pw-{who}").as_bytes(), secret, &ra).unwrap();
    }
    b.attr(AttrType::NasIpAddress, &[127, 0, 0, 1]).unwrap();
    (b.finish_access_request_with(&plan.key, &ra), ra)
}

fn answer(datagram: &[u8], plan: &Plan, inflight: &mut HashMap<u8, (Instant, [u8; 16])>, t: &mut Tally) {
    let Ok(p) = Packet::decode(datagram) else {
        t.bad += 1;
        return;
    };
    let Some((sent, ra)) = inflight.remove(&p.identifier()) else { return };
    if !p.response_authenticator_valid(&plan.secret, &ra) {
        t.bad += 1;
        return;
    }
    t.latencies.push(sent.elapsed());
    match p.code() {
        Code::AccessAccept | Code::AccountingResponse => t.accepts += 1,
        _ => t.rejects += 1,
    }
}
