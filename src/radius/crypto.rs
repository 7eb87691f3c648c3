//! The RADIUS cryptography: MD5 authenticators, HMAC-MD5
//! Message-Authenticator, User-Password hiding, constant-time compares.
//! MD5 is what the RFCs specify; nothing here chooses it.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};

/// MD5 over the concatenation of `parts`.
pub fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// A shared secret with its HMAC-MD5 key schedule done once.
///
/// HMAC starts every MAC by hashing the key XOR ipad and XOR opad, one MD5
/// block each: for a RADIUS packet of two or three blocks that is a third of
/// the hashing. A NAS's secret is fixed, so the server keeps those two
/// states per NAS and starts each Message-Authenticator from a copy
/// (measured: MD5 was 14% of warden's CPU at 90,000 MAB requests/s).
///
/// The secret is wiped when dropped. The two digest states are not (the
/// `hmac` crate has no zeroize support); they let one compute MACs under
/// this secret, as the secret does, but do not give the secret back.
#[derive(Clone)]
pub struct Key {
    secret: zeroize::Zeroizing<Vec<u8>>,
    hmac: Hmac<Md5>,
}

impl Key {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let hmac =
            <Hmac<Md5> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        Self { secret: zeroize::Zeroizing::new(secret.to_vec()), hmac }
    }

    /// The secret itself, for the MD5 authenticators and password hiding.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// HMAC-MD5 under this secret over the concatenation of `parts`
    /// (RFC 3579 §3.2's Message-Authenticator).
    pub fn hmac_md5(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut m = self.hmac.clone();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Compares secrets, authenticators and MACs without an early exit.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// Longest User-Password (RFC 2865 §5.2).
pub const MAX_PASSWORD: usize = 128;

/// Hides a password (RFC 2865 §5.2): padded with NULs to a multiple of 16,
/// each 16-byte block XORed with MD5(secret + previous ciphertext block,
/// the Request Authenticator for the first). `None` over 128 bytes.
pub fn hide_password(password: &[u8], secret: &[u8], authenticator: &[u8; 16]) -> Option<Vec<u8>> {
    if password.len() > MAX_PASSWORD {
        return None;
    }
    let len = password.len().div_ceil(16).max(1) * 16;
    let mut out = password.to_vec();
    out.resize(len, 0);
    let mut prev: [u8; 16] = *authenticator;
    for block in out.chunks_exact_mut(16) {
        let key = md5(&[secret, &prev]);
        for (b, k) in block.iter_mut().zip(key) {
            *b ^= k;
        }
        prev.copy_from_slice(block);
    }
    Some(out)
}

/// Reveals a hidden password; trailing NUL padding is removed. The length
/// (16..=128, a multiple of 16) was checked when the packet was decoded.
pub fn unhide_password(hidden: &[u8], secret: &[u8], authenticator: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hidden.len());
    let mut prev: &[u8] = authenticator;
    for block in hidden.chunks(16) {
        let key = md5(&[secret, prev]);
        out.extend(block.iter().zip(key).map(|(c, k)| c ^ k));
        prev = block;
    }
    while out.last() == Some(&0) {
        out.pop();
    }
    out
}
