//! Fragmentation of TLS-based EAP methods (EAP-TLS, RFC 5216 §2.1.5 and
//! §3.1; PEAP uses the same framing with a version in the low flag bits).
//!
//! Type-data: Flags (L = length included, M = more fragments, S = start,
//! low 3 bits: version), an optional 4-byte TLS Message Length, then TLS
//! bytes. Each fragment is acknowledged by an empty message before the next.

/// Length included.
pub const FLAG_L: u8 = 0x80;
/// More fragments follow.
pub const FLAG_M: u8 = 0x40;
/// Start (server's first message only).
pub const FLAG_S: u8 = 0x20;
/// The method version bits (PEAP; 0 for EAP-TLS).
pub const VERSION_MASK: u8 = 0x07;

/// EAP header (4) + Type (1) + Flags (1) + TLS Message Length (4): what a
/// fragment's bytes share an EAP packet with.
pub const OVERHEAD: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FragError {
    #[error("no Flags byte")]
    Empty,
    #[error("L flag without a 4-byte TLS Message Length")]
    ShortLength,
    #[error("the message is larger than the reassembly cap")]
    TooLarge,
    #[error("the fragments do not add up to the announced length")]
    LengthMismatch,
}

/// One EAP-TLS/PEAP type-data, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub flags: u8,
    /// The TLS Message Length, when L is set.
    pub total: Option<u32>,
    pub data: &'a [u8],
}

impl<'a> Frame<'a> {
    pub fn parse(type_data: &'a [u8]) -> Result<Self, FragError> {
        let [flags, rest @ ..] = type_data else { return Err(FragError::Empty) };
        if flags & FLAG_L != 0 {
            let [a, b, c, d, data @ ..] = rest else { return Err(FragError::ShortLength) };
            Ok(Frame { flags: *flags, total: Some(u32::from_be_bytes([*a, *b, *c, *d])), data })
        } else {
            Ok(Frame { flags: *flags, total: None, data: rest })
        }
    }

    /// An acknowledgement: no data, neither L nor M nor S.
    pub fn is_ack(&self) -> bool {
        self.data.is_empty() && self.flags & (FLAG_L | FLAG_M | FLAG_S) == 0
    }

    pub fn more(&self) -> bool {
        self.flags & FLAG_M != 0
    }
}

/// Collects a peer's fragments into one TLS message, never holding more
/// than `cap` bytes whatever the peer announces.
#[derive(Debug)]
pub struct Reassembler {
    buf: Vec<u8>,
    total: Option<usize>,
    cap: usize,
}

impl Reassembler {
    pub fn new(cap: usize) -> Self {
        Self { buf: Vec::new(), total: None, cap }
    }

    /// Adds a fragment: `Some(message)` once the last one is in (M clear),
    /// `None` while more are expected (answer with an ACK).
    pub fn push(&mut self, frame: &Frame<'_>) -> Result<Option<Vec<u8>>, FragError> {
        if let Some(t) = frame.total {
            let t = usize::try_from(t).map_err(|_| FragError::TooLarge)?;
            if t > self.cap {
                return Err(FragError::TooLarge);
            }
            // Peers put L on the first fragment; some repeat it. A change is a lie.
            match self.total {
                None if self.buf.is_empty() => self.total = Some(t),
                Some(prev) if prev == t => {}
                _ => return Err(FragError::LengthMismatch),
            }
        }
        if self.buf.len() + frame.data.len() > self.total.unwrap_or(self.cap).min(self.cap) {
            return Err(if self.buf.len() + frame.data.len() > self.cap {
                FragError::TooLarge
            } else {
                FragError::LengthMismatch
            });
        }
        self.buf.extend_from_slice(frame.data);
        if frame.more() {
            return Ok(None);
        }
        if self.total.is_some_and(|t| t != self.buf.len()) {
            return Err(FragError::LengthMismatch);
        }
        self.total = None;
        Ok(Some(std::mem::take(&mut self.buf)))
    }

    /// Bytes held now (for the session limits).
    pub fn held(&self) -> usize {
        self.buf.len()
    }
}

/// A TLS message on its way out, one fragment per request.
#[derive(Debug)]
pub struct Fragmenter {
    data: Vec<u8>,
    sent: usize,
    max: usize,
}

impl Fragmenter {
    /// `mtu`: the largest EAP packet the NAS carries (Framed-MTU).
    pub fn new(data: Vec<u8>, mtu: usize) -> Self {
        Self { data, sent: 0, max: mtu.saturating_sub(OVERHEAD).max(64) }
    }

    /// The next fragment's type-data with `version` in the low flag bits;
    /// `None` once everything went out.
    pub fn next_fragment(&mut self, version: u8) -> Option<Vec<u8>> {
        if self.done() {
            return None;
        }
        let first = self.sent == 0;
        let fragmented = self.data.len() > self.max;
        let end = (self.sent + self.max).min(self.data.len());
        let mut flags = version & VERSION_MASK;
        if end < self.data.len() {
            flags |= FLAG_M;
        }
        let mut out = Vec::with_capacity(5 + end - self.sent);
        if first && fragmented {
            flags |= FLAG_L;
            out.push(flags);
            out.extend_from_slice(&u32::try_from(self.data.len()).unwrap_or(u32::MAX).to_be_bytes());
        } else {
            out.push(flags);
        }
        out.extend_from_slice(&self.data[self.sent..end]);
        self.sent = end;
        if self.data.is_empty() {
            self.sent = 1; // an empty message still goes out once
        }
        Some(out)
    }

    pub fn done(&self) -> bool {
        self.sent >= self.data.len().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_three_fragment_message() {
        let data: Vec<u8> = (0..250u8).collect();
        let mut out = Fragmenter::new(data.clone(), OVERHEAD + 100);
        let f1 = out.next_fragment(0).unwrap();
        assert_eq!(f1[0], FLAG_L | FLAG_M);
        assert_eq!(&f1[1..5], &250u32.to_be_bytes());
        assert_eq!(f1.len(), 105);
        let f2 = out.next_fragment(0).unwrap();
        assert_eq!((f2[0], f2.len()), (FLAG_M, 101));
        let f3 = out.next_fragment(0).unwrap();
        assert_eq!((f3[0], f3.len()), (0, 51));
        assert!(out.next_fragment(0).is_none());
        let mut r = Reassembler::new(1000);
        assert_eq!(r.push(&Frame::parse(&f1).unwrap()), Ok(None));
        assert_eq!(r.push(&Frame::parse(&f2).unwrap()), Ok(None));
        assert_eq!(r.push(&Frame::parse(&f3).unwrap()), Ok(Some(data)));
    }

    #[test]
    fn liars_and_hogs_are_refused() {
        let mut r = Reassembler::new(1000);
        assert_eq!(
            r.push(&Frame { flags: FLAG_L | FLAG_M, total: Some(5000), data: &[1; 10] }),
            Err(FragError::TooLarge)
        );
        let mut r = Reassembler::new(1000);
        assert_eq!(r.push(&Frame { flags: FLAG_M, total: None, data: &[1; 600] }), Ok(None));
        assert_eq!(r.push(&Frame { flags: FLAG_M, total: None, data: &[1; 600] }), Err(FragError::TooLarge));
        let mut r = Reassembler::new(1000);
        assert_eq!(r.push(&Frame { flags: FLAG_L | FLAG_M, total: Some(20), data: &[1; 10] }), Ok(None));
        assert_eq!(r.push(&Frame { flags: 0, total: None, data: &[1; 5] }), Err(FragError::LengthMismatch));
        let mut r = Reassembler::new(1000);
        assert_eq!(r.push(&Frame { flags: FLAG_L | FLAG_M, total: Some(20), data: &[1; 10] }), Ok(None));
        assert_eq!(r.push(&Frame { flags: FLAG_M, total: None, data: &[1; 11] }), Err(FragError::LengthMismatch));
        assert_eq!(Frame::parse(&[FLAG_L, 0, 0]), Err(FragError::ShortLength));
        assert_eq!(Frame::parse(&[]), Err(FragError::Empty));
        assert!(Frame::parse(&[0]).unwrap().is_ack());
        assert!(!Frame::parse(&[FLAG_S]).unwrap().is_ack());
    }

    proptest! {
        /// Any message, any MTU: fragments fit the MTU and reassemble to the message.
        #[test]
        fn fragment_then_reassemble(len in 0usize..20_000, mtu in 64usize..1500, seed in any::<u8>()) {
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            let mut out = Fragmenter::new(data.clone(), mtu);
            let mut r = Reassembler::new(64 * 1024);
            let mut got = None;
            let mut n = 0;
            while let Some(f) = out.next_fragment(1) {
                prop_assert!(f.len() + 5 <= mtu.max(64 + OVERHEAD), "fragment of {} for mtu {}", f.len(), mtu);
                let frame = Frame::parse(&f).unwrap();
                prop_assert_eq!(frame.flags & VERSION_MASK, 1);
                if let Some(m) = r.push(&frame).unwrap() {
                    got = Some(m);
                }
                n += 1;
                prop_assert!(n <= len / 10 + 2);
            }
            prop_assert_eq!(got, Some(data));
        }
    }
}
