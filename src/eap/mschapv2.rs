//! MS-CHAPv2 (RFC 2759) as PEAP's inner method, and its EAP framing
//! (draft-kamath-pppext-eap-mschapv2): the peer proves it knows the NT hash
//! of the user's password; the server proves it too, back.

use sha1::{Digest, Sha1};

/// EAP-MSCHAPv2 OpCodes.
pub const CHALLENGE: u8 = 1;
pub const RESPONSE: u8 = 2;
pub const SUCCESS: u8 = 3;
pub const FAILURE: u8 = 4;

/// ChallengeHash (RFC 2759 §8.2): SHA1(PeerChallenge | AuthenticatorChallenge | UserName)[..8].
pub fn challenge_hash(peer: &[u8; 16], authenticator: &[u8; 16], user: &[u8]) -> [u8; 8] {
    let d = Sha1::new().chain_update(peer).chain_update(authenticator).chain_update(user).finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

/// A 7-byte DES key spread over 8 bytes, parity bits left 0 (RFC 2759 §8.6).
fn des_key(k: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[0] = k[0] & 0xfe;
    out[1] = (k[0] << 7) | (k[1] >> 1);
    out[2] = (k[1] << 6) | (k[2] >> 2);
    out[3] = (k[2] << 5) | (k[3] >> 3);
    out[4] = (k[3] << 4) | (k[4] >> 4);
    out[5] = (k[4] << 3) | (k[5] >> 5);
    out[6] = (k[5] << 2) | (k[6] >> 6);
    out[7] = k[6] << 1;
    out
}

/// NT-Response (RFC 2759 §8.1, §8.5): the challenge hash DES-encrypted under
/// three keys cut from the NT hash padded to 21 bytes.
pub fn nt_response(challenge_hash: &[u8; 8], nt_hash: &[u8; 16]) -> [u8; 24] {
    use des::cipher::{BlockEncrypt, KeyInit};
    let mut z = [0u8; 21];
    z[..16].copy_from_slice(nt_hash);
    let mut out = [0u8; 24];
    for i in 0..3 {
        let cipher = des::Des::new(&des_key(&z[i * 7..i * 7 + 7]).into());
        let mut block = (*challenge_hash).into();
        cipher.encrypt_block(&mut block);
        out[i * 8..i * 8 + 8].copy_from_slice(&block);
    }
    out
}

/// The AuthenticatorResponse "S=<40 hex>" (RFC 2759 §8.7).
pub fn authenticator_response(
    nt_hash: &[u8; 16],
    nt_response: &[u8; 24],
    peer: &[u8; 16],
    authenticator: &[u8; 16],
    user: &[u8],
) -> String {
    const MAGIC1: &[u8] = b"Magic server to client signing constant";
    const MAGIC2: &[u8] = b"Pad to make it do more than one iteration";
    use md4::{Digest as _, Md4};
    let hash_hash = Md4::digest(nt_hash);
    let digest = Sha1::new().chain_update(hash_hash).chain_update(nt_response).chain_update(MAGIC1).finalize();
    let challenge = challenge_hash(peer, authenticator, user);
    let d = Sha1::new().chain_update(digest).chain_update(challenge).chain_update(MAGIC2).finalize();
    let hex: String = d.iter().map(|b| format!("{b:02X}")).collect();
    format!("S={hex}")
}

/// The peer's EAP-MSCHAPv2 Response.
#[derive(Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// MS-CHAPv2-ID: must echo our challenge's.
    pub id: u8,
    pub peer_challenge: [u8; 16],
    pub nt_response: [u8; 24],
    pub name: &'a [u8],
}

pub fn parse_response(type_data: &[u8]) -> Option<Response<'_>> {
    let [op, id, _l0, _l1, size, value @ ..] = type_data else { return None };
    if *op != RESPONSE || *size != 49 || value.len() < 49 {
        return None;
    }
    Some(Response {
        id: *id,
        peer_challenge: value[..16].try_into().ok()?,
        nt_response: value[24..48].try_into().ok()?,
        name: &value[49..],
    })
}

/// Type-data for an MS-CHAPv2 message: OpCode, ID, MS-Length, then `body`.
pub fn message(op: u8, id: u8, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + body.len()).unwrap_or(u16::MAX);
    let mut out = vec![op, id];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// RFC 2759 §9.2.
    #[test]
    fn rfc_2759_vectors() {
        let auth: [u8; 16] = hex("5B 5D 7C 7D 7B 3F 2F 3E 3C 2C 60 21 32 26 26 28").try_into().unwrap();
        let peer: [u8; 16] = hex("21 40 23 24 25 5E 26 2A 28 29 5F 2B 3A 33 7C 7E").try_into().unwrap();
        let ch = challenge_hash(&peer, &auth, b"User");
        assert_eq!(ch.to_vec(), hex("D0 2E 43 86 BC E9 12 26"));
        let nt = crate::users::nt_hash("clientPass");
        let resp = nt_response(&ch, &nt);
        assert_eq!(resp.to_vec(), hex("82 30 9E CD 8D 70 8B 5E A0 8F AA 39 81 CD 83 54 42 33 11 4A 3D 85 D6 DF"));
        assert_eq!(
            authenticator_response(&nt, &resp, &peer, &auth, b"User"),
            "S=407A5589115FD0D6209F510FE9C04566932CDA56"
        );
    }

    #[test]
    fn a_response_parses_and_junk_does_not() {
        let mut value = vec![7u8; 16];
        value.extend_from_slice(&[0; 8]);
        value.extend_from_slice(&[9; 24]);
        value.push(0);
        let mut body = vec![49u8];
        body.extend_from_slice(&value);
        body.extend_from_slice(b"alice");
        let td = message(RESPONSE, 5, &body);
        let r = parse_response(&td).unwrap();
        assert_eq!((r.id, r.peer_challenge, r.nt_response, r.name), (5, [7; 16], [9; 24], &b"alice"[..]));
        assert!(parse_response(&td[..20]).is_none());
        assert!(parse_response(&message(CHALLENGE, 5, &body)).is_none());
    }
}
