//! The RADIUS server core against crafted datagrams, in simulated time.

#![allow(clippy::disallowed_methods)] // tests seed simulated time from the real clock

use super::*;
use crate::radius::packet::Packet;

const SECRET: &[u8] = b"a-long-shared-secret";

fn server(require_ma: bool) -> Server {
    Server::new(vec![Client {
        name: "lab".into(),
        net: "127.0.0.0/8".parse().unwrap(),
        secret: Secret::new(SECRET.to_vec()),
        require_message_authenticator: require_ma,
    }])
}

fn nas() -> SocketAddr {
    "127.0.0.2:40000".parse().unwrap()
}

fn access_request(id: u8, signed: bool, secret: &[u8]) -> Vec<u8> {
    let ra = [id; 16];
    let mut b = Builder::new(Code::AccessRequest, id, signed);
    b.attr(AttrType::UserName, b"alice").unwrap();
    b.user_password(b"correct horse", secret, &ra).unwrap();
    b.attr(AttrType::CallingStationId, b"AA-BB-CC-00-00-01").unwrap();
    b.attr(AttrType::ProxyState, b"ps-1").unwrap();
    b.finish_access_request(secret, &ra)
}

fn events(s: &mut Server) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

#[test]
fn an_access_request_is_decided_and_answered_signed() {
    let mut s = server(true);
    let now = Instant::now();
    s.handle_datagram(Port::Auth, nas(), &access_request(7, true, SECRET), now);
    let ev = events(&mut s);
    let Event::AccessRequest(req) = &ev[0] else { panic!("{ev:?}") };
    assert_eq!(req.user_name.as_deref(), Some("alice"));
    assert_eq!(req.password.as_deref().map(|p| p.as_slice()), Some(&b"correct horse"[..]));
    assert_eq!(req.calling_station_id.as_deref(), Some("AA-BB-CC-00-00-01"));
    assert!(s.poll_transmit().is_none(), "nothing is sent before the decision");
    s.handle_decision(
        req.id,
        Decision::Accept { vlan: Some("100".into()), filter_id: None, reply_message: None, eap: None },
        now,
    );
    let tx = s.poll_transmit().unwrap();
    assert_eq!((tx.port, tx.to), (Port::Auth, nas()));
    let p = Packet::decode(&tx.payload).unwrap();
    assert_eq!((p.code(), p.identifier()), (Code::AccessAccept, 7));
    assert_eq!(p.attrs().next().unwrap().typ, AttrType::MessageAuthenticator, "Message-Authenticator first");
    assert_eq!(p.message_authenticator_valid(SECRET, Some(&[7; 16])), Some(true));
    assert!(p.response_authenticator_valid(SECRET, &[7; 16]));
    assert_eq!(p.attr(AttrType::TunnelPrivateGroupId), Some(&b"\x00100"[..]));
    assert_eq!(p.attr(AttrType::ProxyState), Some(&b"ps-1"[..]), "Proxy-State comes back");
}

#[test]
fn blastradius_hardening_and_wrong_secrets() {
    let mut s = server(true);
    let now = Instant::now();
    let reasons = |s: &mut Server| -> Vec<&'static str> {
        events(s)
            .iter()
            .map(|e| match e {
                Event::Discarded { reason, .. } => reason.label(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    s.handle_datagram(Port::Auth, nas(), &access_request(1, false, SECRET), now);
    s.handle_datagram(Port::Auth, nas(), &access_request(2, true, b"not-the-secret"), now);
    s.handle_datagram(Port::Auth, "10.1.2.3:1812".parse().unwrap(), &access_request(3, true, SECRET), now);
    s.handle_datagram(Port::Auth, nas(), b"\x01\x00\x00", now);
    s.handle_datagram(Port::Acct, nas(), &access_request(4, true, SECRET), now);
    assert_eq!(
        reasons(&mut s),
        [
            "missing_message_authenticator",
            "bad_message_authenticator",
            "unknown_client",
            "malformed",
            "unexpected_code"
        ]
    );
    assert!(s.poll_transmit().is_none(), "no answer to any of them");
    // Without the requirement an unsigned PAP request is served.
    let mut lax = server(false);
    lax.handle_datagram(Port::Auth, nas(), &access_request(5, false, SECRET), now);
    assert!(matches!(events(&mut lax)[0], Event::AccessRequest(_)));
}

#[test]
fn retransmissions_get_the_cached_reply_not_a_second_decision() {
    let mut s = server(true);
    let now = Instant::now();
    let req = access_request(9, true, SECRET);
    s.handle_datagram(Port::Auth, nas(), &req, now);
    let Event::AccessRequest(r) = events(&mut s).remove(0) else { panic!() };
    s.handle_datagram(Port::Auth, nas(), &req, now);
    assert!(matches!(events(&mut s)[0], Event::Discarded { reason: Discard::InProgress, .. }));
    s.handle_decision(r.id, Decision::Reject { reply_message: "rooted".into(), eap: None }, now);
    let first = s.poll_transmit().unwrap().payload;
    s.handle_datagram(Port::Auth, nas(), &req, now + Duration::from_secs(1));
    assert!(matches!(events(&mut s)[0], Event::Duplicate));
    assert_eq!(s.poll_transmit().unwrap().payload, first);
    // After the window it is a new request.
    s.handle_datagram(Port::Auth, nas(), &req, now + DUPLICATE_WINDOW + Duration::from_secs(1));
    assert!(matches!(events(&mut s)[0], Event::AccessRequest(_)));
}

#[test]
fn an_undecided_request_expires() {
    let mut s = server(true);
    let now = Instant::now();
    s.handle_datagram(Port::Auth, nas(), &access_request(3, true, SECRET), now);
    let Event::AccessRequest(r) = events(&mut s).remove(0) else { panic!() };
    assert_eq!(s.poll_timeout(), Some(now + DECISION_TIMEOUT));
    s.handle_timeout(now + DECISION_TIMEOUT);
    assert_eq!(s.pending(), 0);
    s.handle_decision(
        r.id,
        Decision::Accept { vlan: None, filter_id: None, reply_message: None, eap: None },
        now + DECISION_TIMEOUT,
    );
    assert!(s.poll_transmit().is_none(), "a late decision is ignored");
}

#[test]
fn status_server_and_accounting() {
    let mut s = server(true);
    let now = Instant::now();
    let status = Builder::new(Code::StatusServer, 4, true).finish_access_request(SECRET, &[4; 16]);
    s.handle_datagram(Port::Auth, nas(), &status, now);
    let p = Packet::decode(&s.poll_transmit().unwrap().payload).unwrap().code();
    assert_eq!(p, Code::AccessAccept);
    let unsigned = Builder::new(Code::StatusServer, 5, false).finish_access_request(SECRET, &[5; 16]);
    s.handle_datagram(Port::Auth, nas(), &unsigned, now);
    assert!(s.poll_transmit().is_none(), "Status-Server without Message-Authenticator is discarded");

    let mut b = Builder::new(Code::AccountingRequest, 6, false);
    b.attr_u32(AttrType::AcctStatusType, 1).unwrap();
    b.attr(AttrType::AcctSessionId, b"s-1").unwrap();
    b.attr(AttrType::CallingStationId, b"aa:bb:cc:00:00:01").unwrap();
    let acct = b.finish_request(SECRET);
    s.handle_datagram(Port::Acct, nas(), &acct, now);
    let ev = events(&mut s);
    let Some(Event::Accounting(a)) = ev.iter().find(|e| matches!(e, Event::Accounting(_))) else { panic!("{ev:?}") };
    assert_eq!((a.status, a.session_id.as_deref()), (AcctStatus::Start, Some("s-1")));
    assert!(s.poll_transmit().is_none(), "no Accounting-Response before the record is stored");
    s.handle_decision(a.id, Decision::Stored, now);
    let reply = s.poll_transmit().unwrap();
    let p = Packet::decode(&reply.payload).unwrap();
    assert_eq!((reply.port, p.code()), (Port::Acct, Code::AccountingResponse));
    assert!(p.response_authenticator_valid(SECRET, &Packet::decode(&acct).unwrap().authenticator()));
    let mut forged = acct.clone();
    forged[1] = 7;
    s.handle_datagram(Port::Acct, nas(), &forged, now);
    assert!(matches!(events(&mut s)[0], Event::Discarded { reason: Discard::BadRequestAuthenticator, .. }));
}
