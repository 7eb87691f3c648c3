//! Version comparison for `version_gte` / `version_lt`.
//!
//! A version is its leading run of dot-separated numbers: `14.0.1`,
//! `10`, `3.2.0-beta` (the qualifier after the numbers is ignored). Missing
//! components count as zero, so `14.0 == 14.0.0 < 14.0.1`, and components
//! compare as numbers, so `9 < 10`.

use std::cmp::Ordering;

/// A parsed version: its numeric components without trailing zeros, and
/// the text it was written as (for messages).
#[derive(Clone, Debug)]
pub struct Version {
    parts: Box<[u64]>,
    text: Box<str>,
}

impl Version {
    /// Parses the leading numeric components; `None` when there are none.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
        let mut parts = Vec::new();
        for part in text.split('.') {
            let digits = part.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                break;
            }
            parts.push(part[..digits].parse::<u64>().ok()?);
            if digits < part.len() {
                break; // "0-beta", "1+build": the qualifier ends the version
            }
        }
        if parts.is_empty() {
            return None;
        }
        while parts.len() > 1 && parts.last() == Some(&0) {
            parts.pop();
        }
        Some(Self { parts: parts.into_boxed_slice(), text: text.into() })
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        // Trailing zeros were stripped, so a plain lexicographic compare of
        // the components treats a missing component as zero.
        self.parts.cmp(&other.parts)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.parts == other.parts
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn compares_like_people_expect() {
        assert!(v("14.0.1") > v("14.0"));
        assert!(v("14.0") < v("14.0.1"));
        assert_eq!(v("14.0"), v("14"));
        assert_eq!(v("14.0.0"), v("14"));
        assert!(v("9") < v("10"));
        assert!(v("9.9.9") < v("10.0"));
        assert!(v("1.10") > v("1.9"));
        assert!(v("17.1.2") > v("17.1.1"));
        assert_eq!(v("3.2.0-beta"), v("3.2"));
        assert_eq!(v("v2.1"), v("2.1"));
        assert_eq!(v("14.0.1 (22A100)"), v("14.0.1"));
    }

    #[test]
    fn rejects_what_is_not_a_version() {
        for bad in ["", "beta", ".1", "x.1", "99999999999999999999999"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn order_matches_zero_padded_numbers(a in prop::collection::vec(0u64..50, 1..5),
                                             b in prop::collection::vec(0u64..50, 1..5)) {
            let show = |p: &[u64]| p.iter().map(u64::to_string).collect::<Vec<_>>().join(".");
            let pad = |p: &[u64]| { let mut p = p.to_vec(); p.resize(5, 0); p };
            prop_assert_eq!(v(&show(&a)).cmp(&v(&show(&b))), pad(&a).cmp(&pad(&b)));
        }
    }
}
