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
