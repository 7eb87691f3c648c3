//! EAP-TLS end to end without sockets: a rustls `ClientConnection` plays
//! the supplicant, its TLS bytes carried in EAP-TLS fragments both ways.

use super::fragment::{Fragmenter, Frame, Reassembler};
use super::tls::{EapTls, IdentityFrom, Step, identity, server_config};
use crate::certs::{Ca, Issued};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::sync::Arc;

struct Pki {
    ca: Ca,
    server: Issued,
}

fn pki() -> Pki {
    let ca = Ca::new("warden test CA").unwrap();
    let server = ca.server("radius.warden.test").unwrap();
    Pki { ca, server }
}

fn der(b: &[u8]) -> CertificateDer<'static> {
    CertificateDer::from(b.to_vec())
}

fn key(b: &[u8]) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(b.to_vec()))
}

fn server(p: &Pki) -> Arc<rustls::ServerConfig> {
    server_config(vec![der(&p.server.cert_der)], key(&p.server.key_der), vec![der(&p.ca.cert_der())], vec![]).unwrap()
}

fn client(p: &Pki, device: Option<&Issued>, tls13: bool) -> rustls::ClientConnection {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&p.ca.cert_der())).unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls13 { &[&rustls::version::TLS13] } else { &[&rustls::version::TLS12] };
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match device {
        Some(d) => b.with_client_auth_cert(vec![der(&d.cert_der)], key(&d.key_der)).unwrap(),
        None => b.with_no_client_auth(),
    };
    rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("radius.warden.test").unwrap()).unwrap()
}

/// Runs a whole EAP-TLS exchange; returns the server's last step and the
/// client (for its exported keys), and the number of round trips.
fn run(
    server_cfg: Arc<rustls::ServerConfig>,
    mut c: rustls::ClientConnection,
    mtu: usize,
) -> (Step, rustls::ClientConnection, usize) {
    let mut s = EapTls::new(server_cfg, mtu, 64 * 1024).unwrap();
    let mut request = s.start();
    let mut from_server = Reassembler::new(64 * 1024);
    let mut to_server: Option<Fragmenter> = None;
    for round in 0..200 {
        let frame = Frame::parse(&request).unwrap();
        assert!(request.len() + 5 <= mtu.max(64 + 10), "request fits the MTU");
        // The supplicant's answer to this request.
        let response = if let Some(out) = to_server.as_mut().filter(|o| !o.done()) {
            assert!(frame.is_ack(), "the server acknowledges our fragments");
            out.next_fragment(0).unwrap()
        } else if frame.flags & super::fragment::FLAG_S != 0 {
            let mut hello = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut hello).unwrap();
            }
            let mut out = Fragmenter::new(hello, mtu);
            let first = out.next_fragment(0).unwrap();
            to_server = Some(out);
            first
        } else {
            match from_server.push(&frame).unwrap() {
                None => vec![0], // ACK the fragment
                Some(msg) => {
                    let mut rd = &msg[..];
                    while !rd.is_empty() {
                        c.read_tls(&mut rd).unwrap();
                        if c.process_new_packets().is_err() {
                            break;
                        }
                    }
                    let mut flight = Vec::new();
                    while c.wants_write() {
                        c.write_tls(&mut flight).unwrap();
                    }
                    if flight.is_empty() {
                        vec![0] // nothing to say: ACK (the end of the handshake)
                    } else {
                        let mut out = Fragmenter::new(flight, mtu);
                        let first = out.next_fragment(0).unwrap();
                        to_server = Some(out);
                        first
                    }
                }
            }
        };
        match s.handle(&response) {
            Step::Request(next) => request = next,
            done => return (done, c, round),
        }
    }
    panic!("no end after 200 rounds");
}

fn client_msk(c: &mut rustls::ClientConnection, tls13: bool) -> [u8; 64] {
    let mut keys = [0u8; 128];
    if tls13 {
        c.export_keying_material(&mut keys, b"EXPORTER_EAP_TLS_Key_Material", Some(&[0x0D])).unwrap();
    } else {
        c.export_keying_material(&mut keys, b"client EAP encryption", None).unwrap();
    }
    let mut msk = [0u8; 64];
    msk.copy_from_slice(&keys[..64]);
    msk
}

#[test]
fn tls12_and_tls13_succeed_and_both_ends_derive_the_same_msk() {
    let p = pki();
    let device = p.ca.device_now("laptop-0042").unwrap();
    for tls13 in [false, true] {
        let (step, mut c, rounds) = run(server(&p), client(&p, Some(&device), tls13), 1000);
        let Step::Done { keys, peer_certificate, tls13: was13 } = step else { panic!("tls13={tls13}: {step:?}") };
        assert_eq!(was13, tls13);
        assert_eq!(keys.msk, client_msk(&mut c, tls13), "tls13={tls13}: the MSK the NAS gets is the supplicant's");
        assert_eq!(identity(&peer_certificate, IdentityFrom::Cn).as_deref(), Some("laptop-0042"));
        assert_eq!(identity(&peer_certificate, IdentityFrom::SanDns).as_deref(), Some("laptop-0042"));
        assert_eq!(identity(&peer_certificate, IdentityFrom::SanUri).as_deref(), Some("urn:device:laptop-0042"));
        assert!(rounds < 20, "rounds: {rounds}");
        if tls13 {
            // The 0x00 commitment message reached the client as application data.
            let mut buf = [0u8; 4];
            use std::io::Read;
            assert_eq!(c.reader().read(&mut buf).unwrap(), 1);
            assert_eq!(buf[0], 0);
        }
    }
}

#[test]
fn refused_without_a_certificate_from_another_ca_or_expired() {
    let p = pki();
    let other = Ca::new("another CA").unwrap();
    let foreign = other.device_now("laptop-0042").unwrap();
    let now = time::OffsetDateTime::now_utc();
    let expired = p.ca.device("laptop-0042", now - time::Duration::days(30), now - time::Duration::days(1)).unwrap();
    for tls13 in [false, true] {
        for (what, device) in [("no certificate", None), ("another CA", Some(&foreign)), ("expired", Some(&expired))] {
            let (step, _, _) = run(server(&p), client(&p, device, tls13), 1000);
            assert!(matches!(step, Step::Failed(_)), "{what}, tls13={tls13}: {step:?}");
        }
    }
}

#[test]
fn a_revoked_certificate_is_refused_when_a_crl_is_configured() {
    let p = pki();
    let revoked = p.ca.device_now("laptop-0042").unwrap();
    let good = p.ca.device_now("laptop-0043").unwrap();
    let crl = rustls::pki_types::CertificateRevocationListDer::from(p.ca.crl(&[revoked.serial]).unwrap());
    let cfg =
        server_config(vec![der(&p.server.cert_der)], key(&p.server.key_der), vec![der(&p.ca.cert_der())], vec![crl])
            .unwrap();
    for tls13 in [false, true] {
        let (step, _, _) = run(Arc::clone(&cfg), client(&p, Some(&revoked), tls13), 1000);
        assert!(matches!(&step, Step::Failed(super::tls::Failure::Tls(e)) if e.contains("Revoked")), "{step:?}");
        let (step, _, _) = run(Arc::clone(&cfg), client(&p, Some(&good), tls13), 1000);
        assert!(matches!(step, Step::Done { .. }), "{step:?}");
    }
}

#[test]
fn small_mtus_fragment_and_still_succeed() {
    let p = pki();
    let device = p.ca.device_now("pos-0001").unwrap();
    for mtu in [100, 300, 1398] {
        let (step, _, _) = run(server(&p), client(&p, Some(&device), true), mtu);
        assert!(matches!(step, Step::Done { .. }), "mtu {mtu}: {step:?}");
    }
}

#[test]
fn an_oversized_message_is_refused() {
    let p = pki();
    let mut s = EapTls::new(server(&p), 1000, 2048).unwrap();
    let _ = s.start();
    let mut first = vec![super::fragment::FLAG_L | super::fragment::FLAG_M];
    first.extend_from_slice(&100_000u32.to_be_bytes());
    first.extend_from_slice(&[0x16; 100]);
    assert!(matches!(s.handle(&first), Step::Failed(_)));
}

mod conversation {
    use super::*;
    use crate::eap::packet::{Code, Packet, encode, kind};
    use crate::eap::server::{Authenticated, EapServer, Limits, Outcome, Refusal};
    use std::time::{Duration, Instant};

    fn identity(id: u8) -> Vec<u8> {
        encode(Code::Response, id, Some(kind::IDENTITY), b"laptop-0042").unwrap()
    }

    /// The supplicant side of EAP-TLS: answers each EAP-Request (whole
    /// packet) with the next EAP-Response.
    pub(super) struct Supplicant {
        c: rustls::ClientConnection,
        from_server: Reassembler,
        to_server: Option<Fragmenter>,
    }

    impl Supplicant {
        pub(super) fn new(c: rustls::ClientConnection) -> Self {
            Self { c, from_server: Reassembler::new(64 * 1024), to_server: None }
        }

        pub(super) fn identity(&self) -> Vec<u8> {
            identity(1)
        }

        pub(super) fn respond(&mut self, request: &[u8]) -> Vec<u8> {
            let p = Packet::decode(request).unwrap();
            assert_eq!((p.code, p.kind), (Code::Request, Some(kind::TLS)));
            let frame = Frame::parse(p.data).unwrap();
            let td = if let Some(o) = self.to_server.as_mut().filter(|o| !o.done()) {
                o.next_fragment(0).unwrap()
            } else {
                if frame.flags & crate::eap::fragment::FLAG_S == 0
                    && let Some(msg) = self.from_server.push(&frame).unwrap()
                {
                    let mut rd = &msg[..];
                    while !rd.is_empty() {
                        self.c.read_tls(&mut rd).unwrap();
                        if self.c.process_new_packets().is_err() {
                            break;
                        }
                    }
                }
                let mut flight = Vec::new();
                while self.c.wants_write() {
                    self.c.write_tls(&mut flight).unwrap();
                }
                if flight.is_empty() {
                    vec![0]
                } else {
                    let mut o = Fragmenter::new(flight, 1000);
                    let f = o.next_fragment(0).unwrap();
                    self.to_server = Some(o);
                    f
                }
            };
            encode(Code::Response, p.id, Some(kind::TLS), &td).unwrap()
        }

        pub(super) fn msk(&mut self) -> [u8; 64] {
            let tls13 = self.c.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
            client_msk(&mut self.c, tls13)
        }
    }

    /// A supplicant driving EapServer through whole EAP packets and State.
    fn authenticate(server: &mut EapServer, c: rustls::ClientConnection, now: Instant) -> Outcome {
        let mut sup = Supplicant::new(c);
        let mut out = server.handle(&sup.identity(), None, Some(1000), now);
        for _ in 0..100 {
            let Outcome::Challenge { eap, state } = out else { return out };
            let response = sup.respond(&eap);
            out = server.handle(&response, Some(&state), Some(1000), now);
        }
        panic!("no end");
    }

    #[test]
    fn a_whole_conversation_through_state() {
        let p = pki();
        let device = p.ca.device_now("laptop-0042").unwrap();
        let mut s = EapServer::new(Some(server(&p)), Limits::default(), [9; 32]);
        let out = authenticate(&mut s, client(&p, Some(&device), true), Instant::now());
        let Outcome::Authenticated { who: Authenticated::Certificate { eap_identity, .. }, success, .. } = out else {
            panic!("{out:?}")
        };
        assert_eq!(eap_identity, "laptop-0042");
        assert_eq!(Packet::decode(&success).unwrap().code, Code::Success);
        assert!(s.is_empty(), "a finished conversation is gone");
    }

    #[test]
    fn limits_unknown_state_rounds_eviction_timeout() {
        let p = pki();
        let now = Instant::now();
        let limits = Limits { max_sessions: 3, max_rounds: 2, timeout: Duration::from_secs(30), ..Limits::default() };
        let mut s = EapServer::new(Some(server(&p)), limits, [9; 32]);
        // Unknown State.
        let resp = encode(Code::Response, 2, Some(kind::TLS), &[0]).unwrap();
        let Outcome::Reject { refusal, eap, .. } = s.handle(&resp, Some(&[1; 16]), None, now) else { panic!() };
        assert_eq!(refusal, Refusal::UnknownState);
        assert_eq!(Packet::decode(&eap).unwrap().code, Code::Failure);
        // A live conversation (came back with its State) outlives half-open ones.
        // A small MTU: the server's flight takes several fragments, each ACKed.
        let Outcome::Challenge { state: live, .. } = s.handle(&identity(1), None, Some(200), now) else { panic!() };
        let mut c = client(&p, None, true);
        let mut hello = vec![0u8];
        while c.wants_write() {
            c.write_tls(&mut hello).unwrap();
        }
        let hello = encode(Code::Response, 2, Some(kind::TLS), &hello).unwrap();
        let Outcome::Challenge { state: live2, .. } = s.handle(&hello, Some(&live), None, now) else {
            panic!("a ClientHello is answered with the server's first fragment")
        };
        for _ in 0..2 {
            let _ = s.handle(&identity(1), None, None, now);
        }
        assert_eq!(s.len(), 3);
        let _ = s.handle(&identity(1), None, None, now); // full: a half-open one goes
        assert_eq!((s.len(), s.poll_event(), s.poll_event()), (3, Some(Refusal::Evicted), None));
        let ack = encode(Code::Response, 3, Some(kind::TLS), &[0]).unwrap();
        let out = s.handle(&ack, Some(&live2), None, now);
        let Outcome::Challenge { state: live3, .. } = out else { panic!("the live one survived: {out:?}") };
        let ack = encode(Code::Response, 4, Some(kind::TLS), &[0]).unwrap();
        let out = s.handle(&ack, Some(&live3), None, now);
        assert!(matches!(out, Outcome::Reject { refusal: Refusal::TooManyRounds, .. }), "{out:?}");
        // Timeout: nothing to do before the first deadline, then every
        // idle conversation goes, each an event.
        let first = s.poll_timeout().expect("a deadline while conversations are open");
        assert_eq!(first, now + Duration::from_secs(30));
        assert_eq!(s.handle_timeout(now + Duration::from_secs(29)), 0);
        let n = s.len();
        assert_eq!(s.handle_timeout(now + Duration::from_secs(31)), n);
        assert!(s.is_empty());
        assert_eq!(std::iter::from_fn(|| s.poll_event()).collect::<Vec<_>>(), vec![Refusal::TimedOut; n]);
        assert_eq!(s.poll_timeout(), None, "nothing left to expire");
    }
}

/// The whole path a NAS sees: Access-Requests carrying EAP-Message and State
/// through the RADIUS core, Access-Challenges back, and an Access-Accept
/// whose MS-MPPE keys decrypt, with the shared secret, to the MSK the
/// supplicant derived itself. TLS 1.2 and 1.3.
#[test]
fn through_the_radius_core_the_accept_carries_the_supplicant_s_msk() {
    use crate::eap::server::{EapServer, Limits, Outcome};
    use crate::radius::builder::Builder;
    use crate::radius::packet::{Packet, vendor_attrs};
    use crate::radius::server::{Client, Decision, EapReply, Event, Port, Secret, Server};
    use crate::radius::{AttrType, Code};
    const SECRET: &[u8] = b"a-long-shared-secret";
    let p = pki();
    let device = p.ca.device_now("laptop-0042").unwrap();
    for tls13 in [false, true] {
        let mut radius = Server::new(vec![Client {
            name: "nas".into(),
            net: "127.0.0.0/8".parse().unwrap(),
            secret: Secret::new(SECRET.to_vec()),
            require_message_authenticator: true,
        }]);
        let mut eap = EapServer::new(Some(server(&p)), Limits::default(), [3; 32]);
        let mut sup = conversation::Supplicant::new(client(&p, Some(&device), tls13));
        let nas: std::net::SocketAddr = "127.0.0.9:50000".parse().unwrap();
        let now = std::time::Instant::now();
        let (mut message, mut state) = (sup.identity(), None::<Vec<u8>>);
        let mut accepted = None;
        for id in 0..60u8 {
            let ra = [id ^ 0x5a; 16];
            let mut b = Builder::new(Code::AccessRequest, id, true);
            b.attr(AttrType::UserName, b"laptop-0042").unwrap();
            b.eap_message(&message).unwrap();
            if let Some(s) = &state {
                b.attr(AttrType::State, s).unwrap();
            }
            radius.handle_datagram(Port::Auth, nas, &b.finish_access_request(SECRET, &ra), now);
            let Some(Event::AccessRequest(req)) = radius.poll_event() else { panic!("an Access-Request event") };
            let decision =
                match eap.handle(req.eap_message.as_deref().unwrap(), req.state.as_deref(), req.framed_mtu, now) {
                    Outcome::Challenge { eap, state } => Decision::Challenge { eap, state },
                    Outcome::Authenticated { keys, success, .. } => Decision::Accept {
                        vlan: Some("100".into()),
                        filter_id: None,
                        reply_message: None,
                        eap: Some(EapReply {
                            message: success,
                            msk: Some(Box::new(zeroize::Zeroizing::new(keys.msk))),
                            user_name: None,
                        }),
                    },
                    other => panic!("tls13={tls13}: {other:?}"),
                };
            radius.handle_decision(req.id, decision, now);
            let tx = radius.poll_transmit().unwrap();
            let reply = Packet::decode(&tx.payload).unwrap();
            assert_eq!(reply.message_authenticator_valid(SECRET, Some(&ra)), Some(true));
            assert!(reply.response_authenticator_valid(SECRET, &ra));
            let eap_back: Vec<u8> =
                reply.attrs().filter(|a| a.typ == AttrType::EapMessage).flat_map(|a| a.value).copied().collect();
            match reply.code() {
                Code::AccessChallenge => {
                    state = reply.attr(AttrType::State).map(<[u8]>::to_vec);
                    message = sup.respond(&eap_back);
                }
                Code::AccessAccept => {
                    assert_eq!(eap_back, vec![3, id_of(&message), 0, 4], "EAP-Success");
                    let mut keys = std::collections::HashMap::new();
                    for a in reply.attrs().filter(|a| a.typ == AttrType::VendorSpecific) {
                        let (vendor, subs) = vendor_attrs(a.value).unwrap();
                        assert_eq!(vendor, crate::radius::mppe::VENDOR_MICROSOFT);
                        for (t, v) in subs {
                            keys.insert(t, crate::radius::mppe::decrypt(v, SECRET, &ra).unwrap());
                        }
                    }
                    accepted = Some(keys);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let keys = accepted.expect("an Access-Accept");
        let msk = sup.msk();
        assert_eq!(keys[&crate::radius::mppe::MS_MPPE_RECV_KEY], msk[..32].to_vec(), "tls13={tls13}");
        assert_eq!(keys[&crate::radius::mppe::MS_MPPE_SEND_KEY], msk[32..].to_vec(), "tls13={tls13}");
    }
}

fn id_of(eap: &[u8]) -> u8 {
    eap[1]
}
