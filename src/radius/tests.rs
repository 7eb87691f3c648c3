//! Codec tests: RFC vectors in hex, every malformed shape, property tests.

use super::crypto::{hide_password, unhide_password};
use super::*;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

const SECRET: &[u8] = b"xyzzy5461";

/// RFC 2865 §7.1: Access-Request for "nemo" / "arctangent" from 192.168.1.16 port 3.
const RFC2865_REQUEST: &str = "01 00 00 38 0f 40 3f 94 73 97 80 57 bd 83 d5 cb 98 f4 22 7a
    01 06 6e 65 6d 6f 02 12 0d be 70 8d 93 d4 13 ce 31 96 e4 3f 78 2a 0a ee
    04 06 c0 a8 01 10 05 06 00 00 00 03";
/// Its Access-Accept: Service-Type Login, Login-Service Telnet, Login-IP-Host 192.168.1.3.
const RFC2865_ACCEPT: &str = "02 00 00 26 86 fe 22 0e 76 24 ba 2a 10 05 f6 bf 9b 55 e0 b2
    06 06 00 00 00 01 0f 06 00 00 00 00 0e 06 c0 a8 01 03";
/// RFC 5997 §6: Status-Server with Message-Authenticator.
const RFC5997_STATUS: &str = "0c da 00 26 8a 54 f4 68 6f b3 94 c5 28 66 e3 02 18 5d 06 23
    50 12 5a 66 5e 2e 1e 84 11 f3 e2 43 82 20 97 c8 4f a3";

#[test]
fn rfc2865_access_request_decodes_and_reveals_the_password() {
    let bytes = hex(RFC2865_REQUEST);
    let p = Packet::decode(&bytes).unwrap();
    assert_eq!((p.code(), p.identifier()), (Code::AccessRequest, 0));
    assert_eq!(p.attr_str(AttrType::UserName), Some("nemo"));
    assert_eq!(p.attr(AttrType::NasIpAddress), Some(&[192, 168, 1, 16][..]));
    assert_eq!(p.attr_u32(AttrType::NasPort), Some(3));
    let hidden = p.attr(AttrType::UserPassword).unwrap();
    assert_eq!(unhide_password(hidden, SECRET, &p.authenticator()), b"arctangent");
    assert_eq!(hide_password(b"arctangent", SECRET, &p.authenticator()).unwrap(), hidden);
    assert_eq!(p.message_authenticator_valid(SECRET, None), None, "no Message-Authenticator in 2865's example");
}

#[test]
fn rfc2865_access_accept_is_built_byte_for_byte() {
    let request = hex(RFC2865_REQUEST);
    let ra = Packet::decode(&request).unwrap().authenticator();
    let mut b = Builder::new(Code::AccessAccept, 0, false);
    b.attr_u32(AttrType::ServiceType, 1).unwrap();
    b.attr_u32(AttrType::Unknown(15), 0).unwrap();
    b.attr(AttrType::Unknown(14), &[192, 168, 1, 3]).unwrap();
    let built = b.finish_response(SECRET, &ra);
    assert_eq!(built, hex(RFC2865_ACCEPT));
    let p = Packet::decode(&built).unwrap();
    assert!(p.response_authenticator_valid(SECRET, &ra));
    assert!(!p.response_authenticator_valid(b"wrong-secret", &ra));
}

#[test]
fn rfc5997_status_server_message_authenticator() {
    let bytes = hex(RFC5997_STATUS);
    let p = Packet::decode(&bytes).unwrap();
    assert_eq!(p.code(), Code::StatusServer);
    assert_eq!(p.message_authenticator_valid(SECRET, None), Some(true));
    assert_eq!(p.message_authenticator_valid(b"xyzzy5462", None), Some(false));
    // Rebuilt with our builder: the same bytes.
    let ra: [u8; 16] = bytes[4..20].try_into().unwrap();
    assert_eq!(Builder::new(Code::StatusServer, 0xda, true).finish_access_request(SECRET, &ra), bytes);
    // RFC 5997 §6's answer: an Access-Accept with no attributes.
    let reply = Builder::new(Code::AccessAccept, 0xda, false).finish_response(SECRET, &ra);
    assert_eq!(reply, hex("02 da 00 14 ef 0d 55 2a 4b f2 d6 93 ec 2b 6f e8 b5 41 1d 66"));
    // A flipped bit anywhere breaks it.
    let mut tampered = bytes.clone();
    tampered[5] ^= 1;
    assert_eq!(Packet::decode(&tampered).unwrap().message_authenticator_valid(SECRET, None), Some(false));
}

#[test]
fn signed_responses_carry_message_authenticator_first() {
    let ra = [7u8; 16];
    let mut b = Builder::new(Code::AccessAccept, 9, true);
    b.attr_tagged_u32(AttrType::TunnelType, 0, dictionary::TUNNEL_TYPE_VLAN).unwrap();
    b.attr_tagged_u32(AttrType::TunnelMediumType, 0, dictionary::TUNNEL_MEDIUM_IEEE_802).unwrap();
    b.attr_tagged_str(AttrType::TunnelPrivateGroupId, 0, b"100").unwrap();
    let bytes = b.finish_response(SECRET, &ra);
    let p = Packet::decode(&bytes).unwrap();
    assert_eq!(p.attrs().next().unwrap().typ, AttrType::MessageAuthenticator);
    assert_eq!(p.message_authenticator_valid(SECRET, Some(&ra)), Some(true));
    assert_eq!(p.message_authenticator_valid(SECRET, Some(&[8u8; 16])), Some(false));
    assert!(p.response_authenticator_valid(SECRET, &ra));
    assert_eq!(p.attr(AttrType::TunnelType), Some(&[0, 0, 0, 13][..]));
    assert_eq!(p.attr(AttrType::TunnelPrivateGroupId), Some(&b"\x00100"[..]));
}

#[test]
fn accounting_and_coa_requests_authenticate_themselves() {
    for code in [Code::AccountingRequest, Code::CoaRequest, Code::DisconnectRequest] {
        let mut b = Builder::new(code, 1, true);
        b.attr(AttrType::AcctSessionId, b"sess-1").unwrap();
        let bytes = b.finish_request(SECRET);
        let p = Packet::decode(&bytes).unwrap();
        assert!(p.request_authenticator_valid(SECRET), "{code:?}");
        assert!(!p.request_authenticator_valid(b"other"), "{code:?}");
        assert_eq!(p.message_authenticator_valid(SECRET, None), Some(true), "{code:?}");
    }
}

#[test]
fn every_malformed_shape_is_refused() {
    let ok = hex(RFC2865_REQUEST);
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = ok.clone();
        f(&mut b);
        b
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "too_short"),
        ("19 bytes", ok[..19].to_vec(), "too_short"),
        ("length field 19", with(&|b| b[2..4].copy_from_slice(&19u16.to_be_bytes())), "too_short"),
        ("length field 4097", with(&|b| b[2..4].copy_from_slice(&4097u16.to_be_bytes())), "too_long"),
        ("length past the datagram", with(&|b| b[2..4].copy_from_slice(&57u16.to_be_bytes())), "truncated"),
        ("attribute length 0", with(&|b| b[21] = 0), "attribute_overflow"),
        ("attribute length 1", with(&|b| b[21] = 1), "attribute_overflow"),
        ("attribute past the end", with(&|b| b[51] = 7), "attribute_overflow"),
        ("3-byte integer", hex("01 00 00 19 00000000000000000000000000000000 05 05 00 00 03"), "bad_attribute_size"),
        (
            "15-byte Message-Authenticator",
            hex("01 00 00 25 00000000000000000000000000000000 50 11 000000000000000000000000000000"),
            "bad_attribute_size",
        ),
        (
            "17-byte User-Password",
            hex("01 00 00 27 00000000000000000000000000000000 02 13 0000000000000000000000000000000000"),
            "bad_attribute_size",
        ),
        (
            "two Message-Authenticators",
            hex(
                "01 00 00 38 00000000000000000000000000000000 50 12 00000000000000000000000000000000 50 12 00000000000000000000000000000000",
            ),
            "duplicate_message_authenticator",
        ),
    ];
    for (what, bytes, want) in cases {
        let got = Packet::decode(&bytes).map(|_| ()).unwrap_err();
        assert_eq!(got.label(), want, "{what}: {got}");
    }
    // Bytes past the Length field are padding, not an error (RFC 2865 §3).
    let padded = with(&|b| b.extend_from_slice(&[0xff; 10]));
    assert_eq!(Packet::decode(&padded).unwrap().as_bytes(), &ok[..]);
}

#[test]
fn builder_refuses_what_cannot_be_encoded() {
    let mut b = Builder::new(Code::AccessAccept, 0, true);
    assert_eq!(
        b.attr(AttrType::ReplyMessage, &[b'x'; 254]).unwrap_err(),
        EncodeError::ValueTooLong(AttrType::ReplyMessage)
    );
    for _ in 0..15 {
        b.attr(AttrType::ReplyMessage, &[b'x'; 253]).unwrap();
    }
    assert_eq!(b.attr(AttrType::ReplyMessage, &[b'x'; 253]).unwrap_err(), EncodeError::PacketTooLong);
    let mut b = Builder::new(Code::AccessRequest, 0, true);
    assert_eq!(b.user_password(&[b'p'; 129], SECRET, &[0; 16]).unwrap_err(), EncodeError::PasswordTooLong);
}

#[test]
fn eap_messages_split_and_join() {
    let eap: Vec<u8> = (0..700u32).map(|i| i as u8).collect();
    let mut b = Builder::new(Code::AccessChallenge, 3, true);
    b.eap_message(&eap).unwrap();
    let bytes = b.finish_response(SECRET, &[1; 16]);
    let p = Packet::decode(&bytes).unwrap();
    assert_eq!(p.attrs().filter(|a| a.typ == AttrType::EapMessage).count(), 3);
    assert_eq!(p.eap_message().unwrap(), eap);
}

#[test]
fn vendor_specific_sub_attributes() {
    let mut b = Builder::new(Code::AccessAccept, 0, false);
    b.vendor_attr(dictionary::VENDOR_MICROSOFT, 17, &[0xaa; 34]).unwrap();
    let bytes = b.finish_response(SECRET, &[0; 16]);
    let p = Packet::decode(&bytes).unwrap();
    let (vendor, subs) = packet::vendor_attrs(p.attr(AttrType::VendorSpecific).unwrap()).unwrap();
    assert_eq!((vendor, subs.len(), subs[0].0, subs[0].1.len()), (311, 1, 17, 34));
    assert_eq!(packet::vendor_attrs(&[0, 0, 1, 55, 9, 1]), None, "sub-attribute length under 2");
    assert_eq!(packet::vendor_attrs(&[0, 0, 1, 55, 9, 9, 0]), None, "sub-attribute past the end");
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(p) = Packet::decode(&bytes) {
            // Whatever decodes can be walked and re-encoded identically.
            let mut b = Builder::new(p.code(), p.identifier(), false);
            for a in p.attrs() {
                b.attr(a.typ, a.value).unwrap();
            }
            let again = b.finish_access_request(b"s", &p.authenticator());
            prop_assert_eq!(&again[..], p.as_bytes());
            // The by-type search walks raw bytes: it must find what the
            // attribute iterator finds first, for every type.
            for t in 0..=255u8 {
                let first = p.attrs().find(|a| u8::from(a.typ) == t).map(|a| a.value);
                prop_assert_eq!(p.attr(AttrType::from(t)), first, "type {}", t);
            }
        }
    }

    #[test]
    fn encode_then_decode(attrs in prop::collection::vec((1u8..=255, prop::collection::vec(any::<u8>(), 0..60)), 0..20),
                          id in any::<u8>(), secret in prop::collection::vec(any::<u8>(), 1..40)) {
        let mut b = Builder::new(Code::AccessAccept, id, true);
        let mut kept = Vec::new();
        for (t, v) in attrs {
            // Only types whose size rules the value meets; others are refused at decode.
            let typ = AttrType::from(t);
            let probe = [&[t, (v.len() + 2) as u8][..], &v].concat();
            let mut pkt = vec![1, 0, 0, 0];
            pkt.extend_from_slice(&[0; 16]);
            pkt.extend_from_slice(&probe);
            let len = (pkt.len() as u16).to_be_bytes();
            pkt[2..4].copy_from_slice(&len);
            if typ == AttrType::MessageAuthenticator || Packet::decode(&pkt).is_err() {
                continue;
            }
            b.attr(typ, &v).unwrap();
            kept.push((typ, v));
        }
        let ra = [id; 16];
        let bytes = b.finish_response(&secret, &ra);
        let p = Packet::decode(&bytes).unwrap();
        prop_assert_eq!(p.identifier(), id);
        prop_assert_eq!(p.message_authenticator_valid(&secret, Some(&ra)), Some(true));
        prop_assert!(p.response_authenticator_valid(&secret, &ra));
        let got: Vec<(AttrType, Vec<u8>)> = p.attrs().skip(1).map(|a| (a.typ, a.value.to_vec())).collect();
        prop_assert_eq!(got, kept);
        for t in 0..=255u8 {
            let first = p.attrs().find(|a| u8::from(a.typ) == t).map(|a| a.value);
            prop_assert_eq!(p.attr(AttrType::from(t)), first, "type {}", t);
        }
    }

    #[test]
    fn password_hiding_round_trips(password in prop::collection::vec(1u8..=255, 0..=128),
                                   secret in prop::collection::vec(any::<u8>(), 1..40),
                                   ra in any::<[u8; 16]>()) {
        let hidden = hide_password(&password, &secret, &ra).unwrap();
        prop_assert_eq!(hidden.len() % 16, 0);
        prop_assert_eq!(unhide_password(&hidden, &secret, &ra), password);
    }
}

/// RFC 2202 §2's HMAC-MD5 vectors, through a `Key` used more than once
/// (each MAC starts from a copy of the precomputed state, so the first
/// must not leak into the second).
#[test]
fn rfc2202_hmac_md5_with_a_reused_key() {
    let cases: [(Vec<u8>, &[u8], &str); 3] = [
        (vec![0x0b; 16], b"Hi There", "9294727a3638bb1c13f48ef8158bfc9d"),
        (b"Jefe".to_vec(), b"what do ya want for nothing?", "750c783e6ab0b503eaa86e310a5db738"),
        // A key longer than MD5's 64-byte block is hashed first.
        (vec![0xaa; 80], b"Test Using Larger Than Block-Size Key - Hash Key First", "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd"),
    ];
    for (key, data, want) in cases {
        let k = crypto::Key::new(&key);
        let (head, tail) = data.split_at(data.len() / 2);
        assert_eq!(k.hmac_md5(&[data]).to_vec(), hex(want));
        assert_eq!(k.hmac_md5(&[head, tail]).to_vec(), hex(want), "fed in parts, second use");
        assert_eq!(crypto::Key::new(&key).hmac_md5(&[head, tail]).to_vec(), hex(want), "a fresh key, in parts");
        assert_eq!(k.secret(), &key[..]);
        assert_eq!(format!("{k:?}"), "Key(..)", "a key never prints its secret");
    }
}
