//! Decoding: a datagram in, a borrowed, fully validated [`Packet`] out.
//!
//! Every length is checked once, here, so reading attributes afterwards
//! cannot fail or index out of bounds: parse, don't validate.

use super::crypto;
use super::dictionary::{AttrType, Code};

/// Smallest RADIUS packet (RFC 2865 §3).
pub const MIN_LEN: usize = 20;
/// Largest RADIUS packet (RFC 2865 §3; RFC 7499 for larger ones is not supported).
pub const MAX_LEN: usize = 4096;

/// Why a datagram is not a RADIUS packet warden will read. Each is a silent
/// discard (RFC 2865 §3) and a counter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer than 20 bytes, or a Length field under 20.
    #[error("packet shorter than 20 bytes")]
    TooShort,
    /// A Length field over 4096.
    #[error("length {0} over 4096")]
    TooLong(usize),
    /// The Length field says more than the datagram holds.
    #[error("length field {declared} but only {received} bytes received")]
    Truncated { declared: usize, received: usize },
    /// An attribute's length is under 2 or runs past the packet's end.
    #[error("attribute at offset {offset} overflows the packet")]
    AttributeOverflow { offset: usize },
    /// A known attribute with the wrong size (e.g. a 4-byte integer of 5).
    #[error("attribute {attr:?} has length {len}, not a valid size for it")]
    BadAttributeSize { attr: AttrType, len: usize },
    /// Message-Authenticator appears more than once.
    #[error("more than one Message-Authenticator")]
    DuplicateMessageAuthenticator,
}

impl DecodeError {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooShort => "too_short",
            Self::TooLong(_) => "too_long",
            Self::Truncated { .. } => "truncated",
            Self::AttributeOverflow { .. } => "attribute_overflow",
            Self::BadAttributeSize { .. } => "bad_attribute_size",
            Self::DuplicateMessageAuthenticator => "duplicate_message_authenticator",
        }
    }
}

/// One attribute: its type and value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr<'a> {
    pub typ: AttrType,
    pub value: &'a [u8],
}

/// A validated RADIUS packet borrowing the datagram it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Exactly `Length` bytes; bytes past it in the datagram are padding
    /// and ignored (RFC 2865 §3).
    bytes: &'a [u8],
}

impl<'a> Packet<'a> {
    pub fn decode(datagram: &'a [u8]) -> Result<Self, DecodeError> {
        if datagram.len() < MIN_LEN {
            return Err(DecodeError::TooShort);
        }
        let declared = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
        if declared < MIN_LEN {
            return Err(DecodeError::TooShort);
        }
        if declared > MAX_LEN {
            return Err(DecodeError::TooLong(declared));
        }
        if declared > datagram.len() {
            return Err(DecodeError::Truncated { declared, received: datagram.len() });
        }
        let bytes = &datagram[..declared];
        let mut at = MIN_LEN;
        let mut message_authenticators = 0;
        while at < bytes.len() {
            let (Some(&t), Some(&len)) = (bytes.get(at), bytes.get(at + 1)) else {
                return Err(DecodeError::AttributeOverflow { offset: at });
            };
            let len = usize::from(len);
            if len < 2 || at + len > bytes.len() {
                return Err(DecodeError::AttributeOverflow { offset: at });
            }
            let typ = AttrType::from(t);
            if !size_ok(typ, len - 2) {
                return Err(DecodeError::BadAttributeSize { attr: typ, len });
            }
            if typ == AttrType::MessageAuthenticator {
                message_authenticators += 1;
            }
            at += len;
        }
        if message_authenticators > 1 {
            return Err(DecodeError::DuplicateMessageAuthenticator);
        }
        Ok(Self { bytes })
    }

    pub fn code(&self) -> Code {
        Code::from(self.bytes[0])
    }

    pub fn identifier(&self) -> u8 {
        self.bytes[1]
    }

    pub fn authenticator(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.bytes[4..20]);
        a
    }

    /// The packet's bytes (exactly `Length` of them).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Every attribute, in order.
    pub fn attrs(&self) -> Attrs<'a> {
        Attrs { rest: &self.bytes[MIN_LEN..] }
    }

    /// The first attribute of this type.
    pub fn attr(&self, typ: AttrType) -> Option<&'a [u8]> {
        let at = self.attr_offset(typ)?;
        let len = usize::from(*self.bytes.get(at + 1)?);
        self.bytes.get(at + 2..at + len)
    }

    /// A 4-byte integer attribute (its size was checked at decode).
    pub fn attr_u32(&self, typ: AttrType) -> Option<u32> {
        self.attr(typ).and_then(|v| <[u8; 4]>::try_from(v).ok()).map(u32::from_be_bytes)
    }

    /// A text attribute as UTF-8, if it is.
    pub fn attr_str(&self, typ: AttrType) -> Option<&'a str> {
        self.attr(typ).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All EAP-Message attributes joined (RFC 3579 §3.1), if any.
    pub fn eap_message(&self) -> Option<Vec<u8>> {
        let mut parts = self.attrs().filter(|a| a.typ == AttrType::EapMessage).peekable();
        parts.peek()?;
        Some(parts.flat_map(|a| a.value.iter().copied()).collect())
    }

    /// Checks the Message-Authenticator (RFC 3579 §3.2): `None` when absent,
    /// else whether it is right. `request_authenticator` is given for a
    /// response (it is computed with the request's authenticator in place);
    /// Accounting, CoA and Disconnect requests are computed with the
    /// authenticator field zeroed; an Access-Request or Status-Server uses its own.
    pub fn message_authenticator_valid(&self, secret: &[u8], request_authenticator: Option<&[u8; 16]>) -> Option<bool> {
        self.message_authenticator_valid_with(&crypto::Key::new(secret), request_authenticator)
    }

    /// [`Self::message_authenticator_valid`] with the key schedule done.
    pub fn message_authenticator_valid_with(
        &self,
        key: &crypto::Key,
        request_authenticator: Option<&[u8; 16]>,
    ) -> Option<bool> {
        let offset = self.attr_offset(AttrType::MessageAuthenticator)?;
        let b = self.bytes;
        let given = &b[offset + 2..offset + 18];
        // HMAC over the packet with the authenticator field replaced as the
        // packet kind requires and the Message-Authenticator zeroed, fed in
        // pieces: no copy of the packet.
        let auth: &[u8] = match (request_authenticator, self.code()) {
            (Some(ra), _) => ra,
            (None, Code::AccountingRequest | Code::CoaRequest | Code::DisconnectRequest) => &[0u8; 16],
            (None, _) => &b[4..20],
        };
        let mac = key.hmac_md5(&[&b[..4], auth, &b[20..offset + 2], &[0u8; 16], &b[offset + 18..]]);
        Some(crypto::ct_eq(&mac, given))
    }

    /// Checks a computed Request Authenticator: Accounting-Request (RFC 2866
    /// §3), CoA-Request and Disconnect-Request (RFC 5176 §3.4).
    pub fn request_authenticator_valid(&self, secret: &[u8]) -> bool {
        let b = self.bytes;
        let want = crypto::md5(&[&b[..4], &[0u8; 16], &b[20..], secret]);
        crypto::ct_eq(&want, &b[4..20])
    }

    /// Checks a response's Response Authenticator against the request it
    /// answers (RFC 2865 §3).
    pub fn response_authenticator_valid(&self, secret: &[u8], request_authenticator: &[u8; 16]) -> bool {
        let b = self.bytes;
        let want = crypto::md5(&[&b[..4], request_authenticator, &b[20..], secret]);
        crypto::ct_eq(&want, &b[4..20])
    }

    /// Byte offset of the first attribute of this type.
    fn attr_offset(&self, typ: AttrType) -> Option<usize> {
        // The raw type byte, not an `AttrType` per attribute: a request is
        // searched a dozen times, and the conversion was most of the cost.
        let want = u8::from(typ);
        let mut at = MIN_LEN;
        while let [t, len, ..] = *self.bytes.get(at..)? {
            if t == want {
                return Some(at);
            }
            // Packet::decode checked every length (≥ 2), so this moves on.
            at += usize::from(len).max(2);
        }
        None
    }
}

/// Iterator over a validated attribute list.
#[derive(Clone, Debug)]
pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Attr<'a>;

    fn next(&mut self) -> Option<Attr<'a>> {
        // Packet::decode checked every length, so these slices are in range;
        // `get` keeps it panic-free all the same.
        let (&t, rest) = self.rest.split_first()?;
        let (&len, _) = rest.split_first()?;
        let value = self.rest.get(2..usize::from(len))?;
        self.rest = &self.rest[usize::from(len)..];
        Some(Attr { typ: AttrType::from(t), value })
    }
}

/// Is `len` a valid value size for `typ`? Unknown types take any size.
fn size_ok(typ: AttrType, len: usize) -> bool {
    use AttrType::*;
    match typ {
        NasIpAddress | NasPort | ServiceType | FramedIpAddress | FramedMtu | SessionTimeout | AcctStatusType
        | AcctDelayTime | AcctInputOctets | AcctOutputOctets | AcctAuthentic | AcctSessionTime | AcctTerminateCause
        | EventTimestamp | NasPortType | AcctInterimInterval | ErrorCause | TunnelType | TunnelMediumType => len == 4,
        MessageAuthenticator => len == 16,
        // RFC 2865 §5.2: 16 to 128 octets, a multiple of 16.
        UserPassword => (16..=128).contains(&len) && len.is_multiple_of(16),
        // CHAP ident + 16-octet response.
        ChapPassword => len == 17,
        // A Vendor-Specific needs at least its 4-byte vendor id.
        VendorSpecific => len >= 5,
        _ => true,
    }
}

/// A vendor id and its sub-attributes `(type, value)`.
pub type VendorAttrs<'a> = (u32, Vec<(u8, &'a [u8])>);

/// The sub-attributes of a Vendor-Specific value with the common
/// type/length/value layout (RFC 2865 §5.26). `None` when the layout does
/// not hold.
pub fn vendor_attrs(value: &[u8]) -> Option<VendorAttrs<'_>> {
    let vendor = u32::from_be_bytes(value.get(..4)?.try_into().ok()?);
    let mut rest = &value[4..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let t = *rest.first()?;
        let len = usize::from(*rest.get(1)?);
        if len < 2 {
            return None;
        }
        out.push((t, rest.get(2..len)?));
        rest = &rest[len..];
    }
    Some((vendor, out))
}
