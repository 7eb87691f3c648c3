//! Errors that point into a file: `FILE:LINE:COL: message`, the shape every
//! editor and CI log viewer can jump to.

use std::fmt;
use std::path::{Path, PathBuf};

/// A problem at a place in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is with the file as a whole.
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.col, self.message)
        }
    }
}

impl std::error::Error for Located {}

impl Located {
    /// A problem with the whole file (unreadable, missing).
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        Self { file: file.to_path_buf(), line: 0, col: 0, message: message.into() }
    }

    /// A problem at byte offset `at` of `source`.
    pub fn at(file: &Path, source: &str, at: usize, message: impl Into<String>) -> Self {
        let (line, col) = line_col(source, at);
        Self { file: file.to_path_buf(), line, col, message: message.into() }
    }

    /// A TOML parse or validation error, located by its span.
    pub fn toml(file: &Path, source: &str, err: &toml::de::Error) -> Self {
        let at = err.span().map_or(0, |s| s.start);
        // toml's message repeats nothing of the location, so it can be used as is.
        Self::at(file, source, at, err.message().trim().to_string())
    }
}

/// A TOML file being checked, with the spans toml's parser gives every key
/// (`toml::de::DeTable`, a tree of `toml::Spanned` keys and values): a
/// check locates its error at the key that holds the value, in the right
/// table, never at a word that happens to appear earlier in a comment.
pub struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    /// Parsed on the first error only: a file that checks clean is parsed
    /// once, by its deserialization.
    doc: std::cell::OnceCell<Option<toml::Spanned<toml::de::DeTable<'a>>>>,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Self { file, text, doc: std::cell::OnceCell::new() }
    }

    /// Byte offset of what `path` names: table and key names, with an
    /// element of an array as its index (`["radius", "clients", "2",
    /// "secret"]`). A value is located at the value (as toml locates its
    /// own errors), a table at its name. A key the file does not have (a
    /// default was checked) gives the nearest enclosing one it has; none,
    /// the start.
    pub fn offset(&self, path: &[&str]) -> usize {
        let Some(doc) = self.doc.get_or_init(|| toml::de::DeTable::parse(self.text).ok()) else { return 0 };
        let mut at = 0;
        let mut node: Option<&toml::de::DeValue<'_>> = None;
        let mut table = Some(doc.get_ref());
        for part in path {
            let next = match (table, node) {
                (Some(t), _) => t.get_key_value(*part).map(|(k, v)| {
                    let at = if v.get_ref().as_table().is_some() { k.span().start } else { v.span().start };
                    (at, v)
                }),
                (None, Some(toml::de::DeValue::Array(a))) => {
                    part.parse::<usize>().ok().and_then(|i| a.get(i)).map(|v| (v.span().start, v))
                }
                _ => None,
            };
            let Some((start, value)) = next else { break };
            at = start;
            node = Some(value.get_ref());
            table = value.get_ref().as_table();
        }
        at
    }

    /// An error at the key at `path` (see [`Source::offset`]).
    pub fn error(&self, path: &[&str], message: impl Into<String>) -> Located {
        Located::at(self.file, self.text, self.offset(path), message)
    }

    /// An error at byte offset `at`.
    pub fn error_at(&self, at: usize, message: impl Into<String>) -> Located {
        Located::at(self.file, self.text, at, message)
    }
}

/// A secret from a file, trailing newline removed; empty is an error.
pub fn read_secret(path: &Path) -> Result<String, String> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let s = s.trim_end_matches(['\n', '\r']).to_string();
    if s.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(s)
}

/// A network, or a bare address as a host route (`10.0.0.7` is
/// `10.0.0.7/32`): the one parser for every IP-or-CIDR a file holds.
pub fn parse_net(text: &str) -> Result<ipnet::IpNet, String> {
    let t = text.trim();
    t.parse::<ipnet::IpNet>()
        .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{t:?} is not an IP address or CIDR"))
}

/// 1-based line and column (in characters) of byte offset `at`.
pub fn line_col(source: &str, at: usize) -> (usize, usize) {
    let at = at.min(source.len());
    let before = source.get(..at).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Parses a duration such as `"15m"`, `"2s"`, `"1h 30m"`, `"0s"`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e} (write e.g. \"15m\", \"2s\")"))
}

/// Serde glue: a duration written as a human string.
pub mod duration {
    use serde::{Deserialize, Deserializer, de::Error};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_located_by_their_path_not_by_a_search() {
        let text = "# password: none here\n[mqtt]\nbroker = \"embedded\"\npassword = \"x\"\n\n\
                    [[radius.clients]]\nname = \"a\"\n[[radius.clients]]\nname = \"b\"\nsecret = \"s\"\n";
        let src = Source::new(Path::new("t.toml"), text);
        let line = |path: &[&str]| line_col(text, src.offset(path)).0;
        assert_eq!(line(&["mqtt", "password"]), 4, "the key, not the comment that mentions it");
        assert_eq!(line_col(text, src.offset(&["mqtt", "password"])), (4, 12), "at the value");
        assert_eq!(line_col(text, src.offset(&["mqtt"])), (2, 2), "a table at its name");
        assert_eq!(line(&["radius", "clients", "1", "secret"]), 10);
        assert_eq!(line(&["radius", "clients", "1", "absent"]), 8, "a missing key: its table");
        assert_eq!(line(&["mqtt", "absent"]), 2);
        assert_eq!(line(&["nothing"]), 1);
        assert_eq!(Source::new(Path::new("t"), "not = [toml").offset(&["not"]), 0, "unparsable: the start");
    }

    #[test]
    fn an_address_or_a_network_is_a_network() {
        assert_eq!(parse_net(" 10.0.0.7 ").unwrap(), "10.0.0.7/32".parse::<ipnet::IpNet>().unwrap());
        assert_eq!(parse_net("fd00::/8").unwrap(), "fd00::/8".parse::<ipnet::IpNet>().unwrap());
        assert!(parse_net("10.0.0.0/33").is_err() && parse_net("host").is_err());
    }

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\nbb = x\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 11), (2, 6));
        assert_eq!(line_col(src, 999), (3, 1));
    }

    #[test]
    fn toml_errors_name_file_line_and_column() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            a: u8,
        }
        let src = "a = 1\nb = 2\n";
        let err = toml::from_str::<T>(src).unwrap_err();
        let loc = Located::toml(Path::new("x.toml"), src, &err).to_string();
        assert!(loc.starts_with("x.toml:2:1: unknown field `b`"), "{loc}");
    }
}
