//! MAC addresses in every format NAS vendors and MDMs write them.

use std::fmt;

/// A 48-bit MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Parses `aa:bb:cc:dd:ee:ff`, `AA-BB-CC-DD-EE-FF`, `aabb.ccdd.eeff` and
    /// bare `aabbccddeeff` (any case). Separators must be consistent and in
    /// their usual places: anything else is not a MAC.
    pub fn parse(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        let hex: Vec<u8> = match b.len() {
            12 => b.to_vec(),
            17 => {
                let sep = b[2];
                if !(sep == b':' || sep == b'-') || (0..5).any(|i| b[2 + 3 * i] != sep) {
                    return None;
                }
                b.iter().enumerate().filter(|(i, _)| i % 3 != 2).map(|(_, c)| *c).collect()
            }
            14 => {
                if b[4] != b'.' || b[9] != b'.' {
                    return None;
                }
                b.iter().filter(|c| **c != b'.').copied().collect()
            }
            _ => return None,
        };
        if hex.len() != 12 {
            return None;
        }
        let mut out = [0u8; 6];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Self(out))
    }
}

impl fmt::Display for Mac {
    /// Lower-case, colon-separated: the form logs and the API use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_formats() {
        let want = Mac([0xaa, 0xbb, 0xcc, 0x00, 0x00, 0x01]);
        for s in ["aa:bb:cc:00:00:01", "AA-BB-CC-00-00-01", "aabb.cc00.0001", "AABBCC000001", "aA:Bb:cC:00:00:01"] {
            assert_eq!(Mac::parse(s), Some(want), "{s}");
        }
        assert_eq!(want.to_string(), "aa:bb:cc:00:00:01");
    }

    #[test]
    fn refuses_what_is_not_a_mac() {
        for s in [
            "",
            "alice",
            "aa:bb:cc:00:00",
            "aa:bb-cc:00:00:01",
            "aabb.cc00-0001",
            "gg:bb:cc:00:00:01",
            "aa:bb:cc:00:00:01:02",
            "aabbcc00000",
            "+a:bb:cc:00:00:01",
            "ééééé",
        ] {
            assert_eq!(Mac::parse(s), None, "{s}");
        }
    }
}
