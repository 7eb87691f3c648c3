//! EAP-TLS (RFC 5216; TLS 1.3 per RFC 9190) on an in-memory
//! `rustls::ServerConnection`: no sockets, the TLS bytes travel in
//! EAP-TLS fragments. The client certificate is required and verified by
//! rustls (chain to `client_ca`, validity, clientAuth usage, CRLs); the
//! device is named by a field of it.

use super::fragment::{Fragmenter, Frame, Reassembler};
use rustls::ServerConnection;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;

/// Which certificate field names the device (`[eap] identity_from`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityFrom {
    #[default]
    Cn,
    SanDns,
    SanUri,
}

/// The device name in `cert` per `from`; `None` if the field is absent.
pub fn identity(cert: &CertificateDer<'_>, from: IdentityFrom) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, x) = X509Certificate::from_der(cert.as_ref()).ok()?;
    match from {
        IdentityFrom::Cn => x.subject().iter_common_name().next()?.as_str().ok().map(str::to_string),
        IdentityFrom::SanDns | IdentityFrom::SanUri => {
            let san = x.subject_alternative_name().ok()??;
            san.value.general_names.iter().find_map(|n| match (n, from) {
                (GeneralName::DNSName(d), IdentityFrom::SanDns) => Some(d.to_string()),
                (GeneralName::URI(u), IdentityFrom::SanUri) => Some(u.to_string()),
                _ => None,
            })
        }
    }
}

/// Keys from a finished EAP-TLS (RFC 5216 §2.3, RFC 9190 §2.3).
#[derive(Clone)]
pub struct Keys {
    pub msk: [u8; 64],
    pub emsk: [u8; 64],
}

/// Zeroed when dropped, like every copy warden makes of them.
impl Drop for Keys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.msk.zeroize();
        self.emsk.zeroize();
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

/// Why a session failed (a label for metrics and Reply-Message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    Framing(&'static str),
    /// rustls refused the handshake (bad certificate, unknown CA, expired...).
    Tls(String),
    /// The handshake finished without a client certificate (cannot happen
    /// with the verifier we build; checked anyway).
    NoClientCertificate,
    UnexpectedAck,
    Stalled,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Framing(w) => write!(f, "EAP-TLS framing: {w}"),
            Failure::Tls(e) => write!(f, "TLS: {e}"),
            Failure::NoClientCertificate => f.write_str("no client certificate"),
            Failure::UnexpectedAck => f.write_str("unexpected acknowledgement"),
            Failure::Stalled => f.write_str("the handshake stalled"),
        }
    }
}

/// What to do after a peer's message.
#[derive(Debug)]
pub enum Step {
    /// Send this EAP-TLS type-data in the next EAP-Request.
    Request(Vec<u8>),
    /// Done: the client certificate was verified; send EAP-Success.
    Done { keys: Keys, peer_certificate: CertificateDer<'static>, tls13: bool },
    /// Send EAP-Failure.
    Failed(Failure),
}

/// TLS records carried in EAP fragments, both ways: what EAP-TLS and PEAP
/// share. Incoming fragments are acknowledged and reassembled (capped);
/// outgoing flights are fragmented to the MTU and sent one per request, each
/// acknowledged by the peer.
pub struct Transport {
    pub conn: ServerConnection,
    incoming: Reassembler,
    outgoing: Option<Fragmenter>,
    mtu: usize,
    /// The low flag bits (PEAP's version; 0 for EAP-TLS).
    version: u8,
}

/// What a peer message amounted to.
pub enum Received {
    /// Send this type-data: the next fragment of our flight, or an
    /// acknowledgement of the peer's fragment.
    Reply(Vec<u8>),
    /// The peer acknowledged our last flight and said nothing else.
    Ack,
    /// A whole TLS message went into the connection.
    Processed,
}

impl Transport {
    pub fn new(conn: ServerConnection, mtu: usize, max_message: usize, version: u8) -> Self {
        Self { conn, incoming: Reassembler::new(max_message), outgoing: None, mtu, version }
    }

    pub fn held(&self) -> usize {
        self.incoming.held()
    }

    pub fn receive(&mut self, type_data: &[u8]) -> Result<Received, Failure> {
        let frame = Frame::parse(type_data).map_err(|_| Failure::Framing("bad flags or length"))?;
        // Our flight still has fragments: the peer must acknowledge each.
        if let Some(out) = &mut self.outgoing {
            if !out.done() {
                return match (frame.is_ack(), out.next_fragment(self.version)) {
                    (true, Some(next)) => Ok(Received::Reply(next)),
                    _ => Err(Failure::Framing("expected an acknowledgement")),
                };
            }
            self.outgoing = None;
        }
        let message = match self.incoming.push(&frame) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(Received::Reply(vec![self.version])),
            Err(e) => return Err(Failure::Framing(frag_label(e))),
        };
        if message.is_empty() {
            return Ok(Received::Ack);
        }
        let mut rd = &message[..];
        while !rd.is_empty() {
            match self.conn.read_tls(&mut rd) {
                Ok(0) | Err(_) => return Err(Failure::Framing("TLS records did not parse")),
                Ok(_) => {}
            }
            self.conn.process_new_packets().map_err(|e| Failure::Tls(e.to_string()))?;
        }
        Ok(Received::Processed)
    }

    /// What the connection has to send, as the first fragment of a new
    /// flight; `None` if nothing.
    pub fn flush(&mut self) -> Result<Option<Vec<u8>>, Failure> {
        let mut flight = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut flight).map_err(|_| Failure::Stalled)?;
        }
        if flight.is_empty() {
            return Ok(None);
        }
        let mut out = Fragmenter::new(flight, self.mtu);
        let first = out.next_fragment(self.version);
        self.outgoing = Some(out);
        Ok(first)
    }

    /// The MSK and EMSK from the TLS exporter with `label` (and `context`).
    pub fn keys(&self, label: &[u8], context: Option<&[u8]>) -> Result<Keys, Failure> {
        let mut keys = [0u8; 128];
        self.conn.export_keying_material(&mut keys, label, context).map_err(|e| Failure::Tls(e.to_string()))?;
        let mut msk = [0u8; 64];
        let mut emsk = [0u8; 64];
        msk.copy_from_slice(&keys[..64]);
        emsk.copy_from_slice(&keys[64..]);
        Ok(Keys { msk, emsk })
    }

    pub fn tls13(&self) -> bool {
        self.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
    }
}

/// One EAP-TLS conversation.
pub struct EapTls {
    t: Transport,
    /// The handshake is complete and our last flight is out: the peer's
    /// acknowledgement of it ends the method.
    finishing: bool,
    commitment_sent: bool,
}

/// The EAP-TLS version bits (always 0; PEAP sets its own).
const VERSION: u8 = 0;

impl EapTls {
    /// `max_message`: the cap on one reassembled TLS message from the peer.
    pub fn new(config: Arc<rustls::ServerConfig>, mtu: usize, max_message: usize) -> Result<Self, rustls::Error> {
        let t = Transport::new(ServerConnection::new(config)?, mtu, max_message, VERSION);
        Ok(Self { t, finishing: false, commitment_sent: false })
    }

    /// The EAP-TLS Start (S flag) that opens the method.
    pub fn start(&self) -> Vec<u8> {
        vec![super::fragment::FLAG_S | VERSION]
    }

    /// Bytes held for the peer's message being reassembled.
    pub fn held(&self) -> usize {
        self.t.held()
    }

    /// The peer's EAP-TLS type-data.
    pub fn handle(&mut self, type_data: &[u8]) -> Step {
        match self.t.receive(type_data) {
            Err(f) => Step::Failed(f),
            Ok(Received::Reply(r)) => Step::Request(r),
            Ok(Received::Ack) if self.finishing => self.finish(),
            Ok(Received::Ack) => Step::Failed(Failure::UnexpectedAck),
            Ok(Received::Processed) => {
                if !self.t.conn.is_handshaking() {
                    // RFC 9190 §2.5: after the handshake, TLS 1.3 sends one
                    // byte of application data, 0x00: no more handshake.
                    if self.t.tls13() && !self.commitment_sent {
                        use std::io::Write;
                        if self.t.conn.writer().write_all(&[0]).is_err() {
                            return Step::Failed(Failure::Stalled);
                        }
                        self.commitment_sent = true;
                    }
                    self.finishing = true;
                }
                match self.t.flush() {
                    Err(f) => Step::Failed(f),
                    Ok(Some(first)) => Step::Request(first),
                    Ok(None) if self.finishing => self.finish(),
                    Ok(None) => Step::Failed(Failure::Stalled),
                }
            }
        }
    }

    fn finish(&mut self) -> Step {
        let Some(cert) = self.t.conn.peer_certificates().and_then(|c| c.first()).cloned() else {
            return Step::Failed(Failure::NoClientCertificate);
        };
        let tls13 = self.t.tls13();
        let keys = if tls13 {
            self.t.keys(b"EXPORTER_EAP_TLS_Key_Material", Some(&[0x0D]))
        } else {
            self.t.keys(b"client EAP encryption", None)
        };
        match keys {
            Ok(keys) => Step::Done { keys, peer_certificate: cert.into_owned(), tls13 },
            Err(f) => Step::Failed(f),
        }
    }
}

fn frag_label(e: super::fragment::FragError) -> &'static str {
    use super::fragment::FragError;
    match e {
        FragError::Empty => "empty",
        FragError::ShortLength => "short length",
        FragError::TooLarge => "message over the size cap",
        FragError::LengthMismatch => "fragments disagree with the announced length",
    }
}

/// The rustls server config EAP-TLS needs: the server certificate, client
/// certificates required and verified against `client_ca` (and `crls`), TLS
/// 1.2 and 1.3, no resumption (every authentication re-runs the policy), the
/// ring provider given explicitly.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    client_ca: Vec<CertificateDer<'static>>,
    crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in client_ca {
        roots.add(ca).map_err(|e| format!("client_ca: {e}"))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .with_crls(crls)
        .build()
        .map_err(|e| format!("client certificate verifier: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("server certificate and key: {e}"))?;
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}
