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

/// HMAC-MD5 keyed with the shared secret (RFC 3579 §3.2).
pub fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut m = <Hmac<Md5> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
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
