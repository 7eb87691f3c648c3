//! API tokens with roles (`http.tokens_file`): each has a name (who acted,
//! for overrides and logs), a role (`read`: GET only; `admin`: writes too)
//! and the SHA-256 of the token, so the file holds no usable secret.
//! `http.token_file` (one token in clear) stays as an admin token named
//! `admin`.

use crate::diag::Located;
use serde::Deserialize;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Admin,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// One token: who, may do what, and the hash it is known by.
#[derive(Clone, Debug)]
pub struct Token {
    pub name: String,
    pub role: Role,
    sha256: [u8; 32],
}

/// Every token the API accepts. Empty: the API is open for reads and
/// refuses writes.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tokens: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    role: Role,
    sha256: String,
}

fn sha256(text: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// Reads `path` (`[[tokens]]` with `name`, `role`, `sha256` in hex).
    pub fn load(path: &Path) -> Result<Self, Located> {
        let text = std::fs::read_to_string(path).map_err(|e| Located::file(path, format!("cannot read: {e}")))?;
        let file: File = toml::from_str(&text).map_err(|e| Located::toml(path, &text, &e))?;
        let src = crate::diag::Source::new(path, &text);
        let mut out = Self::default();
        for (i, e) in file.tokens.into_iter().enumerate() {
            let at = |key: &str| src.offset(&["tokens", &i.to_string(), key]);
            let Some(sha256) = parse_hex(&e.sha256) else {
                return Err(src.error_at(at("sha256"), format!("token {:?}: sha256 must be 64 hex digits", e.name)));
            };
            if e.name.is_empty() || out.tokens.iter().any(|t| t.name == e.name) {
                return Err(src.error_at(at("name"), format!("token names must be unique and non-empty: {:?}", e.name)));
            }
            out.tokens.push(Token { name: e.name, role: e.role, sha256 });
        }
        Ok(out)
    }

    /// Adds a token known in clear (`http.token_file`).
    pub fn add_clear(&mut self, name: &str, role: Role, token: &str) {
        self.tokens.push(Token { name: name.to_string(), role, sha256: sha256(token) });
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token `given` is, if any. Every entry is compared, in constant
    /// time over the hashes, whichever matches.
    pub fn check(&self, given: &str) -> Option<&Token> {
        let hash = sha256(given);
        let mut found = None;
        for t in &self.tokens {
            if bool::from(subtle::ConstantTimeEq::ct_eq(&hash[..], &t.sha256[..])) {
                found = Some(t);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_known_by_their_hash_and_carry_a_role() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let hash = |t: &str| sha256(t).iter().map(|b| format!("{b:02x}")).collect::<String>();
        std::fs::write(
            &path,
            format!(
                "[[tokens]]\nname = \"alice\"\nrole = \"admin\"\nsha256 = \"{}\"\n\
                 [[tokens]]\nname = \"grafana\"\nrole = \"read\"\nsha256 = \"{}\"\n",
                hash("alice-secret-token"),
                hash("grafana-secret-token")
            ),
        )
        .unwrap();
        let mut t = Tokens::load(&path).unwrap();
        t.add_clear("admin", Role::Admin, "legacy-token-0123456789");
        let who = |g: &str| t.check(g).map(|t| (t.name.as_str(), t.role));
        assert_eq!(who("alice-secret-token"), Some(("alice", Role::Admin)));
        assert_eq!(who("grafana-secret-token"), Some(("grafana", Role::Read)));
        assert_eq!(who("legacy-token-0123456789"), Some(("admin", Role::Admin)));
        assert_eq!(who("alice-secret-tokeN"), None);
        assert_eq!(who(""), None);

        std::fs::write(&path, "[[tokens]]\nname = \"x\"\nrole = \"admin\"\nsha256 = \"abc\"\n").unwrap();
        assert!(Tokens::load(&path).unwrap_err().to_string().contains("64 hex digits"));
        std::fs::write(&path, "[[tokens]]\nname = \"x\"\nrole = \"root\"\nsha256 = \"abc\"\n").unwrap();
        assert!(Tokens::load(&path).is_err(), "an unknown role is refused");
    }
}
