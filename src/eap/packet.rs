//! EAP packets (RFC 3748 §4): Code, Identifier, Length, and for Request and
//! Response a Type and its data. Decoded as a borrowed view, every length
//! checked; encoded by [`encode`].

/// EAP Codes (RFC 3748 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Request,
    Response,
    Success,
    Failure,
}

impl Code {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Code::Request),
            2 => Some(Code::Response),
            3 => Some(Code::Success),
            4 => Some(Code::Failure),
            _ => None,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Code::Request => 1,
            Code::Response => 2,
            Code::Success => 3,
            Code::Failure => 4,
        }
    }
}

/// EAP method types warden speaks (RFC 3748 §5, IANA "EAP Method Types").
pub mod kind {
    pub const IDENTITY: u8 = 1;
    pub const NOTIFICATION: u8 = 2;
    /// Legacy Nak: the peer's Response naming the methods it wants instead.
    pub const NAK: u8 = 3;
    pub const TLS: u8 = 13;
    pub const PEAP: u8 = 25;
    pub const MSCHAPV2: u8 = 26;
}

/// Why bytes are not an EAP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than its 4-byte header")]
    Short,
    #[error("Length field disagrees with the bytes")]
    Length,
    #[error("unknown Code")]
    Code,
    #[error("Request/Response without a Type")]
    NoType,
}

/// A validated EAP packet borrowed from its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub code: Code,
    pub id: u8,
    /// The Type of a Request/Response (`None` for Success/Failure).
    pub kind: Option<u8>,
    /// What follows the Type (empty for Success/Failure).
    pub data: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Decodes exactly one packet: its Length must equal the bytes given
    /// (RFC 3579 §3.1: EAP-Message attributes concatenate to one packet).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Malformed> {
        let [code, id, l0, l1, rest @ ..] = bytes else { return Err(Malformed::Short) };
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        if len != bytes.len() {
            return Err(Malformed::Length);
        }
        let code = Code::from_u8(*code).ok_or(Malformed::Code)?;
        match code {
            Code::Success | Code::Failure => Ok(Packet { code, id: *id, kind: None, data: &[] }),
            Code::Request | Code::Response => {
                let [kind, data @ ..] = rest else { return Err(Malformed::NoType) };
                Ok(Packet { code, id: *id, kind: Some(*kind), data })
            }
        }
    }
}

/// Encodes a packet; `kind` is ignored for Success and Failure. `None` if
/// it would exceed the 16-bit Length.
pub fn encode(code: Code, id: u8, kind: Option<u8>, data: &[u8]) -> Option<Vec<u8>> {
    let typed = matches!(code, Code::Request | Code::Response);
    let len = 4 + if typed { 1 + data.len() } else { 0 };
    let len16 = u16::try_from(len).ok()?;
    let mut out = Vec::with_capacity(len);
    out.push(code.to_u8());
    out.push(id);
    out.extend_from_slice(&len16.to_be_bytes());
    if typed {
        out.push(kind.unwrap_or(0));
        out.extend_from_slice(data);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn identity_response_and_success() {
        let bytes = [2, 7, 0, 10, 1, b'a', b'l', b'i', b'c', b'e'];
        let p = Packet::decode(&bytes).unwrap();
        assert_eq!((p.code, p.id, p.kind, p.data), (Code::Response, 7, Some(kind::IDENTITY), &b"alice"[..]));
        assert_eq!(encode(Code::Success, 9, None, &[]).unwrap(), vec![3, 9, 0, 4]);
        assert_eq!(Packet::decode(&[3, 9, 0, 4]).unwrap().kind, None);
    }

    #[test]
    fn malformed_shapes() {
        assert_eq!(Packet::decode(&[2, 1, 0]), Err(Malformed::Short));
        assert_eq!(Packet::decode(&[2, 1, 0, 9, 1]), Err(Malformed::Length));
        assert_eq!(Packet::decode(&[2, 1, 0, 4, 1]), Err(Malformed::Length), "trailing bytes");
        assert_eq!(Packet::decode(&[9, 1, 0, 4]), Err(Malformed::Code));
        assert_eq!(Packet::decode(&[1, 1, 0, 4]), Err(Malformed::NoType));
    }

    proptest! {
        #[test]
        fn encode_then_decode(code in 1u8..=4, id in any::<u8>(), kind in any::<u8>(),
                              data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let code = Code::from_u8(code).unwrap();
            let bytes = encode(code, id, Some(kind), &data).unwrap();
            let p = Packet::decode(&bytes).unwrap();
            prop_assert_eq!(p.code, code);
            prop_assert_eq!(p.id, id);
            if matches!(code, Code::Request | Code::Response) {
                prop_assert_eq!(p.kind, Some(kind));
                prop_assert_eq!(p.data, &data[..]);
            }
        }
    }
}
