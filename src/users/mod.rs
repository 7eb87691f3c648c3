//! Local credentials (`radius.users_file`) for PAP: a name, a password or its
//! NT hash, and optionally the device whose verdict decides the user's access.

mod scan;

use crate::diag::Located;
use hashbrown::HashTable;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

/// How a user's password is checked.
enum Credential {
    /// Plain text: for trying warden and for tests (`warden check` warns).
    Plain(Zeroizing<Vec<u8>>),
    /// MD4 of the UTF-16LE password (what MS-CHAPv2 also needs).
    NtHash([u8; 16]),
    /// An Argon2 PHC string (`$argon2id$v=19$...`): PAP only, and slow on
    /// purpose, so it is checked off the auth shards.
    Argon2(Arc<str>),
}

pub struct User {
    pub name: Box<str>,
    credential: Credential,
    pub device_id: Option<Box<str>>,
}

impl User {
    /// Checks a PAP password, in constant time over the compared bytes.
    pub fn verify(&self, password: &[u8]) -> bool {
        match &self.credential {
            Credential::Plain(p) => bool::from(subtle::ConstantTimeEq::ct_eq(p.as_slice(), password)),
            Credential::NtHash(h) => std::str::from_utf8(password)
                .map(|p| bool::from(subtle::ConstantTimeEq::ct_eq(&nt_hash(p)[..], &h[..])))
                .unwrap_or(false),
            Credential::Argon2(phc) => verify_argon2(phc, password),
        }
    }

    /// The NT password hash MS-CHAPv2 needs; `None` for an Argon2 user
    /// (PAP only).
    pub fn nt_password_hash(&self) -> Option<Zeroizing<[u8; 16]>> {
        match &self.credential {
            Credential::Plain(p) => std::str::from_utf8(p).ok().map(|p| Zeroizing::new(nt_hash(p))),
            Credential::NtHash(h) => Some(Zeroizing::new(*h)),
            Credential::Argon2(_) => None,
        }
    }

    /// The Argon2 hash, when checking this user is slow.
    pub fn slow_hash(&self) -> Option<Arc<str>> {
        match &self.credential {
            Credential::Argon2(phc) => Some(Arc::clone(phc)),
            _ => None,
        }
    }
}

/// Checks a password against an Argon2 PHC string (takes tens of ms).
pub fn verify_argon2(phc: &str, password: &[u8]) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|h| argon2::Argon2::default().verify_password(password, &h).is_ok())
}

/// MD4 of the UTF-16LE encoding (RFC 2759 §8.3's NtPasswordHash).
pub fn nt_hash(password: &str) -> [u8; 16] {
    use md4::{Digest, Md4};
    let utf16: Vec<u8> = password.encode_utf16().flat_map(u16::to_le_bytes).collect();
    Md4::digest(&utf16).into()
}

/// Credentials are never printed: Debug shows the names only.
impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.users.iter().map(|u| &u.name)).finish()
    }
}

/// The users file, indexed: by name for every request, by device for every
/// verdict change. Loading and lookups cost the same per user whatever the
/// file's size (a linear scan per request once made PAP 50 times slower
/// than FreeRADIUS with 100,000 users, bench/RESULTS.md).
///
/// The indexes hold positions in `users`, not copies of the names: with
/// 1,000,000 users every extra allocation per user costs about a tenth of
/// a second to load and again to free.
#[derive(Default)]
pub struct Users {
    users: Vec<User>,
    by_name: HashTable<u32>,
    /// One position per user with a `device_id`; a device's users share
    /// its hash and are told apart by comparing the id.
    by_device: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    file: PathBuf,
}

impl Users {
    pub fn load(path: &Path) -> Result<Self, Located> {
        let text = std::fs::read_to_string(path).map_err(|e| Located::file(path, format!("cannot read: {e}")))?;
        let entries = match scan::scan(&text) {
            Some(entries) => entries,
            // Not the plain shape: toml reads it, and locates any error.
            None => scan::with_toml(&text).map_err(|e| Located::toml(path, &text, &e))?,
        };
        if u32::try_from(entries.len()).is_err() {
            return Err(Located::file(path, "more than 4,294,967,295 users"));
        }
        let mut out = Self { file: path.to_path_buf(), ..Self::default() };
        out.users.reserve(entries.len());
        out.by_name.reserve(entries.len(), |_| 0);
        for u in entries {
            let at = u.name_at;
            let name = u.name;
            let credential = match (u.password, u.nt_hash, u.argon2) {
                (Some(p), None, None) => Credential::Plain(Zeroizing::new(p.into_owned().into_bytes())),
                (None, Some(h), None) => Credential::NtHash(parse_hash(&h).ok_or_else(|| {
                    Located::at(path, &text, at, format!("user {name:?}: nt_hash must be 32 hex digits"))
                })?),
                (None, None, Some(phc)) => {
                    if argon2::password_hash::PasswordHash::new(&phc).is_err() {
                        return Err(Located::at(
                            path,
                            &text,
                            at,
                            format!("user {name:?}: argon2 is not a PHC string ($argon2id$v=19$...)"),
                        ));
                    }
                    Credential::Argon2(phc.as_ref().into())
                }
                _ => {
                    return Err(Located::at(
                        path,
                        &text,
                        at,
                        format!("user {name:?}: give one of password, nt_hash or argon2"),
                    ));
                }
            };
            let i = out.users.len() as u32;
            let users = &out.users;
            let hash = out.hasher.hash_one(name.as_ref());
            match out.by_name.entry(
                hash,
                |&j| *users[j as usize].name == *name,
                |&j| out.hasher.hash_one(&*users[j as usize].name),
            ) {
                hashbrown::hash_table::Entry::Occupied(_) => {
                    return Err(Located::at(path, &text, at, format!("duplicate user {name:?}")));
                }
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(i);
                }
            }
            let device_id: Option<Box<str>> = u.device_id.map(|d| d.as_ref().into());
            if let Some(d) = &device_id {
                let hasher = &out.hasher;
                out.by_device.insert_unique(hasher.hash_one(&**d), i, |&j| {
                    hasher.hash_one(users[j as usize].device_id.as_deref().unwrap_or_default())
                });
            }
            out.users.push(User { name: name.as_ref().into(), credential, device_id });
        }
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        let hash = self.hasher.hash_one(name);
        let i = self.by_name.find(hash, |&i| *self.users[i as usize].name == *name)?;
        self.users.get(*i as usize)
    }

    /// The users whose access a device's verdict decides.
    pub fn names_for_device(&self, device: &str) -> Vec<&str> {
        self.by_device
            .iter_hash(self.hasher.hash_one(device))
            .filter_map(|&i| self.users.get(i as usize))
            .filter(|u| u.device_id.as_deref() == Some(device))
            .map(|u| &*u.name)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// What `warden check` should point out.
    pub fn warnings(&self) -> Vec<String> {
        let plain = self.users.iter().filter(|u| matches!(u.credential, Credential::Plain(_))).count();
        if plain == 0 {
            return Vec::new();
        }
        vec![format!("{}: {plain} user(s) with a plain-text password; use nt_hash outside tests", self.file.display())]
    }
}

fn parse_hash(h: &str) -> Option<[u8; 16]> {
    let h = h.trim();
    if h.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_hash_matches_rfc_2759() {
        // RFC 2759 §9.2: NtPasswordHash("clientPass").
        assert_eq!(nt_hash("clientPass"), parse_hash("44EBBA8D5312B8D611474411F56989AE").unwrap());
    }

    #[test]
    fn argon2_hashes() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"warden-test-salt").unwrap();
        let phc = argon2::Argon2::default().hash_password(b"s3cret pass", &salt).unwrap().to_string();
        assert!(verify_argon2(&phc, b"s3cret pass"));
        assert!(!verify_argon2(&phc, b"s3cret pasS"));
        assert!(!verify_argon2("$argon2id$broken", b"x"));
    }

    #[test]
    fn verifies_plain_and_hashed_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(
            &path,
            "[[users]]\nname = \"alice\"\npassword = \"correct horse\"\ndevice_id = \"laptop-1\"\n\
             [[users]]\nname = \"bob\"\nnt_hash = \"44ebba8d5312b8d611474411f56989ae\"\n",
        )
        .unwrap();
        let users = Users::load(&path).unwrap();
        assert!(users.get("alice").unwrap().verify(b"correct horse"));
        assert!(!users.get("alice").unwrap().verify(b"correct horsE"));
        assert!(users.get("bob").unwrap().verify(b"clientPass"));
        assert!(!users.get("bob").unwrap().verify(b"clientpass"));
        assert!(users.get("carol").is_none());
        assert_eq!(users.warnings().len(), 1);
        std::fs::write(&path, "[[users]]\nname = \"x\"\nnt_hash = \"zz\"\n").unwrap();
        assert!(Users::load(&path).unwrap_err().to_string().contains("users.toml:2:8: user \"x\": nt_hash"));
    }

    #[test]
    fn a_duplicate_names_the_line_of_the_second_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut text = String::new();
        for i in 0..50 {
            text.push_str(&format!("[[users]]\nname = \"u{i}\"\npassword = \"p\"\n"));
        }
        text.push_str("[[users]]\nname = \"u7\"\npassword = \"q\"\n");
        std::fs::write(&path, text).unwrap();
        let err = Users::load(&path).unwrap_err().to_string();
        assert!(err.contains("users.toml:152:8: duplicate user \"u7\""), "{err}");
    }

    proptest::proptest! {
        /// Lookups by name and by device agree with a scan of the entries.
        #[test]
        fn lookups_match_a_naive_scan(entries in proptest::collection::vec((0u16..400, proptest::option::of(0u8..20)), 0..200)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("users.toml");
            let mut seen = std::collections::HashSet::new();
            let entries: Vec<(u16, Option<u8>)> = entries.into_iter().filter(|(n, _)| seen.insert(*n)).collect();
            let mut text = String::new();
            for (n, d) in &entries {
                text.push_str(&format!("[[users]]\nname = \"user-{n}\"\npassword = \"pw-{n}\"\n"));
                if let Some(d) = d {
                    text.push_str(&format!("device_id = \"dev-{d}\"\n"));
                }
            }
            std::fs::write(&path, text).unwrap();
            let users = Users::load(&path).unwrap();
            proptest::prop_assert_eq!(users.len(), entries.len());
            for n in 0..400u16 {
                let naive = entries.iter().find(|(m, _)| *m == n);
                let got = users.get(&format!("user-{n}"));
                proptest::prop_assert_eq!(got.is_some(), naive.is_some());
                if let Some(u) = got {
                    let password = format!("pw-{n}");
                    proptest::prop_assert!(u.verify(password.as_bytes()));
                }
            }
            for d in 0..20u8 {
                let mut naive: Vec<String> = entries.iter().filter(|(_, x)| *x == Some(d)).map(|(n, _)| format!("user-{n}")).collect();
                let mut got: Vec<String> = users.names_for_device(&format!("dev-{d}")).into_iter().map(String::from).collect();
                naive.sort();
                got.sort();
                proptest::prop_assert_eq!(got, naive);
            }
        }
    }
}
