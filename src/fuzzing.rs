//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the test that
//! replays their committed corpus in every CI run.

// A shell: it reads the clock and randomness for the cores it drives.
#![allow(clippy::disallowed_methods)]

use crate::compliance::{Engine, Table};
use crate::policy::PolicySet;
use crate::telemetry::parse::{Freshness, parse_payload};
use crate::telemetry::{Report, TopicPattern};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// 2026-11-22T10:15:00Z: a fixed "now" so a crash replays exactly.
const NOW: i64 = 1_795_342_500_000;

fn shipped_policies() -> &'static PolicySet {
    static SET: OnceLock<PolicySet> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        PolicySet::load_dir(&dir).unwrap_or_default()
    })
}

/// Telemetry as it arrives: the first byte is the topic's length, then the
/// topic, then the payload. Must never panic; an accepted report must
/// survive a round trip through its own JSON and go through the engine.
pub fn telemetry(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n).min(rest.len());
    let (topic, payload) = rest.split_at(n);
    let Ok(topic) = std::str::from_utf8(topic) else { return };
    let pattern = TopicPattern::new("devices/+/telemetry").unwrap_or_else(|_| unreachable!("valid pattern"));
    let fresh = Freshness { max_age_ms: 900_000, max_skew_ms: 300_000, not_before: None };
    let parsed = pattern.device_id(topic).and_then(|id| Ok((id, parse_payload(payload, NOW, fresh)?)));
    let Ok((id, report)) = parsed else { return };
    let json = serde_json::to_vec(&report).unwrap_or_else(|e| panic!("an accepted report must serialize: {e}"));
    let again: Report = serde_json::from_slice(&json).unwrap_or_else(|e| panic!("round trip failed: {e}"));
    assert_eq!(again, report, "round trip changed the report");
    let mut engine = Engine::new(Table::default(), shipped_policies().clone(), Duration::from_secs(900));
    let now = Instant::now();
    assert!(engine.handle_telemetry(id, report, now, NOW).is_ok());
    assert!(engine.poll_event().is_some(), "a first report is always a change");
}

/// A datagram from a NAS: decode → encode → decode must give the same
/// packet, and every check on it must run without panicking.
pub fn radius(data: &[u8]) {
    use crate::radius::{AttrType, Builder, Packet, crypto, packet::vendor_attrs};
    let Ok(p) = Packet::decode(data) else { return };
    let mut b = Builder::new(p.code(), p.identifier(), false);
    for a in p.attrs() {
        assert!(b.attr(a.typ, a.value).is_ok(), "a decoded attribute must re-encode");
        if a.typ == AttrType::VendorSpecific {
            let _ = vendor_attrs(a.value);
        }
        if a.typ == AttrType::UserPassword {
            let _ = crypto::unhide_password(a.value, b"secret", &p.authenticator());
        }
    }
    let again = b.finish_access_request(b"secret", &p.authenticator());
    let q = Packet::decode(&again).unwrap_or_else(|e| panic!("re-encoded packet must decode: {e}"));
    assert_eq!(q.as_bytes(), p.as_bytes());
    let _ = p.message_authenticator_valid(b"secret", None);
    let _ = p.message_authenticator_valid(b"secret", Some(&[0; 16]));
    let _ = p.request_authenticator_valid(b"secret");
    let _ = p.eap_message();
}

/// The WireGuard plane's parsers of network input. The first byte picks:
/// - even: `data[1..]` is a datagram from the network, handed to a router
///   with one peer and no session. It must not panic, must never put
///   anything on the TUN (nothing can decrypt), and may only answer the
///   sender;
/// - odd: bits 1–2 are the access, bit 3 the direction, bits 4–7 how many
///   of a fixed set of remediation rules apply; the rest is a decrypted
///   inner packet for the parser and the ACL, checked against their
///   definitions.
pub fn wireguard(data: &[u8]) {
    use crate::wireguard::acl::{Access, Direction, Rule, permits};
    use crate::wireguard::packet;
    use crate::wireguard::router::{Dest, Router, Transmits, scratch};
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        static ROUTER: OnceLock<Router> = OnceLock::new();
        let router = ROUTER.get_or_init(|| {
            let r = Router::new([0x11; 32], Vec::new(), std::time::Instant::now(), 1);
            let spec = crate::wireguard::peers::PeerSpec {
                device_id: "fuzz".into(),
                public_key: crate::wireguard::tunnel::public_key(&[0x22; 32]),
                allowed_ips: vec![ipnet::IpNet::from(std::net::IpAddr::from([10, 99, 0, 2]))],
                persistent_keepalive: None,
            };
            r.set_peers(&[spec], Vec::new(), |_| Access::Full);
            r
        });
        let from = std::net::SocketAddr::from(([192, 0, 2, 1], 51820));
        let mut out = Transmits::default();
        router.handle_datagram(std::time::Instant::now(), from, rest, &mut scratch(), &mut out);
        for (dest, _) in out.iter() {
            assert_eq!(dest, Dest::Network(from), "garbage may only ever be answered to its sender");
        }
        return;
    }
    const RULES: [&str; 4] = ["10.99.0.1/32", "0.0.0.0/0:443", "fd00::/8", "[::/0]:53"];
    let rules: Vec<Rule> = RULES.iter().take(usize::from(mode >> 4)).filter_map(|r| Rule::parse(r).ok()).collect();
    let access = Access::from_u8((mode >> 1) & 3);
    let direction = if mode & 8 == 0 { Direction::FromPeer } else { Direction::ToPeer };
    let Some(flow) = packet::parse(rest) else { return };
    let ported = flow.proto == packet::TCP || flow.proto == packet::UDP;
    assert!(flow.src_port.is_none() || ported, "ports only for TCP and UDP");
    let allowed = permits(access, &rules, &flow, direction);
    match access {
        Access::Full => assert!(allowed),
        Access::Deny => assert!(!allowed),
        Access::Quarantine => {
            let (addr, port) = match direction {
                Direction::FromPeer => (flow.dst, flow.dst_port),
                Direction::ToPeer => (flow.src, flow.src_port),
            };
            let want = rules.iter().any(|r| r.net.contains(&addr) && r.port.is_none_or(|p| ported && port == Some(p)));
            assert_eq!(allowed, want);
        }
    }
}

/// The EAP server with a real EAP-TLS config, fed a conversation: `data`
/// is split into messages, each prefixed by a 2-byte length; the first
/// byte of each says whether to send the State of the last challenge. Also
/// every message straight into the fragment reassembler. Must never panic;
/// every challenge must be a well-formed EAP-Request; limits hold.
pub fn eap(data: &[u8]) {
    use crate::eap::fragment::{Frame, Reassembler};
    use crate::eap::packet::{Code, Packet};
    use crate::eap::server::{EapServer, Limits, Outcome};
    static TLS: OnceLock<Option<std::sync::Arc<rustls::ServerConfig>>> = OnceLock::new();
    let tls = TLS.get_or_init(|| {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let ca = crate::certs::Ca::new("fuzz CA").ok()?;
        let server = ca.server("radius.fuzz.test").ok()?;
        crate::eap::tls::server_config(
            vec![CertificateDer::from(server.cert_der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key_der)),
            vec![CertificateDer::from(ca.cert_der())],
            vec![],
        )
        .ok()
    });
    let limits = Limits { max_sessions: 4, max_rounds: 16, max_message: 8192, ..Limits::default() };
    let mut server = EapServer::new(tls.clone(), limits, [7; 32]);
    let mut reassembler = Reassembler::new(8192);
    let now = Instant::now();
    let mut state: Option<Vec<u8>> = None;
    let mut rest = data;
    while let [a, b, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
        let (msg, after) = tail.split_at(n);
        rest = after;
        let Some((&flags, eap)) = msg.split_first() else { continue };
        if let Ok(frame) = Frame::parse(eap) {
            let _ = reassembler.push(&frame);
            assert!(reassembler.held() <= 8192);
        }
        let use_state = if flags & 1 == 1 { state.as_deref() } else { None };
        match server.handle(eap, use_state, Some(u32::from(flags) * 8), now) {
            Outcome::Challenge { eap, state: s } => {
                let p = Packet::decode(&eap).unwrap_or_else(|e| panic!("a challenge that does not decode: {e}"));
                assert_eq!(p.code, Code::Request);
                state = Some(s);
            }
            Outcome::Reject { eap, .. } => {
                assert_eq!(Packet::decode(&eap).map(|p| p.code), Ok(Code::Failure));
            }
            Outcome::Authenticated { .. } => panic!("authenticated without a client certificate chain from the fuzzer"),
        }
        assert!(server.len() <= 4);
    }
}

/// A command acknowledgement as a device sends it, to a device with a
/// plan running (the shipped kiosk plan): the first byte picks which of
/// its commands' ids the payload's `id` is replaced with, to reach the
/// state machine as well as the parser. Must never panic.
pub fn ack(data: &[u8]) {
    use crate::remediation::{Remediation, parse_ack};
    let Some((&pick, payload)) = data.split_first() else { return };
    let Ok(mut ack) = parse_ack(payload) else { return };
    assert!(ack.reason.as_ref().is_none_or(|r| r.len() <= crate::remediation::command::MAX_REASON));
    let Some(policy) = shipped_policies().policies.iter().find(|p| p.name == "pos-baseline") else { return };
    let Some(rule) = policy.rules.iter().position(|r| r.id == "store-wifi") else { return };
    let failure = crate::policy::Failure {
        policy: std::sync::Arc::clone(policy),
        rule: u16::try_from(rule).unwrap_or_default(),
        observed: "Guest".into(),
        since: NOW,
    };
    let now = Instant::now();
    let change = crate::compliance::Change {
        device: "pos-1".into(),
        old: crate::compliance::Verdict::Compliant,
        new: crate::compliance::Verdict::Noncompliant,
        failures: vec![failure],
        enforce: crate::compliance::Enforce::default(),
        cause: crate::compliance::Cause::Telemetry,
        at: now,
        wall: NOW,
        groups: 0,
        group_set: std::sync::Arc::default(),
    };
    let mut r = Remediation::new(7);
    r.handle_change(&change, now, NOW);
    if pick % 2 == 0
        && let Some(c) = r.poll_transmit()
    {
        ack.id = c.id;
    }
    let _ = r.handle_ack("pos-1", &ack, now, NOW);
    r.handle_timeout(now + Duration::from_secs(3600), NOW + 3_600_000);
    let _ = r.handle_ack("pos-1", &ack, now, NOW);
}
