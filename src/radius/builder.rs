//! Encoding: a builder that appends attributes and finishes the packet by
//! patching, in order, the Length, the Message-Authenticator and then the
//! authenticator field, as each kind of packet requires.

use super::crypto;
use super::dictionary::{AttrType, Code};
use super::packet::{MAX_LEN, MIN_LEN};

/// Why a packet could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// An attribute value over 253 bytes (EAP-Message is split instead).
    #[error("attribute {0:?} value over 253 bytes")]
    ValueTooLong(AttrType),
    /// The packet would exceed 4096 bytes.
    #[error("packet over {MAX_LEN} bytes")]
    PacketTooLong,
    /// A User-Password over 128 bytes.
    #[error("password over 128 bytes")]
    PasswordTooLong,
}

/// Builds one packet. Message-Authenticator, when wanted, is added first of
/// all attributes: a reply whose first attribute is a valid
/// Message-Authenticator cannot be forged by the BlastRADIUS prefix attack.
#[derive(Clone, Debug)]
pub struct Builder {
    buf: Vec<u8>,
    message_authenticator: Option<usize>,
}

impl Builder {
    /// A packet of `code` with `identifier`, and a Message-Authenticator
    /// (placeholder until finished) as its first attribute when `signed`.
    pub fn new(code: Code, identifier: u8, signed: bool) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[u8::from(code), identifier, 0, 0]);
        buf.extend_from_slice(&[0u8; 16]);
        let mut b = Self { buf, message_authenticator: None };
        if signed {
            b.message_authenticator = Some(b.buf.len());
            b.buf.extend_from_slice(&[u8::from(AttrType::MessageAuthenticator), 18]);
            b.buf.extend_from_slice(&[0u8; 16]);
        }
        b
    }

    /// Appends one attribute.
    pub fn attr(&mut self, typ: AttrType, value: &[u8]) -> Result<&mut Self, EncodeError> {
        if value.len() > 253 {
            return Err(EncodeError::ValueTooLong(typ));
        }
        if self.buf.len() + 2 + value.len() > MAX_LEN {
            return Err(EncodeError::PacketTooLong);
        }
        self.buf.push(u8::from(typ));
        self.buf.push((value.len() + 2) as u8); // at most 255, checked above
        self.buf.extend_from_slice(value);
        Ok(self)
    }

    pub fn attr_u32(&mut self, typ: AttrType, value: u32) -> Result<&mut Self, EncodeError> {
        self.attr(typ, &value.to_be_bytes())
    }

    /// A tagged integer (RFC 2868 §3.1): the tag, then the low 3 bytes.
    pub fn attr_tagged_u32(&mut self, typ: AttrType, tag: u8, value: u32) -> Result<&mut Self, EncodeError> {
        let v = value.to_be_bytes();
        self.attr(typ, &[tag, v[1], v[2], v[3]])
    }

    /// A tagged string (RFC 2868 §3.6): a tag byte of 1..=0x1F, then the text.
    pub fn attr_tagged_str(&mut self, typ: AttrType, tag: u8, value: &[u8]) -> Result<&mut Self, EncodeError> {
        let mut v = Vec::with_capacity(value.len() + 1);
        v.push(tag);
        v.extend_from_slice(value);
        self.attr(typ, &v)
    }

    /// A Vendor-Specific attribute holding one sub-attribute.
    pub fn vendor_attr(&mut self, vendor: u32, vendor_type: u8, value: &[u8]) -> Result<&mut Self, EncodeError> {
        if value.len() > 247 {
            return Err(EncodeError::ValueTooLong(AttrType::VendorSpecific));
        }
        let mut v = Vec::with_capacity(value.len() + 6);
        v.extend_from_slice(&vendor.to_be_bytes());
        v.push(vendor_type);
        v.push((value.len() + 2) as u8); // at most 249, checked above
        v.extend_from_slice(value);
        self.attr(AttrType::VendorSpecific, &v)
    }

    /// An EAP packet split over as many EAP-Message attributes as it takes
    /// (RFC 3579 §3.1).
    pub fn eap_message(&mut self, eap: &[u8]) -> Result<&mut Self, EncodeError> {
        for chunk in eap.chunks(253) {
            self.attr(AttrType::EapMessage, chunk)?;
        }
        Ok(self)
    }

    /// A hidden User-Password (RFC 2865 §5.2), for an Access-Request whose
    /// Request Authenticator is `authenticator`.
    pub fn user_password(
        &mut self,
        password: &[u8],
        secret: &[u8],
        authenticator: &[u8; 16],
    ) -> Result<&mut Self, EncodeError> {
        let hidden = crypto::hide_password(password, secret, authenticator).ok_or(EncodeError::PasswordTooLong)?;
        self.attr(AttrType::UserPassword, &hidden)
    }

    /// A response (Access-Accept/Reject/Challenge, Accounting-Response,
    /// CoA/Disconnect ACK/NAK) to a request with `request_authenticator`.
    pub fn finish_response(self, secret: &[u8], request_authenticator: &[u8; 16]) -> Vec<u8> {
        self.finish_response_with(&crypto::Key::new(secret), request_authenticator)
    }

    /// [`Self::finish_response`] with the key schedule done.
    pub fn finish_response_with(mut self, key: &crypto::Key, request_authenticator: &[u8; 16]) -> Vec<u8> {
        self.patch_length();
        self.buf[4..20].copy_from_slice(request_authenticator);
        self.sign(key);
        let auth = crypto::md5(&[&self.buf, key.secret()]);
        self.buf[4..20].copy_from_slice(&auth);
        self.buf
    }

    /// An Access-Request or Status-Server with a random Request Authenticator.
    pub fn finish_access_request(self, secret: &[u8], authenticator: &[u8; 16]) -> Vec<u8> {
        self.finish_access_request_with(&crypto::Key::new(secret), authenticator)
    }

    /// [`Self::finish_access_request`] with the key schedule done.
    pub fn finish_access_request_with(mut self, key: &crypto::Key, authenticator: &[u8; 16]) -> Vec<u8> {
        self.patch_length();
        self.buf[4..20].copy_from_slice(authenticator);
        self.sign(key);
        self.buf
    }

    /// An Accounting-Request, CoA-Request or Disconnect-Request: the
    /// Message-Authenticator over the packet with a zero authenticator,
    /// then the Request Authenticator over the result.
    pub fn finish_request(self, secret: &[u8]) -> Vec<u8> {
        self.finish_request_with(&crypto::Key::new(secret))
    }

    /// [`Self::finish_request`] with the key schedule done.
    pub fn finish_request_with(mut self, key: &crypto::Key) -> Vec<u8> {
        self.patch_length();
        self.buf[4..20].fill(0);
        self.sign(key);
        let auth = crypto::md5(&[&self.buf, key.secret()]);
        self.buf[4..20].copy_from_slice(&auth);
        self.buf
    }

    fn patch_length(&mut self) {
        debug_assert!(self.buf.len() >= MIN_LEN && self.buf.len() <= MAX_LEN);
        let len = (self.buf.len() as u16).to_be_bytes(); // <= 4096, enforced by `attr`
        self.buf[2..4].copy_from_slice(&len);
    }

    /// Fills the Message-Authenticator over the packet as it stands.
    fn sign(&mut self, key: &crypto::Key) {
        if let Some(at) = self.message_authenticator {
            let mac = key.hmac_md5(&[&self.buf]);
            self.buf[at + 2..at + 18].copy_from_slice(&mac);
        }
    }
}
