//! The RADIUS server as a sans-IO state machine: which NAS may talk, what it
//! must prove (Message-Authenticator, authenticators), duplicate detection,
//! and turning a decision into a signed reply. It knows nothing of policies:
//! it asks for a decision ([`Event::AccessRequest`]) and is told one
//! ([`Server::handle_decision`]).
//!
//! About 500 lines of core and its tests beside it (as the house keeps
//! them); the codec, builder and dictionary are their own modules.
//!
//! Drive it: `handle_datagram` / `handle_decision` / `handle_timeout` with
//! `now`, then drain `poll_transmit` and `poll_event` until both are `None`,
//! then sleep until `poll_timeout` or the next input.

use super::builder::Builder;
use super::dictionary::{AcctStatus, AttrType, Code, TUNNEL_MEDIUM_IEEE_802, TUNNEL_TYPE_VLAN};
use super::{crypto, packet::Packet};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// How long a reply is kept to answer retransmissions (RFC 5080 §2.2.2).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(10);
/// Replies kept at most; the oldest go first.
const MAX_CACHED: usize = 65_536;
/// Requests waiting for a decision at most; past it new ones are dropped.
const MAX_PENDING: usize = 16_384;
/// A decision not made in this time is abandoned: the NAS retransmits.
const DECISION_TIMEOUT: Duration = Duration::from_secs(5);

/// A shared secret: never printed, wiped when dropped, its HMAC key
/// schedule done once ([`crypto::Key`]).
#[derive(Clone)]
pub struct Secret(Arc<crypto::Key>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        let bytes = Zeroizing::new(bytes);
        Self(Arc::new(crypto::Key::new(&bytes)))
    }

    pub fn expose(&self) -> &[u8] {
        self.0.secret()
    }

    /// The secret as the authenticators and Message-Authenticator use it.
    pub fn key(&self) -> &crypto::Key {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A NAS allowed to talk to warden.
#[derive(Clone, Debug)]
pub struct Client {
    pub name: Arc<str>,
    pub net: ipnet::IpNet,
    pub secret: Secret,
    /// Discard Access-Requests without a valid Message-Authenticator (BlastRADIUS).
    pub require_message_authenticator: bool,
}

/// Which of warden's sockets a datagram came in on / goes out of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Port {
    Auth,
    Acct,
}

/// A datagram to send.
#[derive(Debug)]
pub struct Transmit {
    pub port: Port,
    pub to: SocketAddr,
    /// Shared with the duplicate cache: a reply is built once and never copied.
    pub payload: bytes::Bytes,
}

/// Identifies a request waiting for [`Server::handle_decision`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DecisionId(u64);

impl DecisionId {
    /// An id that no server ever hands out, for records replayed from the
    /// accounting journal and for tests.
    pub fn none() -> Self {
        Self(u64::MAX)
    }
}

/// Why a datagram got no answer. Each is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Discard {
    UnknownClient,
    Malformed(&'static str),
    /// A request code that does not belong on this port.
    UnexpectedCode,
    MissingMessageAuthenticator,
    BadMessageAuthenticator,
    BadRequestAuthenticator,
    /// A retransmission of a request still being decided.
    InProgress,
    Overloaded,
}

impl Discard {
    pub fn label(self) -> &'static str {
        match self {
            Self::UnknownClient => "unknown_client",
            Self::Malformed(_) => "malformed",
            Self::UnexpectedCode => "unexpected_code",
            Self::MissingMessageAuthenticator => "missing_message_authenticator",
            Self::BadMessageAuthenticator => "bad_message_authenticator",
            Self::BadRequestAuthenticator => "bad_request_authenticator",
            Self::InProgress => "in_progress",
            Self::Overloaded => "overloaded",
        }
    }
}

/// An Access-Request, reduced to what a decision needs.
#[derive(Debug)]
pub struct AccessRequest {
    pub id: DecisionId,
    pub client: Arc<str>,
    pub user_name: Option<String>,
    /// The revealed User-Password (wiped on drop).
    pub password: Option<Zeroizing<Vec<u8>>>,
    pub calling_station_id: Option<String>,
    pub service_type: Option<u32>,
    pub nas_ip: Option<Ipv4Addr>,
    pub nas_port_id: Option<String>,
    pub eap: bool,
    pub chap: bool,
    /// The EAP packet, its EAP-Message attributes joined (RFC 3579 §3.1).
    pub eap_message: Option<Vec<u8>>,
    /// State, from our last Access-Challenge.
    pub state: Option<Vec<u8>>,
    pub framed_mtu: Option<u32>,
}

/// An Accounting-Request, reduced to the session record it carries.
#[derive(Clone, Debug)]
pub struct AccountingRequest {
    pub id: DecisionId,
    pub client: Arc<str>,
    pub nas: IpAddr,
    pub status: AcctStatus,
    pub session_id: Option<String>,
    pub user_name: Option<String>,
    pub calling_station_id: Option<String>,
    pub nas_ip: Option<Ipv4Addr>,
    pub nas_port: Option<u32>,
    pub nas_port_id: Option<String>,
    pub framed_ip: Option<Ipv4Addr>,
}

/// What the server reports.
#[derive(Debug)]
pub enum Event {
    Discarded {
        from: SocketAddr,
        reason: Discard,
    },
    /// Decide with `handle_decision(id, Decision::Accept | Reject)`.
    AccessRequest(AccessRequest),
    /// Store it, then `handle_decision(id, Decision::Stored)`: the
    /// Accounting-Response is only sent once the record is safe.
    Accounting(AccountingRequest),
    /// A Status-Server was answered.
    StatusServer,
    /// A retransmission was answered from the cache.
    Duplicate,
}

/// What an EAP conversation adds to an answer.
#[derive(Clone, PartialEq, Eq)]
pub struct EapReply {
    /// The EAP packet (Success, Failure), as EAP-Message attributes.
    pub message: Vec<u8>,
    /// The MSK, sent as MS-MPPE-Recv-Key / Send-Key (RFC 2548), encrypted
    /// with the client's secret and this request's authenticator.
    /// Zeroed when dropped: the key material never lingers in freed memory.
    pub msk: Option<Box<zeroize::Zeroizing<[u8; 64]>>>,
    /// User-Name for the Accept (the identity that authenticated).
    pub user_name: Option<String>,
}

impl std::fmt::Debug for EapReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EapReply").field("message", &self.message).field("user_name", &self.user_name).finish()
    }
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Access-Accept, with a VLAN (Tunnel-Private-Group-Id) and a
    /// Filter-Id if given.
    Accept { vlan: Option<String>, filter_id: Option<String>, reply_message: Option<String>, eap: Option<EapReply> },
    /// Access-Reject; Reply-Message says why.
    Reject { reply_message: String, eap: Option<EapReply> },
    /// Access-Challenge carrying the next EAP-Request, tied by State.
    Challenge { eap: Vec<u8>, state: Vec<u8> },
    /// The accounting record is stored.
    Stored,
    /// Do not answer at all (the NAS will retransmit).
    Drop,
}

type CacheKey = (SocketAddr, Port, u8, [u8; 16]);
/// foldhash: the maps are touched several times per request, and SipHash
/// cost more than the rest of the bookkeeping.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

struct Pending {
    key: CacheKey,
    client: usize,
    code: Code,
    identifier: u8,
    authenticator: [u8; 16],
    proxy_state: Vec<Vec<u8>>,
}

pub struct Server {
    clients: Vec<Client>,
    /// `None` while the decision is pending.
    cache: HashMap<CacheKey, Option<bytes::Bytes>>,
    cache_order: VecDeque<(Instant, CacheKey)>,
    pending: HashMap<DecisionId, Pending>,
    pending_order: VecDeque<(Instant, DecisionId)>,
    next_id: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl Server {
    pub fn new(clients: Vec<Client>) -> Self {
        Self {
            clients,
            cache: HashMap::default(),
            cache_order: VecDeque::new(),
            pending: HashMap::default(),
            pending_order: VecDeque::new(),
            next_id: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The most specific client whose network holds `ip`.
    fn client_for(&self, ip: IpAddr) -> Option<usize> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.clients
            .iter()
            .enumerate()
            .filter(|(_, c)| c.net.contains(&ip))
            .max_by_key(|(_, c)| c.net.prefix_len())
            .map(|(i, _)| i)
    }

    pub fn handle_datagram(&mut self, port: Port, from: SocketAddr, datagram: &[u8], now: Instant) {
        self.expire(now);
        let discard = |s: &mut Self, reason| s.events.push_back(Event::Discarded { from, reason });
        // Unknown sources get nothing, not even a parse.
        let Some(ci) = self.client_for(from.ip()) else { return discard(self, Discard::UnknownClient) };
        let packet = match Packet::decode(datagram) {
            Ok(p) => p,
            Err(e) => return discard(self, Discard::Malformed(e.label())),
        };
        let secret = self.clients[ci].secret.clone();
        let code = packet.code();
        match (port, code) {
            (Port::Auth, Code::AccessRequest | Code::StatusServer)
            | (Port::Acct, Code::AccountingRequest | Code::StatusServer) => {}
            _ => return discard(self, Discard::UnexpectedCode),
        }
        // Authenticity first, before anything is cached or decided.
        let ma = packet.message_authenticator_valid_with(secret.key(), None);
        match (code, ma) {
            (_, Some(false)) => return discard(self, Discard::BadMessageAuthenticator),
            (Code::StatusServer, None) => return discard(self, Discard::MissingMessageAuthenticator),
            (Code::AccessRequest, None)
                if self.clients[ci].require_message_authenticator || packet.attr(AttrType::EapMessage).is_some() =>
            {
                return discard(self, Discard::MissingMessageAuthenticator);
            }
            (Code::AccountingRequest, _) if !packet.request_authenticator_valid(secret.expose()) => {
                return discard(self, Discard::BadRequestAuthenticator);
            }
            _ => {}
        }
        let key: CacheKey = (from, port, packet.identifier(), packet.authenticator());
        match self.cache.get(&key) {
            Some(Some(reply)) => {
                self.transmits.push_back(Transmit { port, to: from, payload: reply.clone() });
                self.events.push_back(Event::Duplicate);
                return;
            }
            Some(None) => return discard(self, Discard::InProgress),
            None => {}
        }
        if code == Code::StatusServer {
            // RFC 5997 §3: Access-Accept on the auth port, Accounting-Response on acct.
            let reply_code = if port == Port::Auth { Code::AccessAccept } else { Code::AccountingResponse };
            let reply: bytes::Bytes = Builder::new(reply_code, packet.identifier(), true)
                .finish_response_with(secret.key(), &packet.authenticator())
                .into();
            self.remember(key, reply.clone(), now);
            self.transmits.push_back(Transmit { port, to: from, payload: reply });
            self.events.push_back(Event::StatusServer);
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            return discard(self, Discard::Overloaded);
        }
        let id = DecisionId(self.next_id);
        self.next_id += 1;
        let client = Arc::clone(&self.clients[ci].name);
        let text = |t| packet.attr(t).map(|v| String::from_utf8_lossy(v).into_owned());
        let ipv4 = |t| packet.attr(t).and_then(|v| <[u8; 4]>::try_from(v).ok()).map(Ipv4Addr::from);
        let event = match code {
            Code::AccessRequest => Event::AccessRequest(AccessRequest {
                id,
                client,
                user_name: text(AttrType::UserName),
                password: packet
                    .attr(AttrType::UserPassword)
                    .map(|h| Zeroizing::new(crypto::unhide_password(h, secret.expose(), &packet.authenticator()))),
                calling_station_id: text(AttrType::CallingStationId),
                service_type: packet.attr_u32(AttrType::ServiceType),
                nas_ip: ipv4(AttrType::NasIpAddress),
                nas_port_id: text(AttrType::NasPortId),
                eap: packet.attr(AttrType::EapMessage).is_some(),
                chap: packet.attr(AttrType::ChapPassword).is_some(),
                eap_message: packet.attr(AttrType::EapMessage).map(|_| {
                    packet.attrs().filter(|a| a.typ == AttrType::EapMessage).flat_map(|a| a.value).copied().collect()
                }),
                state: packet.attr(AttrType::State).map(<[u8]>::to_vec),
                framed_mtu: packet.attr_u32(AttrType::FramedMtu),
            }),
            _ => {
                let Some(status) = packet.attr_u32(AttrType::AcctStatusType) else {
                    return discard(self, Discard::Malformed("no_acct_status_type"));
                };
                Event::Accounting(AccountingRequest {
                    id,
                    client,
                    nas: from.ip(),
                    status: AcctStatus::from(u8::try_from(status).unwrap_or(0)),
                    session_id: text(AttrType::AcctSessionId),
                    user_name: text(AttrType::UserName),
                    calling_station_id: text(AttrType::CallingStationId),
                    nas_ip: ipv4(AttrType::NasIpAddress),
                    nas_port: packet.attr_u32(AttrType::NasPort),
                    nas_port_id: text(AttrType::NasPortId),
                    framed_ip: ipv4(AttrType::FramedIpAddress),
                })
            }
        };
        let deadline = now + DECISION_TIMEOUT;
        let proxy_state = packet.attrs().filter(|a| a.typ == AttrType::ProxyState).map(|a| a.value.to_vec()).collect();
        self.pending.insert(
            id,
            Pending {
                key,
                client: ci,
                code,
                identifier: packet.identifier(),
                authenticator: packet.authenticator(),
                proxy_state,
            },
        );
        self.pending_order.push_back((deadline, id));
        self.cache.insert(key, None);
        self.events.push_back(event);
    }

    /// Answers the request `id`. An unknown or expired id is ignored.
    pub fn handle_decision(&mut self, id: DecisionId, decision: Decision, now: Instant) {
        let Some(p) = self.pending.remove(&id) else { return };
        let secret = self.clients[p.client].secret.clone();
        let reply = match (p.code, &decision) {
            (_, Decision::Drop) => {
                self.cache.remove(&p.key);
                return;
            }
            (Code::AccessRequest, Decision::Accept { vlan, filter_id, reply_message, eap }) => {
                let mut b = Builder::new(Code::AccessAccept, p.identifier, true);
                if let Some(e) = eap {
                    add_eap(&mut b, e, secret.expose(), &p.authenticator);
                }
                if let Some(vlan) = vlan {
                    // Values and lengths here are fixed or come from config
                    // (validated there), so these cannot overflow a packet.
                    let _ = b.attr_tagged_u32(AttrType::TunnelType, 0, TUNNEL_TYPE_VLAN);
                    let _ = b.attr_tagged_u32(AttrType::TunnelMediumType, 0, TUNNEL_MEDIUM_IEEE_802);
                    let _ = b.attr_tagged_str(AttrType::TunnelPrivateGroupId, 0, vlan.as_bytes());
                }
                if let Some(f) = filter_id {
                    // At most 253 bytes: checked when groups.toml is loaded.
                    let _ = b.attr(AttrType::FilterId, truncate(f.as_bytes()));
                }
                if let Some(m) = reply_message {
                    let _ = b.attr(AttrType::ReplyMessage, truncate(m.as_bytes()));
                }
                Some(b)
            }
            (Code::AccessRequest, Decision::Reject { reply_message, eap }) => {
                let mut b = Builder::new(Code::AccessReject, p.identifier, true);
                if let Some(e) = eap {
                    add_eap(&mut b, e, secret.expose(), &p.authenticator);
                }
                let _ = b.attr(AttrType::ReplyMessage, truncate(reply_message.as_bytes()));
                Some(b)
            }
            (Code::AccessRequest, Decision::Challenge { eap, state }) => {
                let mut b = Builder::new(Code::AccessChallenge, p.identifier, true);
                let _ = b.eap_message(eap);
                let _ = b.attr(AttrType::State, state);
                Some(b)
            }
            (Code::AccountingRequest, Decision::Stored) => {
                Some(Builder::new(Code::AccountingResponse, p.identifier, false))
            }
            // A decision of the wrong kind for the request: no answer.
            _ => None,
        };
        let Some(mut b) = reply else {
            self.cache.remove(&p.key);
            return;
        };
        for ps in &p.proxy_state {
            // RFC 2865 §5.33: Proxy-State goes back unmodified, in order.
            let _ = b.attr(AttrType::ProxyState, ps);
        }
        let payload: bytes::Bytes = b.finish_response_with(secret.key(), &p.authenticator).into();
        self.remember(p.key, payload.clone(), now);
        self.transmits.push_back(Transmit { port: p.key.1, to: p.key.0, payload });
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next cache or decision expiry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let a = self.cache_order.front().map(|(t, _)| *t);
        let b = self.pending_order.front().map(|(t, _)| *t);
        a.into_iter().chain(b).min()
    }

    /// Requests waiting for a decision.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn remember(&mut self, key: CacheKey, reply: bytes::Bytes, now: Instant) {
        if self.cache_order.len() >= MAX_CACHED
            && let Some((_, old)) = self.cache_order.pop_front()
            && matches!(self.cache.get(&old), Some(Some(_)))
        {
            self.cache.remove(&old);
        }
        self.cache.insert(key, Some(reply));
        self.cache_order.push_back((now + DUPLICATE_WINDOW, key));
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.cache_order.front()
            && at <= now
        {
            self.cache_order.pop_front();
            if matches!(self.cache.get(&key), Some(Some(_))) {
                self.cache.remove(&key);
            }
        }
        while let Some(&(at, id)) = self.pending_order.front()
            && at <= now
        {
            self.pending_order.pop_front();
            if let Some(p) = self.pending.remove(&id) {
                self.cache.remove(&p.key);
            }
        }
    }
}

/// EAP-Message, the MPPE keys and User-Name of an EAP answer.
fn add_eap(b: &mut Builder, e: &EapReply, secret: &[u8], request_authenticator: &[u8; 16]) {
    use super::mppe;
    let _ = b.eap_message(&e.message);
    if let Some(msk) = &e.msk {
        // Salts: random, high bit set, different for the two attributes.
        let salt = fastrand::u16(..) & !1;
        let (recv, send) = mppe::split_msk(msk);
        let recv = mppe::encrypt(recv, salt, secret, request_authenticator);
        let send = mppe::encrypt(send, salt | 1, secret, request_authenticator);
        let _ = b.vendor_attr(mppe::VENDOR_MICROSOFT, mppe::MS_MPPE_RECV_KEY, &recv);
        let _ = b.vendor_attr(mppe::VENDOR_MICROSOFT, mppe::MS_MPPE_SEND_KEY, &send);
    }
    if let Some(name) = &e.user_name {
        let _ = b.attr(AttrType::UserName, truncate(name.as_bytes()));
    }
}

/// Reply-Message values are at most 253 bytes.
fn truncate(b: &[u8]) -> &[u8] {
    &b[..b.len().min(253)]
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
