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
