//! Local credentials (`radius.users_file`) for PAP: a name, a password or its
//! NT hash, and optionally the device whose verdict decides the user's access.

use crate::diag::Located;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    users: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password: Option<String>,
    nt_hash: Option<String>,
    argon2: Option<String>,
    device_id: Option<String>,
}

/// How a user's password is checked.
enum Credential {
    /// Plain text: for trying warden and for tests (`warden check` warns).
    Plain(Zeroizing<Vec<u8>>),
    /// MD4 of the UTF-16LE password (what MS-CHAPv2 also needs).
    NtHash([u8; 16]),
    /// An Argon2 PHC string (`$argon2id$v=19$...`): PAP only, and slow on
    /// purpose, so it is checked off the RADIUS task.
    Argon2(Arc<str>),
}

pub struct User {
    pub name: String,
    credential: Credential,
    pub device_id: Option<String>,
}

impl User {
    /// Checks a PAP password, in constant time over the compared bytes.
    pub fn verify(&self, password: &[u8]) -> bool {
        match &self.credential {
            Credential::Plain(p) => crate::radius::crypto::ct_eq(p, password),
            Credential::NtHash(h) => {
                std::str::from_utf8(password).map(|p| crate::radius::crypto::ct_eq(&nt_hash(p), h)).unwrap_or(false)
            }
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

/// MS-CHAPv2 (PEAP) asks the users file for NT hashes.
impl crate::eap::peap::Credentials for Users {
    fn nt_hash(&self, user: &str) -> Option<Zeroizing<[u8; 16]>> {
        self.get(user)?.nt_password_hash()
    }
}

/// Credentials are never printed: Debug shows the names only.
impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.users.iter().map(|u| &u.name)).finish()
    }
}

#[derive(Default)]
pub struct Users {
    users: Vec<User>,
    file: PathBuf,
}

impl Users {
    pub fn load(path: &Path) -> Result<Self, Located> {
        let text = std::fs::read_to_string(path).map_err(|e| Located::file(path, format!("cannot read: {e}")))?;
        let f: File = toml::from_str(&text).map_err(|e| Located::toml(path, &text, &e))?;
        let mut users: Vec<User> = Vec::new();
        for u in f.users {
            let at = text.find(&format!("{:?}", u.name)).unwrap_or(0);
            let credential = match (u.password, u.nt_hash, u.argon2) {
                (Some(p), None, None) => Credential::Plain(Zeroizing::new(p.into_bytes())),
                (None, Some(h), None) => Credential::NtHash(parse_hash(&h).ok_or_else(|| {
                    Located::at(path, &text, at, format!("user {:?}: nt_hash must be 32 hex digits", u.name))
                })?),
                (None, None, Some(phc)) => {
                    if argon2::password_hash::PasswordHash::new(&phc).is_err() {
                        return Err(Located::at(
                            path,
                            &text,
                            at,
                            format!("user {:?}: argon2 is not a PHC string ($argon2id$v=19$...)", u.name),
                        ));
                    }
                    Credential::Argon2(phc.into())
                }
                _ => {
                    return Err(Located::at(
                        path,
                        &text,
                        at,
                        format!("user {:?}: give one of password, nt_hash or argon2", u.name),
                    ));
                }
            };
            if users.iter().any(|o| o.name == u.name) {
                return Err(Located::at(path, &text, at, format!("duplicate user {:?}", u.name)));
            }
            users.push(User { name: u.name, credential, device_id: u.device_id });
        }
        Ok(Self { users, file: path.to_path_buf() })
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The users whose access a device's verdict decides.
    pub fn names_for_device(&self, device: &str) -> Vec<&str> {
        self.users.iter().filter(|u| u.device_id.as_deref() == Some(device)).map(|u| u.name.as_str()).collect()
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
}
