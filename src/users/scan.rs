//! A fast reader for the plain shape of a users file: `[[users]]` headers,
//! `key = "string"` lines, blank lines and comments.
//!
//! Why not `toml` alone: it builds a document of the whole file before serde
//! sees a user, which for 1,000,000 users (100 MB) took 5–11 s and 2.2 GiB
//! (bench/RESULTS.md). This reader is a strict subset of TOML: whatever it
//! is not sure of (escapes, multi-line or quoted-key forms, inline tables,
//! unknown or repeated keys, a missing name, stray control characters) makes
//! it return `None`, and the file is read by `toml`, which then decides and
//! locates any error. A property test checks that whatever this accepts,
//! `toml` reads the same way.

use std::borrow::Cow;

/// One `[[users]]` table, as written.
/// Values are borrowed from the text, or owned when `toml` read them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Entry<'a> {
    pub name: Cow<'a, str>,
    /// Byte offset of the name's value (its opening quote): errors name it.
    pub name_at: usize,
    pub password: Option<Cow<'a, str>>,
    pub nt_hash: Option<Cow<'a, str>>,
    pub argon2: Option<Cow<'a, str>>,
    pub device_id: Option<Cow<'a, str>>,
}

/// The entries of `text`, or `None` when the file is not in the plain shape.
pub fn scan(text: &str) -> Option<Vec<Entry<'_>>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    // The table being filled, with whether its name was given.
    let mut current: Option<(Entry, bool)> = None;
    let mut pos = 0;
    while pos < b.len() {
        let end = b[pos..].iter().position(|&c| c == b'\n').map_or(b.len(), |i| pos + i);
        let mut line_end = end;
        if end < b.len() && line_end > pos && b[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        let mut i = skip_ws(b, pos, line_end);
        if i < line_end && b[i] != b'#' {
            if b[i..line_end].starts_with(b"[[users]]") {
                i += b"[[users]]".len();
                if let Some(done) = current.take() {
                    out.push(finished(done)?);
                }
                current = Some((Entry::default(), false));
            } else {
                let (entry, named) = current.as_mut()?;
                let key_start = i;
                while i < line_end && is_bare_key(b[i]) {
                    i += 1;
                }
                let key = &b[key_start..i];
                i = skip_ws(b, i, line_end);
                if b.get(i) != Some(&b'=') || i >= line_end {
                    return None;
                }
                i = skip_ws(b, i + 1, line_end);
                let value_at = i;
                let (value, after) = string(text, i, line_end)?;
                i = after;
                let slot = match key {
                    b"name" if !*named => {
                        *named = true;
                        entry.name_at = value_at;
                        &mut entry.name
                    }
                    b"password" if entry.password.is_none() => entry.password.insert(Cow::Borrowed("")),
                    b"nt_hash" if entry.nt_hash.is_none() => entry.nt_hash.insert(Cow::Borrowed("")),
                    b"argon2" if entry.argon2.is_none() => entry.argon2.insert(Cow::Borrowed("")),
                    b"device_id" if entry.device_id.is_none() => entry.device_id.insert(Cow::Borrowed("")),
                    _ => return None,
                };
                *slot = value;
            }
            i = skip_ws(b, i, line_end);
        }
        if i < line_end {
            // Only a comment may end the line.
            if b[i] != b'#' || b[i + 1..line_end].iter().any(|&c| is_control(c) && c != b'\t') {
                return None;
            }
        }
        // A carriage return anywhere but before the newline is not plain.
        if b[pos..line_end].contains(&b'\r') {
            return None;
        }
        pos = end + 1;
    }
    if let Some(done) = current {
        out.push(finished(done)?);
    }
    Some(out)
}

/// The file as `toml` reads it: any shape TOML allows, errors with spans.
/// The reference the fast reader is checked against, and the fallback.
pub fn with_toml(text: &str) -> Result<Vec<Entry<'static>>, toml::de::Error> {
    let f: File = toml::from_str(text)?;
    Ok(f.users
        .into_iter()
        .map(|u| Entry {
            name_at: u.name.span().start,
            name: u.name.into_inner().into(),
            password: u.password.map(Into::into),
            nt_hash: u.nt_hash.map(Into::into),
            argon2: u.argon2.map(Into::into),
            device_id: u.device_id.map(Into::into),
        })
        .collect())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    users: Vec<UserEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    /// Spanned: an error names the line of this entry (of the second one,
    /// for a duplicate) without searching the text.
    name: toml::Spanned<String>,
    password: Option<String>,
    nt_hash: Option<String>,
    argon2: Option<String>,
    device_id: Option<String>,
}

fn finished((entry, named): (Entry<'_>, bool)) -> Option<Entry<'_>> {
    named.then_some(entry)
}

fn skip_ws(b: &[u8], mut i: usize, end: usize) -> usize {
    while i < end && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    i
}

fn is_bare_key(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn is_control(c: u8) -> bool {
    c < 0x20 || c == 0x7f
}

/// A one-line basic string without escapes, or a literal string, starting
/// at `i`: its value and the offset after its closing quote.
fn string(text: &str, i: usize, end: usize) -> Option<(Cow<'_, str>, usize)> {
    let b = text.as_bytes();
    let quote = *b.get(i).filter(|_| i < end)?;
    if quote != b'"' && quote != b'\'' {
        return None;
    }
    let start = i + 1;
    // Three quotes open a multi-line string: not plain.
    if b.get(start) == Some(&quote) && b.get(start + 1) == Some(&quote) {
        return None;
    }
    let len = b[start..end].iter().position(|&c| c == quote)?;
    let body = &b[start..start + len];
    if body.iter().any(|&c| is_control(c) || c == b'\\') {
        return None;
    }
    // The body begins and ends at ASCII quotes, so it is whole UTF-8.
    Some((Cow::Borrowed(&text[start..start + len]), start + len + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(text: &str) -> Option<Vec<Entry<'static>>> {
        with_toml(text).ok()
    }

    #[test]
    fn reads_the_plain_shape() {
        let text = "# users\n\n[[users]]   # first\nname = \"alice\"\r\npassword = 'correct horse' # plain\n\
                    device_id=\"laptop-1\"\n\t[[users]]\n  name = \"bø\"\nnt_hash = \"44ebba8d5312b8d611474411f56989ae\"\n";
        let got = scan(text).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].password.as_deref(), Some("correct horse"));
        assert_eq!(got[1].name, "bø");
        assert_eq!(Some(got), reference(text));
        assert_eq!(scan(""), Some(Vec::new()));
    }

    #[test]
    fn leaves_everything_else_to_toml() {
        for text in [
            "[[users]]\nname = \"a\\u0041\"\n",               // an escape
            "[[users]]\nname = \"\"\"a\"\"\"\n",              // multi-line
            "users = [{ name = \"a\", password = \"p\" }]\n", // inline
            "[[users]]\n\"name\" = \"a\"\n",                  // quoted key
            "[[users]]\nname = \"a\"\nname = \"b\"\n",        // repeated key
            "[[users]]\npassword = \"p\"\n",                  // no name
            "[[users]]\nname = \"a\"\ncolour = \"red\"\n",    // unknown key
            "name = \"a\"\n",                                 // outside a table
            "[[users]]\nname = 5\n",                          // not a string
            "[[users]]\nname = \"a\" x\n",                    // trailing garbage
            "[[users]]\nname = \"a\r\"\n",                    // a control character
            "[[users]]\nname = \"a\"\r\r\n",                  // a lone carriage return
            "[[users]]\nname = \"a\" # \u{7f}\n",             // DEL in a comment
            "[ [users]]\nname = \"a\"\n",
            "[[users]]\nname = \"a\"\r", // a carriage return at the end
        ] {
            assert_eq!(scan(text), None, "{text:?}");
        }
    }

    proptest::proptest! {
        /// Whatever the scanner accepts, toml reads identically (values
        /// and the name's offset); a file in the plain shape is accepted.
        #[test]
        fn agrees_with_toml(tables in proptest::collection::vec((
            proptest::sample::select(vec!["[[users]]", "[[users]] # c", " [[users]]", "[[users]]", "[users]", "[[users ]]", "", "# c"]),
            proptest::sample::select(vec![
                "name = \"n1\"", "name = 'n2'", "name=\"n3\"", "\tname = \"n4\" # x", "name = \"\"", "name = ''",
                "name = \"é\"", "name = \"n\\\"5\"", "name = ''''", "name = \"a\tb\"", "", "name = \"x\" \"y\"",
            ]),
            proptest::collection::vec(proptest::sample::select(vec![
                "password = \"p\"", "password = 'p # not a comment'", "nt_hash = \"00\"", "argon2 = \"$a\"",
                "device_id = \"d\"", "# comment", "", "   ", "password = \"p\"", "device_id = 'd2' ",
                "device_id = 7", "other = \"x\"", "#\u{1}", "name = \"unterminated", "= \"x\"", "name \"x\"",
                "name = \"again\"",
            ]), 0..4),
        ), 0..8), crlf in proptest::bool::ANY) {
            let mut lines = Vec::new();
            for (header, name, rest) in &tables {
                lines.push(*header);
                lines.push(*name);
                lines.extend(rest.iter().copied());
            }
            let text = lines.join(if crlf { "\r\n" } else { "\n" });
            if let Some(fast) = scan(&text) {
                proptest::prop_assert_eq!(Some(fast), reference(&text), "{:?}", text);
            }
        }

        #[test]
        fn plain_files_are_accepted(users in proptest::collection::vec(("[a-z0-9@._-]{1,12}", "[ -~&&[^\"\\\\]]{0,16}", proptest::option::of("[a-z0-9-]{1,8}")), 0..40)) {
            let mut text = String::new();
            for (name, password, device) in &users {
                text.push_str(&format!("[[users]]\nname = \"{name}\"\npassword = \"{password}\"\n"));
                if let Some(d) = device {
                    text.push_str(&format!("device_id = \"{d}\"\n"));
                }
            }
            let fast = scan(&text);
            proptest::prop_assert!(fast.is_some());
            proptest::prop_assert_eq!(fast, reference(&text));
        }
    }
}
