//! MS-MPPE-Send-Key and MS-MPPE-Recv-Key (RFC 2548 §2.4.2–2.4.3): how the
//! MSK reaches the NAS, encrypted with the RADIUS secret and the request's
//! authenticator under a per-attribute salt.

use super::crypto::md5;

/// Microsoft's vendor id and the two attribute types.
pub const VENDOR_MICROSOFT: u32 = 311;
pub const MS_MPPE_SEND_KEY: u8 = 16;
pub const MS_MPPE_RECV_KEY: u8 = 17;

/// The MSK halves as RFC 5216 §2.3 (and every NAS) expects them:
/// Recv-Key = MSK[0..32], Send-Key = MSK[32..64].
pub fn split_msk(msk: &[u8; 64]) -> (&[u8], &[u8]) {
    (&msk[..32], &msk[32..])
}

/// The attribute value: salt (high bit set), then the key length, the key
/// and zero padding to 16 bytes, each block XORed with a chained MD5.
pub fn encrypt(key: &[u8], salt: u16, secret: &[u8], request_authenticator: &[u8; 16]) -> Vec<u8> {
    let salt = (salt | 0x8000).to_be_bytes();
    let mut plain = Vec::with_capacity(key.len() + 16);
    plain.push(u8::try_from(key.len()).unwrap_or(u8::MAX));
    plain.extend_from_slice(key);
    while plain.len() % 16 != 0 {
        plain.push(0);
    }
    let mut out = salt.to_vec();
    let mut b = md5(&[secret, request_authenticator, &salt]);
    for chunk in plain.chunks(16) {
        let c: Vec<u8> = chunk.iter().zip(b.iter()).map(|(p, k)| p ^ k).collect();
        b = md5(&[secret, &c]);
        out.extend_from_slice(&c);
    }
    out
}

/// The inverse, for tests and the NAS side of them; `None` if malformed.
pub fn decrypt(value: &[u8], secret: &[u8], request_authenticator: &[u8; 16]) -> Option<Vec<u8>> {
    let (salt, cipher) = value.split_at_checked(2)?;
    if cipher.is_empty() || cipher.len() % 16 != 0 || salt[0] & 0x80 == 0 {
        return None;
    }
    let mut plain = Vec::with_capacity(cipher.len());
    let mut b = md5(&[secret, request_authenticator, salt]);
    for c in cipher.chunks(16) {
        plain.extend(c.iter().zip(b.iter()).map(|(x, k)| x ^ k));
        b = md5(&[secret, c]);
    }
    let len = usize::from(*plain.first()?);
    plain.get(1..1 + len).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_shape() {
        let key: Vec<u8> = (0..32).collect();
        let auth = [7u8; 16];
        let v = encrypt(&key, 0x1234, b"secret", &auth);
        assert_eq!(v.len(), 2 + 48, "salt + (1 + 32 padded to 48)");
        assert_eq!(v[0] & 0x80, 0x80, "salt high bit");
        assert_eq!(decrypt(&v, b"secret", &auth), Some(key.clone()));
        assert_ne!(decrypt(&v, b"other", &auth), Some(key.clone()));
        let v2 = encrypt(&key, 0x1235, b"secret", &auth);
        assert_ne!(v[2..], v2[2..], "another salt, another ciphertext");
        assert_eq!(decrypt(&[0x80, 1, 2], b"s", &auth), None);
    }

    /// Known answer computed independently (Python, hashlib.md5) for
    /// secret "testing123", authenticator 00..0f, salt 0x8001, key 00..1f.
    #[test]
    fn known_answer() {
        let auth: [u8; 16] = core::array::from_fn(|i| i as u8);
        let key: Vec<u8> = (0..32).collect();
        let v = encrypt(&key, 0x0001, b"testing123", &auth);
        let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, KNOWN);
    }

    const KNOWN: &str =
        "800112a4054f091e203ec82fb961b9b618fd8f15c5905da6d786c76711ebfbf9b14b8303667ce1e1c225c3924927cd3f0bce";
}
