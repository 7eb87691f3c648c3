//! The router against a real Noise peer (a second boringtun session playing
//! the remote device), with no sockets: every datagram is handed across, in
//! simulated time (`Net::now`, moved by the test).

use super::acl::{Access, Rule};
use super::packet::tests::ipv4;
use super::packet::{TCP, UDP};
use super::peers::PeerSpec;
use super::router::{Dest, Event, Fate, Router, SESSION_LIFETIME, Transmits, scratch};
use super::tunnel::{Discard, Step, Tunnel, public_key};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SERVER: [u8; 32] = [0x11; 32];
const CLIENT: [u8; 32] = [0x22; 32];
/// Documentation addresses (RFC 5737): values only, nothing is sent.
const FROM: &str = "192.0.2.7:40000";
const PEER_IP: [u8; 4] = [10, 99, 0, 2];
const GATEWAY_IP: [u8; 4] = [10, 99, 0, 1];
const OTHER_IP: [u8; 4] = [10, 98, 0, 2];

/// Where simulated time starts: any instant will do.
#[allow(clippy::disallowed_methods)]
fn start() -> Instant {
    Instant::now()
}

struct Net {
    now: Instant,
    router: Router,
    client: Tunnel,
    from: SocketAddr,
    out: Transmits,
    buf: Box<[u8]>,
    cbuf: Box<[u8]>,
}

fn spec() -> PeerSpec {
    PeerSpec {
        device_id: "laptop-1".into(),
        public_key: public_key(&CLIENT),
        allowed_ips: vec!["10.99.0.2/32".parse().unwrap()],
        persistent_keepalive: None,
    }
}

fn fate(out: &Transmits, from_peer: bool, f: Fate) -> u64 {
    out.fates[usize::from(!from_peer)][f as usize]
}

fn discards(out: &Transmits, d: Discard) -> u64 {
    out.discards[Discard::ALL.iter().position(|x| *x == d).unwrap()]
}

impl Net {
    fn new() -> Self {
        Self::with_peer(spec())
    }

    fn with_peer(spec: PeerSpec) -> Self {
        let now = start();
        let router = Router::new(SERVER, vec![Rule::parse("10.99.0.1/32").unwrap()], now, 1);
        router.set_peers(&[spec], vec![Rule::parse("10.99.0.1/32").unwrap()], |_| Access::Full);
        Self::around(router, now)
    }

    /// A client for `router`, at `now`.
    fn around(router: Router, now: Instant) -> Self {
        let client = Tunnel::new(&CLIENT, &router.public_key(), 77, None);
        let (from, out) = (FROM.parse().unwrap(), Transmits::default());
        Self { now, router, client, from, out, buf: scratch(), cbuf: scratch() }
    }

    /// Moves simulated time on.
    fn wait(&mut self, d: Duration) {
        self.now += d;
    }

    /// The router's timers at `now`: the datagrams they send.
    fn tick(&mut self) -> Vec<Vec<u8>> {
        self.out.clear();
        self.router.update_timers(self.now, &mut self.buf, &mut self.out);
        self.out.iter().map(|(_, b)| b.to_vec()).collect()
    }

    /// Hands every network transmit of the router to the client, and the
    /// client's answers back, until quiet. Returns the inner packets the
    /// client decrypted.
    fn pump(&mut self) -> Vec<Vec<u8>> {
        let mut inner = Vec::new();
        for _ in 0..8 {
            let to_client: Vec<Vec<u8>> = self
                .out
                .iter()
                .filter(|(d, _)| matches!(d, Dest::Network(_)))
                .map(|(d, b)| {
                    assert_eq!(d, Dest::Network(self.from), "answers go to where the peer spoke from");
                    b.to_vec()
                })
                .collect();
            self.out.clear();
            if to_client.is_empty() {
                break;
            }
            for dgram in to_client {
                let mut replies = Vec::new();
                match self.client.decapsulate(self.now, None, &dgram, &mut self.cbuf) {
                    Step::Network(b) => {
                        replies.push(b.to_vec());
                        while let Step::Network(q) = self.client.decapsulate(self.now, None, &[], &mut self.cbuf) {
                            replies.push(q.to_vec());
                        }
                    }
                    Step::Inner(p) => inner.push(p.to_vec()),
                    Step::Done => {}
                    Step::Discard(d) => panic!("client refused a datagram: {d:?}"),
                }
                for r in replies {
                    self.router.handle_datagram(self.now, self.from, &r, &mut self.buf, &mut self.out);
                }
            }
        }
        inner
    }

    /// The client sends `packet` through the tunnel; returns what reached the TUN.
    fn send(&mut self, packet: &[u8]) -> Vec<Vec<u8>> {
        self.out.clear();
        let dgram = match self.client.encapsulate(self.now, packet, &mut self.cbuf) {
            Step::Network(b) => b.to_vec(),
            other => panic!("client could not encapsulate: {other:?}"),
        };
        self.router.handle_datagram(self.now, self.from, &dgram, &mut self.buf, &mut self.out);
        let tun: Vec<Vec<u8>> = self.out.iter().filter(|(d, _)| *d == Dest::Tun).map(|(_, b)| b.to_vec()).collect();
        tun
    }

    fn connect(&mut self) {
        // The first packet starts the handshake; the client queues it and
        // sends it once the response arrives.
        self.out.clear();
        let init = match self.client.encapsulate(self.now, &ipv4(PEER_IP, GATEWAY_IP, 1, 0, 0), &mut self.cbuf) {
            Step::Network(b) => b.to_vec(),
            other => panic!("no handshake initiation: {other:?}"),
        };
        self.router.handle_datagram(self.now, self.from, &init, &mut self.buf, &mut self.out);
        assert!(!self.out.is_empty(), "a handshake response");
        self.pump();
    }
}

#[test]
fn a_real_peer_connects_and_the_acl_follows_its_access() {
    let mut n = Net::new();
    n.connect();
    let ping_gw = ipv4(PEER_IP, GATEWAY_IP, 1, 0, 0);
    let to_other = ipv4(PEER_IP, OTHER_IP, TCP, 40000, 443);
    assert_eq!(n.send(&to_other), vec![to_other.clone()], "compliant: forwarded");

    let peer = n.router.peer_by_key(&public_key(&CLIENT)).unwrap();
    peer.set_access(Access::Quarantine);
    assert_eq!(n.send(&ping_gw), vec![ping_gw.clone()], "quarantined: remediation still reachable");
    n.out.clear();
    let dgram = match n.client.encapsulate(n.now, &to_other, &mut n.cbuf) {
        Step::Network(b) => b.to_vec(),
        other => panic!("{other:?}"),
    };
    n.router.handle_datagram(n.now, n.from, &dgram, &mut n.buf, &mut n.out);
    assert!(n.out.is_empty(), "quarantined: the next packet to elsewhere is dropped");
    assert_eq!(fate(&n.out, true, Fate::DropQuarantine), 1);

    // The other way: the network answers. Remediation source passes,
    // anything else is dropped before encryption.
    n.out.clear();
    n.router.handle_tun_packet(n.now, &ipv4(GATEWAY_IP, PEER_IP, 1, 0, 0), &mut n.buf, &mut n.out);
    assert_eq!(fate(&n.out, false, Fate::Remediation), 1);
    let got = n.pump();
    assert_eq!(got, vec![ipv4(GATEWAY_IP, PEER_IP, 1, 0, 0)], "the peer decrypts the remediation reply");
    n.router.handle_tun_packet(n.now, &ipv4(OTHER_IP, PEER_IP, UDP, 53, 5000), &mut n.buf, &mut n.out);
    assert!(n.out.is_empty());
    assert_eq!(fate(&n.out, false, Fate::DropQuarantine), 1);

    peer.set_access(Access::Deny);
    n.out.clear();
    let dgram = match n.client.encapsulate(n.now, &ping_gw, &mut n.cbuf) {
        Step::Network(b) => b.to_vec(),
        other => panic!("{other:?}"),
    };
    n.router.handle_datagram(n.now, n.from, &dgram, &mut n.buf, &mut n.out);
    assert_eq!(fate(&n.out, true, Fate::DropBlocked), 1);

    peer.set_access(Access::Full);
    assert_eq!(n.send(&to_other), vec![to_other], "compliant again: restored without a new handshake");
}

#[test]
fn a_spoofed_inner_source_and_a_malformed_inner_packet_are_dropped() {
    let mut n = Net::new();
    n.connect();
    // A TCP header cut short, with an IP total length that agrees (boringtun
    // itself refuses a total length beyond the bytes).
    let mut short_tcp = ipv4(PEER_IP, GATEWAY_IP, TCP, 1, 2)[..30].to_vec();
    short_tcp[2..4].copy_from_slice(&30u16.to_be_bytes());
    for (packet, want) in
        [(ipv4([10, 99, 0, 3], GATEWAY_IP, 1, 0, 0), Fate::DropSpoofed), (short_tcp, Fate::DropMalformed)]
    {
        n.out.clear();
        let dgram = match n.client.encapsulate(n.now, &packet, &mut n.cbuf) {
            Step::Network(b) => b.to_vec(),
            other => panic!("{other:?}"),
        };
        n.router.handle_datagram(n.now, n.from, &dgram, &mut n.buf, &mut n.out);
        assert!(n.out.is_empty(), "{want:?}: nothing forwarded");
        assert_eq!(fate(&n.out, true, want), 1);
    }
}

#[test]
fn strangers_garbage_and_replays_get_no_answer() {
    let mut n = Net::new();
    // A stranger with a valid handshake for our key but not a peer.
    let mut stranger = Tunnel::new(&[0x33; 32], &n.router.public_key(), 5, None);
    let init = match stranger.encapsulate(n.now, &ipv4(PEER_IP, GATEWAY_IP, 1, 0, 0), &mut n.cbuf) {
        Step::Network(b) => b.to_vec(),
        other => panic!("{other:?}"),
    };
    n.router.handle_datagram(n.now, n.from, &init, &mut n.buf, &mut n.out);
    assert!(n.out.is_empty());
    assert_eq!(discards(&n.out, Discard::UnknownKey), 1);

    // Garbage, truncated, oversized-looking, and a handshake whose mac1 is
    // for another server.
    let mut bad_mac = init.clone();
    bad_mac[120] ^= 1;
    for (dgram, want) in [
        (vec![], Discard::Malformed),
        (vec![1, 0, 0], Discard::Malformed),
        (vec![0xff; 200], Discard::Malformed),
        (init[..100].to_vec(), Discard::Malformed),
        (bad_mac, Discard::BadMac),
    ] {
        n.out.clear();
        n.router.handle_datagram(n.now, n.from, &dgram, &mut n.buf, &mut n.out);
        assert!(n.out.is_empty(), "{want:?}");
        assert_eq!(discards(&n.out, want), 1, "{want:?}");
    }

    // The real peer's initiation, replayed after it was answered.
    n.out.clear();
    let init = match n.client.encapsulate(n.now, &ipv4(PEER_IP, GATEWAY_IP, 1, 0, 0), &mut n.cbuf) {
        Step::Network(b) => b.to_vec(),
        other => panic!("{other:?}"),
    };
    n.router.handle_datagram(n.now, n.from, &init, &mut n.buf, &mut n.out);
    assert!(!n.out.is_empty());
    n.out.clear();
    n.router.handle_datagram(n.now, n.from, &init, &mut n.buf, &mut n.out);
    assert!(n.out.is_empty(), "a replayed initiation gets nothing");
    assert_eq!(discards(&n.out, Discard::Replay), 1);

    // Data for an index nobody has.
    let mut data = vec![4u8, 0, 0, 0];
    data.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    data.extend_from_slice(&[0; 40]);
    n.out.clear();
    n.router.handle_datagram(n.now, n.from, &data, &mut n.buf, &mut n.out);
    assert!(n.out.is_empty());
    assert_eq!(discards(&n.out, Discard::UnknownIndex), 1);
}

#[test]
fn a_removed_peer_stops_at_once_and_an_unchanged_one_keeps_its_session() {
    let mut n = Net::new();
    n.connect();
    let rules = vec![Rule::parse("10.99.0.1/32").unwrap()];
    let removed = n.router.set_peers(&[spec()], rules.clone(), |_| Access::Full);
    assert!(removed.is_empty());
    let to_other = ipv4(PEER_IP, OTHER_IP, TCP, 40000, 443);
    assert_eq!(n.send(&to_other), vec![to_other.clone()], "same session after a reload that kept the peer");

    let removed = n.router.set_peers(&[], rules, |_| Access::Full);
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].access(), Access::Deny);
    n.out.clear();
    let dgram = match n.client.encapsulate(n.now, &to_other, &mut n.cbuf) {
        Step::Network(b) => b.to_vec(),
        other => panic!("{other:?}"),
    };
    n.router.handle_datagram(n.now, n.from, &dgram, &mut n.buf, &mut n.out);
    assert!(n.out.is_empty());
    assert_eq!(discards(&n.out, Discard::UnknownIndex), 1);
}

#[test]
fn a_packet_to_no_peer_or_to_a_peer_never_heard_from_is_not_sent() {
    let mut n = Net::new();
    n.router.handle_tun_packet(n.now, &ipv4(GATEWAY_IP, [10, 99, 0, 9], 1, 0, 0), &mut n.buf, &mut n.out);
    assert_eq!(fate(&n.out, false, Fate::DropNoRoute), 1);
    n.out.clear();
    // The peer exists but has never spoken: no endpoint to send to.
    n.router.handle_tun_packet(n.now, &ipv4(GATEWAY_IP, PEER_IP, 1, 0, 0), &mut n.buf, &mut n.out);
    assert!(n.out.iter().all(|(d, _)| d != Dest::Tun));
    assert!(n.out.is_empty(), "no endpoint: nothing goes out");
}

#[test]
fn a_handshake_flood_gets_cookie_replies_not_sessions() {
    let mut n = Net::new();
    // Past the global limit within one rate-limit second, valid
    // initiations from our real peer are answered with a cookie reply
    // (mac2 required), not a handshake response.
    let (mut responses, mut cookies) = (0u32, 0);
    for _ in 0..(super::tunnel::HANDSHAKES_PER_SECOND + 20) {
        let mut fresh = Tunnel::new(&CLIENT, &n.router.public_key(), 9, None);
        let init = match fresh.encapsulate(n.now, &ipv4(PEER_IP, GATEWAY_IP, 1, 0, 0), &mut n.cbuf) {
            Step::Network(b) => b.to_vec(),
            other => panic!("{other:?}"),
        };
        n.out.clear();
        n.router.handle_datagram(n.now, n.from, &init, &mut n.buf, &mut n.out);
        let sent: Vec<usize> = n.out.iter().map(|(_, b)| b.len()).collect();
        match sent.as_slice() {
            [92] => responses += 1,
            [64] => cookies += 1,
            [] => {}
            other => panic!("unexpected answer sizes {other:?}"),
        }
    }
    // One peer's share of the second is answered; past it, and past the
    // global limit, every initiation gets a cookie reply (prove the
    // address), never silence: a replayed initiation counting against the
    // peer must not lock the real one out.
    assert_eq!(responses, super::tunnel::PEER_HANDSHAKES_PER_SECOND, "one peer's share of a second");
    assert_eq!(u64::from(responses) + cookies, super::tunnel::HANDSHAKES_PER_SECOND + 20, "every one answered");
    // Later in the same second: still under load.
    n.wait(Duration::from_millis(900));
    n.connect();
    assert_eq!(discards(&n.out, Discard::CookieSent), 0, "pumped: the cookie reply went to the client");
    assert!(
        n.router.peers()[0].session().tunnel.since_handshake(n.now).is_some_and(|d| d >= Duration::from_millis(900))
    );
    // A new second: answered with a handshake response again.
    n.wait(Duration::from_millis(100));
    n.client = Tunnel::new(&CLIENT, &n.router.public_key(), 78, None);
    n.out.clear();
    let init = match n.client.encapsulate(n.now, &ipv4(PEER_IP, GATEWAY_IP, 1, 0, 0), &mut n.cbuf) {
        Step::Network(b) => b.to_vec(),
        other => panic!("{other:?}"),
    };
    n.router.handle_datagram(n.now, n.from, &init, &mut n.buf, &mut n.out);
    let sent: Vec<usize> = n.out.iter().map(|(_, b)| b.len()).collect();
    assert_eq!(sent, vec![92], "a new rate-limit second: a handshake response, not a cookie");
    n.pump();
    let to_other = ipv4(PEER_IP, OTHER_IP, TCP, 40000, 443);
    assert_eq!(n.send(&to_other), vec![to_other], "the tunnel works");
}

/// Admits one key (as the shell does for a device that reported it).
struct AdmitOne([u8; 32]);

impl super::router::Admission for AdmitOne {
    fn admit(&self, key: &[u8; 32]) -> Option<(PeerSpec, Access)> {
        (*key == self.0).then(|| {
            let spec = PeerSpec {
                device_id: "from-telemetry".into(),
                public_key: *key,
                allowed_ips: vec!["10.99.0.2/32".parse().unwrap()],
                persistent_keepalive: None,
            };
            (spec, Access::Quarantine)
        })
    }
}

#[test]
fn a_key_reported_in_telemetry_is_admitted_with_its_access_and_others_are_not() {
    let router = Router::new(SERVER, vec![Rule::parse("10.99.0.1/32").unwrap()], start(), 1)
        .with_admission(Box::new(AdmitOne(public_key(&CLIENT))));
    router.set_peers(&[], vec![Rule::parse("10.99.0.1/32").unwrap()], |_| Access::Full);
    let mut n = Net::around(router, start());
    n.out.clear();
    let init = match n.client.encapsulate(n.now, &ipv4(PEER_IP, GATEWAY_IP, 1, 0, 0), &mut n.cbuf) {
        Step::Network(b) => b.to_vec(),
        other => panic!("no handshake initiation: {other:?}"),
    };
    n.router.handle_datagram(n.now, n.from, &init, &mut n.buf, &mut n.out);
    let events: Vec<Event> = n.out.take_events().collect();
    let want = Event::Admitted {
        device_id: "from-telemetry".into(),
        public_key: public_key(&CLIENT),
        address: "10.99.0.2/32".parse().unwrap(),
    };
    assert_eq!(events, vec![want], "the shell is told, to announce the address to the device");
    n.pump();
    let peer = n.router.peer_by_key(&public_key(&CLIENT)).expect("admitted");
    assert_eq!((&*peer.spec.device_id, peer.access()), ("from-telemetry", Access::Quarantine));
    let ping_gw = ipv4(PEER_IP, GATEWAY_IP, 1, 0, 0);
    assert_eq!(n.send(&ping_gw), vec![ping_gw.clone()]);

    let mut stranger = Tunnel::new(&[0x44; 32], &n.router.public_key(), 5, None);
    let init = match stranger.encapsulate(n.now, &ping_gw, &mut n.cbuf) {
        Step::Network(b) => b.to_vec(),
        other => panic!("{other:?}"),
    };
    n.out.clear();
    n.router.handle_datagram(n.now, n.from, &init, &mut n.buf, &mut n.out);
    assert!(n.out.is_empty());
    assert_eq!(discards(&n.out, Discard::UnknownKey), 1);
    assert_eq!(n.router.peers().len(), 1);
}

/// Grants whose answer the test sets.
struct FixedGrants(std::sync::Arc<std::sync::atomic::AtomicU8>);

impl super::router::Grants for FixedGrants {
    fn at_admission(&self, _: &PeerSpec) -> Access {
        Access::from_u8(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

#[test]
fn a_new_tunnel_is_an_admission_and_a_rekey_is_not() {
    use std::sync::atomic::Ordering;
    let answer = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(Access::Quarantine as u8));
    let mut n = Net::new();
    n.router = Router::new(SERVER, vec![Rule::parse("10.99.0.1/32").unwrap()], start(), 1)
        .with_grants(Box::new(FixedGrants(std::sync::Arc::clone(&answer))));
    n.router.set_peers(&[spec()], vec![Rule::parse("10.99.0.1/32").unwrap()], |_| Access::Full);
    n.client = Tunnel::new(&CLIENT, &n.router.public_key(), 77, None);
    let peer = n.router.peer_by_key(&public_key(&CLIENT)).unwrap();
    assert_eq!(peer.access(), Access::Full);

    // The first handshake establishes the tunnel: admission decides.
    n.connect();
    assert_eq!(peer.access(), Access::Quarantine, "an `admission` failure restricts a new tunnel");
    let to_other = ipv4(PEER_IP, OTHER_IP, TCP, 40000, 443);
    assert!(n.send(&to_other).is_empty(), "and its first data packet is already held to remediation");

    // A handshake while the session is live is a rekey: not an admission.
    answer.store(Access::Full as u8, Ordering::Relaxed);
    peer.set_access(Access::Full);
    answer.store(Access::Deny as u8, Ordering::Relaxed);
    n.client = Tunnel::new(&CLIENT, &n.router.public_key(), 78, None);
    n.connect();
    assert_eq!(peer.access(), Access::Full, "a running tunnel follows `always` failures only");
}

#[test]
fn a_handshake_after_the_session_lifetime_is_a_new_tunnel_again() {
    let answer = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(Access::Quarantine as u8));
    let now = start();
    let router = Router::new(SERVER, vec![Rule::parse("10.99.0.1/32").unwrap()], now, 1)
        .with_grants(Box::new(FixedGrants(std::sync::Arc::clone(&answer))));
    router.set_peers(&[spec()], vec![Rule::parse("10.99.0.1/32").unwrap()], |_| Access::Full);
    let mut n = Net::around(router, now);
    let peer = n.router.peer_by_key(&public_key(&CLIENT)).unwrap();
    n.connect();
    assert_eq!(peer.access(), Access::Quarantine, "the first handshake is an admission");

    // Rekey two minutes in (REKEY_AFTER_TIME): the running tunnel keeps
    // what it has, whatever admission would say now.
    peer.set_access(Access::Full);
    n.wait(Duration::from_secs(120));
    n.client = Tunnel::new(&CLIENT, &n.router.public_key(), 78, None);
    n.connect();
    assert_eq!(peer.access(), Access::Full, "a rekey is not an admission");
    assert_eq!(peer.session().tunnel.since_handshake(n.now), Some(Duration::ZERO), "the rekey is the new session");

    // Silence past the session's lifetime (Reject-After-Time after the
    // rekey): the next handshake starts a new tunnel, an admission again.
    n.wait(SESSION_LIFETIME);
    n.client = Tunnel::new(&CLIENT, &n.router.public_key(), 79, None);
    n.connect();
    assert_eq!(peer.access(), Access::Quarantine, "a tunnel started after the lifetime is admitted afresh");
}

#[test]
fn persistent_keepalive_is_sent_when_the_tunnel_is_quiet_for_its_interval() {
    let mut n = Net::with_peer(PeerSpec { persistent_keepalive: Some(25), ..spec() });
    assert!(n.tick().is_empty(), "no session, no endpoint: nothing to keep alive");
    n.connect();
    n.wait(Duration::from_secs(24));
    assert!(n.tick().is_empty(), "24 s quiet: not yet");
    n.wait(Duration::from_secs(1));
    let sent = n.tick();
    assert_eq!(sent.iter().map(Vec::len).collect::<Vec<_>>(), vec![32], "a keepalive: an empty data message");
    n.out.clear();
    n.out.push_for_test(Dest::Network(n.from), &sent[0]);
    assert!(n.pump().is_empty(), "the peer takes it: no inner packet");

    // Traffic restarts the interval: a packet from the peer at 40 s moves
    // the next keepalive to 65 s.
    n.wait(Duration::from_secs(15));
    let ping = ipv4(PEER_IP, GATEWAY_IP, 1, 0, 0);
    assert_eq!(n.send(&ping), vec![ping]);
    n.wait(Duration::from_secs(24));
    assert!(n.tick().is_empty(), "24 s after traffic: not yet");
    n.wait(Duration::from_secs(1));
    assert_eq!(n.tick().len(), 1, "25 s after traffic: a keepalive");
}

#[test]
fn a_peer_without_persistent_keepalive_gets_none() {
    let mut n = Net::new();
    n.connect();
    for _ in 0..8 {
        n.wait(Duration::from_secs(30));
        assert!(n.tick().is_empty(), "no keepalive configured: the quiet tunnel stays quiet");
    }
}
