//! PEAP version 0 with inner EAP-MSCHAPv2 (MS-PEAP; draft-kamath for the
//! inner method). Phase 1 is a server-authenticated TLS 1.2 tunnel over the
//! same fragment transport as EAP-TLS; phase 2 runs inside it: Identity,
//! then MS-CHAPv2, then the Result TLV. Never a success before the inner
//! method has verified the password; any inner failure ends it.
//!
//! PEAPv0 sends inner packets without their EAP header (Type and data
//! only), except EAP-TLV (type 33), which keeps it.

use super::mschapv2;
use super::packet::kind;
use super::tls::{Failure, Keys, Received, Transport};
use rustls::ServerConnection;
use std::io::{Read, Write};
use std::sync::Arc;
use zeroize::Zeroizing;

/// EAP-TLV (Extensions), and its Result TLV (mandatory, type 3).
const EAP_TLV: u8 = 33;
const RESULT_SUCCESS: u16 = 1;

/// Where passwords come from: the users file's NT hash for a name.
pub trait Credentials: Send + Sync {
    fn nt_hash(&self, user: &str) -> Option<Zeroizing<[u8; 16]>>;
}

/// MS-CHAPv2 asks the users file for NT hashes.
impl Credentials for crate::users::Users {
    fn nt_hash(&self, user: &str) -> Option<Zeroizing<[u8; 16]>> {
        self.get(user)?.nt_password_hash()
    }
}

#[derive(Debug)]
pub enum Step {
    Request(Vec<u8>),
    /// The inner method verified `user`'s password.
    Done {
        keys: Keys,
        user: String,
    },
    Failed(Failure),
    /// The inner method failed: a wrong password or an unknown user.
    InnerFailed(String),
}

enum Phase {
    /// TLS handshake in progress; `finished` once our last flight is out.
    Handshake { finished: bool },
    /// Sent the inner Identity request.
    Identity,
    /// Sent the MS-CHAPv2 challenge.
    Challenge { challenge: [u8; 16], ms_id: u8, user: String },
    /// Sent MS-CHAPv2 Success; waiting for the peer's acknowledgement.
    Verified { user: String },
    /// Sent the Result TLV (success); waiting for the peer's.
    Result { user: String },
}

pub struct Peap {
    t: Transport,
    phase: Phase,
    credentials: Arc<dyn Credentials>,
    /// Random bytes for the MS-CHAPv2 challenge (from the server's seeded
    /// generator, so the core stays deterministic under test).
    challenge: [u8; 16],
    server_name: &'static [u8],
}

/// PEAP version 0.
const VERSION: u8 = 0;

impl Peap {
    pub fn new(
        config: Arc<rustls::ServerConfig>,
        mtu: usize,
        max_message: usize,
        credentials: Arc<dyn Credentials>,
        challenge: [u8; 16],
    ) -> Result<Self, rustls::Error> {
        let t = Transport::new(ServerConnection::new(config)?, mtu, max_message, VERSION);
        Ok(Self { t, phase: Phase::Handshake { finished: false }, credentials, challenge, server_name: b"warden" })
    }

    pub fn start(&self) -> Vec<u8> {
        vec![super::fragment::FLAG_S | VERSION]
    }

    pub fn held(&self) -> usize {
        self.t.held()
    }

    /// Writes `inner` into the tunnel and returns the first fragment.
    fn send_inner(&mut self, inner: &[u8]) -> Step {
        if self.t.conn.writer().write_all(inner).is_err() {
            return Step::Failed(Failure::Stalled);
        }
        match self.t.flush() {
            Ok(Some(first)) => Step::Request(first),
            Ok(None) => Step::Failed(Failure::Stalled),
            Err(f) => Step::Failed(f),
        }
    }

    pub fn handle(&mut self, type_data: &[u8]) -> Step {
        let received = match self.t.receive(type_data) {
            Ok(r) => r,
            Err(f) => return Step::Failed(f),
        };
        match (received, &self.phase) {
            (Received::Reply(r), _) => Step::Request(r),
            (Received::Ack, Phase::Handshake { finished: true }) => {
                // The tunnel is up: phase 2 starts with Identity (compressed).
                self.phase = Phase::Identity;
                self.send_inner(&[kind::IDENTITY])
            }
            (Received::Ack, _) => Step::Failed(Failure::UnexpectedAck),
            (Received::Processed, Phase::Handshake { .. }) => {
                if !self.t.conn.is_handshaking() {
                    self.phase = Phase::Handshake { finished: true };
                }
                match self.t.flush() {
                    Ok(Some(first)) => Step::Request(first),
                    Ok(None) => Step::Failed(Failure::Stalled),
                    Err(f) => Step::Failed(f),
                }
            }
            (Received::Processed, _) => {
                let mut inner = Vec::new();
                if self.t.conn.reader().read_to_end(&mut inner).is_err() && inner.is_empty() {
                    return Step::Failed(Failure::Framing("no inner packet"));
                }
                self.inner(&inner)
            }
        }
    }

    /// One inner (phase 2) packet from the peer.
    fn inner(&mut self, p: &[u8]) -> Step {
        let phase = std::mem::replace(&mut self.phase, Phase::Identity);
        match (phase, p) {
            (Phase::Identity, [kind::IDENTITY, name @ ..]) => {
                let user = String::from_utf8_lossy(&name[..name.len().min(253)]).into_owned();
                let ms_id = self.challenge[0];
                let mut body = vec![16u8];
                body.extend_from_slice(&self.challenge);
                body.extend_from_slice(self.server_name);
                let mut inner = vec![kind::MSCHAPV2];
                inner.extend_from_slice(&mschapv2::message(mschapv2::CHALLENGE, ms_id, &body));
                self.phase = Phase::Challenge { challenge: self.challenge, ms_id, user };
                self.send_inner(&inner)
            }
            (Phase::Challenge { challenge, ms_id, user }, [kind::MSCHAPV2, rest @ ..]) => {
                let Some(mschapv2::Response { id, peer_challenge: peer, nt_response: nt, name }) =
                    mschapv2::parse_response(rest)
                else {
                    return Step::InnerFailed("malformed MS-CHAPv2 response".into());
                };
                if id != ms_id {
                    return Step::InnerFailed("MS-CHAPv2 identifier mismatch".into());
                }
                // RFC 2759: the challenge hash uses the user name without a domain.
                let hashed_name = name.rsplit(|b| *b == b'\\').next().unwrap_or(name);
                let Some(hash) = self.credentials.nt_hash(&user) else {
                    return Step::InnerFailed(format!("no MS-CHAPv2 credential for {user:?}"));
                };
                let expected = mschapv2::nt_response(&mschapv2::challenge_hash(&peer, &challenge, hashed_name), &hash);
                if !crate::radius::crypto::ct_eq(&expected, &nt) {
                    return Step::InnerFailed(format!("wrong password for {user:?}"));
                }
                let s = mschapv2::authenticator_response(&hash, &nt, &peer, &challenge, hashed_name);
                let mut inner = vec![kind::MSCHAPV2];
                inner.extend_from_slice(&mschapv2::message(mschapv2::SUCCESS, ms_id, format!("{s} M=OK").as_bytes()));
                self.phase = Phase::Verified { user };
                self.send_inner(&inner)
            }
            (Phase::Verified { user }, [kind::MSCHAPV2, mschapv2::SUCCESS, ..]) => {
                // Result TLV, success, with its full EAP header.
                let tlv = [0x80, 0x03, 0x00, 0x02, (RESULT_SUCCESS >> 8) as u8, RESULT_SUCCESS as u8];
                let id = self.challenge[1];
                let inner =
                    super::packet::encode(super::packet::Code::Request, id, Some(EAP_TLV), &tlv).unwrap_or_default();
                self.phase = Phase::Result { user };
                self.send_inner(&inner)
            }
            (Phase::Result { user }, full) => {
                // The peer's Result TLV, full header: Response, type 33, Result = success.
                let ok = super::packet::Packet::decode(full).is_ok_and(|p| {
                    p.kind == Some(EAP_TLV)
                        && p.data.len() >= 6
                        && p.data[..2] == [0x80, 0x03]
                        && p.data[4..6] == [0, 1]
                });
                if !ok {
                    return Step::InnerFailed("the peer did not confirm the result".into());
                }
                match self.t.keys(b"client EAP encryption", None) {
                    Ok(keys) => Step::Done { keys, user },
                    Err(f) => Step::Failed(f),
                }
            }
            _ => Step::InnerFailed("an unexpected inner packet".into()),
        }
    }
}

/// PEAP's server config: the server certificate only (the password is the
/// client's proof), TLS 1.2 (PEAP's key derivation for TLS 1.3 is not
/// settled across supplicants), no resumption.
pub fn server_config(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("server certificate and key: {e}"))?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}
