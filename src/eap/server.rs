//! The EAP server core (RFC 3748 as carried by RFC 3579): conversations
//! tied together by the RADIUS State attribute, method negotiation, and the
//! limits that keep a flood of half-open conversations from costing more
//! than a bounded table. Sans-IO: EAP bytes, State and `now` in; what to
//! answer out.
//!
//! Drive it: [`EapServer::handle`] each Access-Request's EAP-Message and
//! State with `now`, and answer with the [`Outcome`] (Challenge, Accept or
//! Reject); call [`EapServer::handle_timeout`] when
//! [`EapServer::poll_timeout`] is due (abandoned conversations go), and
//! count every [`EapServer::poll_event`] (refusals).

use super::fragment;
use super::packet::{Code, Packet, encode, kind};
use super::peap::{Credentials, Peap};
use super::tls::{EapTls, Keys, Step};
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Idle conversations are swept at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The limits (`[eap]`), each enforced and counted.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Round trips one conversation may take.
    pub max_rounds: u32,
    /// Conversations held at once.
    pub max_sessions: usize,
    /// A conversation idle this long is dropped.
    pub timeout: Duration,
    /// The largest TLS message a peer may send (reassembled).
    pub max_message: usize,
    /// EAP packet size when the NAS sends no Framed-MTU.
    pub default_mtu: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_rounds: 64,
            max_sessions: 10_000,
            timeout: Duration::from_secs(30),
            max_message: 64 * 1024,
            default_mtu: 1000,
        }
    }
}

/// A reason a conversation ended or was refused, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    UnknownState,
    NoCommonMethod,
    TooManyRounds,
    TooLarge,
    TlsFailed,
    InnerFailed,
    Evicted,
    TimedOut,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::Malformed,
        Refusal::UnknownState,
        Refusal::NoCommonMethod,
        Refusal::TooManyRounds,
        Refusal::TooLarge,
        Refusal::TlsFailed,
        Refusal::InnerFailed,
        Refusal::Evicted,
        Refusal::TimedOut,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::UnknownState => "unknown_state",
            Refusal::NoCommonMethod => "no_common_method",
            Refusal::TooManyRounds => "too_many_rounds",
            Refusal::TooLarge => "too_large",
            Refusal::TlsFailed => "tls_failed",
            Refusal::InnerFailed => "inner_failed",
            Refusal::Evicted => "evicted",
            Refusal::TimedOut => "timed_out",
        }
    }
}

/// Who authenticated.
#[derive(Clone, Debug)]
pub enum Authenticated {
    /// EAP-TLS: the verified client certificate (end entity).
    Certificate { eap_identity: String, certificate: CertificateDer<'static>, tls13: bool },
    /// PEAP-MSCHAPv2: the user whose password the inner method verified.
    Password { user: String },
}

/// What to answer.
#[derive(Debug)]
pub enum Outcome {
    /// Access-Challenge carrying `eap`, with State `state`.
    Challenge { eap: Vec<u8>, state: Vec<u8> },
    /// The method succeeded: authorize `who`, then Access-Accept with
    /// `eap` (EAP-Success) and the MPPE keys, or Access-Reject with an
    /// EAP-Failure of the same identifier.
    Authenticated { who: Authenticated, keys: Keys, success: Vec<u8>, failure: Vec<u8> },
    /// Access-Reject carrying `eap` (EAP-Failure).
    Reject { eap: Vec<u8>, refusal: Refusal, reason: String },
}

enum Method {
    Tls(Box<EapTls>),
    Peap(Box<Peap>),
}

/// Which method a conversation runs, for the shell's labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodId {
    Tls,
    Peap,
}

impl Method {
    fn id(&self) -> MethodId {
        match self {
            Method::Tls(_) => MethodId::Tls,
            Method::Peap(_) => MethodId::Peap,
        }
    }
}

struct Session {
    /// The Identifier of the last EAP-Request sent.
    last_id: u8,
    method: Method,
    mtu: usize,
    rounds: u32,
    deadline: Instant,
    /// The NAS came back with our State at least once: a real conversation,
    /// kept before half-open ones when the table is full.
    returned: bool,
    created: u64,
    eap_identity: String,
}

pub struct EapServer {
    tls: Option<Arc<rustls::ServerConfig>>,
    peap: Option<(Arc<rustls::ServerConfig>, Arc<dyn Credentials>)>,
    limits: Limits,
    sessions: HashMap<[u8; 16], Session>,
    /// States of conversations begun, oldest first (see `make_room`);
    /// trimmed by `handle_timeout` and never longer than twice the cap.
    half_open: std::collections::VecDeque<[u8; 16]>,
    key: ring::hmac::Key,
    counter: u64,
    /// Conversations that ended without an answer (dropped to make room,
    /// timed out), for the shell to count: see [`EapServer::poll_event`].
    events: std::collections::VecDeque<Refusal>,
    /// The earliest a conversation can expire (never later than the real
    /// earliest deadline; possibly earlier, after a conversation ended).
    next_deadline: Option<Instant>,
    /// The last sweep of idle conversations.
    swept: Option<Instant>,
    /// The method of the conversation the last `handle` was about (`None`
    /// before one was chosen), for metric labels.
    pub last_method: Option<MethodId>,
    /// The first byte of every State (see [`partition_of`]).
    partition: u8,
}

/// The partition that made `state`: the shell runs one [`EapServer`] per
/// partition and hands each round to the one that holds its conversation.
/// A State that is not ours (wrong length) names partition 0, which refuses it.
pub fn partition_of(state: &[u8]) -> u8 {
    if state.len() == 16 { state[0] } else { 0 }
}

impl EapServer {
    /// `seed`: 32 random bytes from the shell; States are HMAC-SHA256 of a
    /// counter under it, so they cannot be guessed or replayed across runs.
    pub fn new(tls: Option<Arc<rustls::ServerConfig>>, limits: Limits, seed: [u8; 32]) -> Self {
        Self {
            tls,
            peap: None,
            limits,
            sessions: HashMap::new(),
            half_open: std::collections::VecDeque::new(),
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seed),
            counter: 0,
            events: std::collections::VecDeque::new(),
            next_deadline: None,
            swept: None,
            last_method: None,
            partition: 0,
        }
    }

    /// Marks every State this server makes with `partition` (120 of its
    /// 128 bits stay unguessable).
    pub fn with_partition(mut self, partition: u8) -> Self {
        self.partition = partition;
        self
    }

    /// Offers PEAP-MSCHAPv2 too (to peers that Nak EAP-TLS, or first if
    /// there is no EAP-TLS config).
    pub fn with_peap(mut self, config: Arc<rustls::ServerConfig>, credentials: Arc<dyn Credentials>) -> Self {
        self.peap = Some((config, credentials));
        self
    }

    /// Conversations in flight.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    fn new_peap(&mut self, mtu: usize) -> Option<Peap> {
        let challenge = self.next_state(); // another 16 unguessable bytes
        let (config, credentials) = self.peap.as_ref()?;
        Peap::new(Arc::clone(config), mtu, self.limits.max_message, Arc::clone(credentials), challenge).ok()
    }

    /// A State for the next round: unguessable, and starting with this
    /// server's partition so that the shell can route the round back here.
    fn new_state(&mut self) -> [u8; 16] {
        let mut s = self.next_state();
        s[0] = self.partition;
        s
    }

    fn next_state(&mut self) -> [u8; 16] {
        self.counter += 1;
        let tag = ring::hmac::sign(&self.key, &self.counter.to_be_bytes());
        let mut s = [0u8; 16];
        s.copy_from_slice(&tag.as_ref()[..16]);
        s
    }

    /// One Access-Request's EAP-Message (reassembled from its attributes),
    /// its State, and its Framed-MTU.
    pub fn handle(&mut self, eap: &[u8], state: Option<&[u8]>, framed_mtu: Option<u32>, now: Instant) -> Outcome {
        self.last_method = None;
        let failure = |id: u8, refusal: Refusal, reason: String| Outcome::Reject {
            eap: encode(Code::Failure, id, None, &[]).unwrap_or_default(),
            refusal,
            reason,
        };
        let Ok(p) = Packet::decode(eap) else {
            return failure(0, Refusal::Malformed, "EAP-Message is not an EAP packet".into());
        };
        if p.code != Code::Response {
            return failure(p.id, Refusal::Malformed, "not an EAP-Response".into());
        }
        let Some(state) = state else {
            return self.begin(p, framed_mtu, now);
        };
        let Some(key) = <[u8; 16]>::try_from(state).ok().filter(|k| self.sessions.contains_key(k)) else {
            return failure(p.id, Refusal::UnknownState, "unknown or expired EAP session".into());
        };
        let Some(mut s) = self.sessions.remove(&key) else {
            return failure(p.id, Refusal::UnknownState, "unknown or expired EAP session".into());
        };
        s.rounds += 1;
        s.returned = true;
        self.last_method = Some(s.method.id());
        if s.rounds > self.limits.max_rounds {
            return failure(p.id, Refusal::TooManyRounds, format!("more than {} round trips", self.limits.max_rounds));
        }
        if p.id != s.last_id {
            return failure(p.id, Refusal::Malformed, "EAP Identifier does not answer our request".into());
        }
        let next_id = p.id.wrapping_add(1);
        let step = match (&mut s.method, p.kind) {
            (Method::Tls(tls), Some(kind::TLS)) => tls.handle(p.data),
            (Method::Peap(peap), Some(kind::PEAP)) => match peap.handle(p.data) {
                super::peap::Step::Request(td) => Step::Request(td),
                super::peap::Step::Failed(f) => Step::Failed(f),
                super::peap::Step::InnerFailed(why) => return failure(p.id, Refusal::InnerFailed, why),
                super::peap::Step::Done { keys, user } => {
                    return Outcome::Authenticated {
                        who: Authenticated::Password { user },
                        keys,
                        success: encode(Code::Success, p.id, None, &[]).unwrap_or_default(),
                        failure: encode(Code::Failure, p.id, None, &[]).unwrap_or_default(),
                    };
                }
            },
            (Method::Tls(_), Some(kind::NAK)) if p.data.contains(&kind::PEAP) && self.peap.is_some() => {
                // Legacy Nak: the peer wants PEAP; start it in this conversation.
                let Some(peap) = self.new_peap(s.mtu) else {
                    return failure(p.id, Refusal::TlsFailed, "cannot start TLS".into());
                };
                let start = peap.start();
                s.method = Method::Peap(Box::new(peap));
                self.last_method = Some(MethodId::Peap);
                Step::Request(start)
            }
            (_, Some(kind::NAK)) => {
                let why = "the peer refused our EAP method and offers nothing we run".to_string();
                return failure(p.id, Refusal::NoCommonMethod, why);
            }
            _ => return failure(p.id, Refusal::Malformed, "a response of another method".into()),
        };
        match step {
            Step::Request(type_data) => {
                let (held, method) = match &s.method {
                    Method::Tls(t) => (t.held(), kind::TLS),
                    Method::Peap(p) => (p.held(), kind::PEAP),
                };
                if held > self.limits.max_message {
                    return failure(p.id, Refusal::TooLarge, "reassembled message over the cap".into());
                }
                let eap = encode(Code::Request, next_id, Some(method), &type_data).unwrap_or_default();
                s.last_id = next_id;
                s.deadline = now + self.limits.timeout;
                self.expect_deadline(s.deadline);
                let state = self.new_state();
                self.sessions.insert(state, s);
                Outcome::Challenge { eap, state: state.to_vec() }
            }
            Step::Done { keys, peer_certificate, tls13 } => Outcome::Authenticated {
                who: Authenticated::Certificate { eap_identity: s.eap_identity, certificate: peer_certificate, tls13 },
                keys,
                success: encode(Code::Success, p.id, None, &[]).unwrap_or_default(),
                failure: encode(Code::Failure, p.id, None, &[]).unwrap_or_default(),
            },
            Step::Failed(f) => {
                let refusal = match f {
                    super::tls::Failure::Framing(w) if w.contains("cap") => Refusal::TooLarge,
                    super::tls::Failure::Framing(_) => Refusal::Malformed,
                    _ => Refusal::TlsFailed,
                };
                failure(p.id, refusal, f.to_string())
            }
        }
    }

    /// A conversation's first message: the peer's Identity. We propose
    /// EAP-TLS.
    fn begin(&mut self, p: Packet<'_>, framed_mtu: Option<u32>, now: Instant) -> Outcome {
        let failure = |refusal, reason: &str| Outcome::Reject {
            eap: encode(Code::Failure, p.id, None, &[]).unwrap_or_default(),
            refusal,
            reason: reason.into(),
        };
        if p.kind != Some(kind::IDENTITY) {
            return failure(Refusal::Malformed, "a conversation starts with EAP-Response/Identity");
        }
        let mtu = framed_mtu
            .and_then(|m| usize::try_from(m).ok())
            .unwrap_or(self.limits.default_mtu)
            .clamp(fragment::OVERHEAD + 64, 4000);
        // EAP-TLS first when configured; PEAP to those who Nak it.
        let method = match (&self.tls, self.peap.is_some()) {
            (Some(tls), _) => {
                EapTls::new(Arc::clone(tls), mtu, self.limits.max_message).ok().map(|t| Method::Tls(Box::new(t)))
            }
            (None, true) => self.new_peap(mtu).map(|p| Method::Peap(Box::new(p))),
            (None, false) => return failure(Refusal::NoCommonMethod, "no EAP method is configured ([eap])"),
        };
        let Some(method) = method else {
            return failure(Refusal::TlsFailed, "cannot start TLS");
        };
        let (kind_proposed, start) = match &method {
            Method::Tls(t) => (kind::TLS, t.start()),
            Method::Peap(p) => (kind::PEAP, p.start()),
        };
        self.last_method = Some(method.id());
        self.make_room();
        let id = p.id.wrapping_add(1);
        let eap = encode(Code::Request, id, Some(kind_proposed), &start).unwrap_or_default();
        let state = self.new_state();
        self.expect_deadline(now + self.limits.timeout);
        let eap_identity = String::from_utf8_lossy(&p.data[..p.data.len().min(253)]).into_owned();
        self.sessions.insert(
            state,
            Session {
                last_id: id,
                method,
                mtu,
                rounds: 0,
                deadline: now + self.limits.timeout,
                returned: false,
                created: self.counter,
                eap_identity,
            },
        );
        self.half_open.push_back(state);
        if self.half_open.len() > 2 * self.limits.max_sessions {
            let sessions = &self.sessions;
            self.half_open.retain(|k| sessions.get(k).is_some_and(|s| !s.returned));
        }
        Outcome::Challenge { eap, state: state.to_vec() }
    }

    /// At the cap, the oldest conversation that never came back with its
    /// State goes first; only if every one is live does the oldest go.
    /// Returns whether one was dropped.
    ///
    /// Half-open conversations are found through `half_open` (their
    /// States in creation order; a conversation that came back has a new
    /// State, so its old entry no longer resolves): a flood of new
    /// conversations at the cap costs O(1) each, not a scan of the table.
    #[allow(clippy::disallowed_methods)] // a minimum over (returned, created): ties are equally old
    fn make_room(&mut self) -> bool {
        if self.sessions.len() < self.limits.max_sessions {
            return false;
        }
        let mut victim = None;
        while let Some(k) = self.half_open.pop_front() {
            if self.sessions.contains_key(&k) {
                victim = Some(k);
                break;
            }
        }
        // Every conversation is live: the oldest goes (a scan, rare).
        let victim =
            victim.or_else(|| self.sessions.iter().min_by_key(|(_, s)| (s.returned, s.created)).map(|(k, _)| *k));
        let dropped = victim.is_some_and(|k| self.sessions.remove(&k).is_some());
        if dropped {
            self.events.push_back(Refusal::Evicted);
        }
        dropped
    }

    fn expect_deadline(&mut self, deadline: Instant) {
        self.next_deadline = Some(self.next_deadline.map_or(deadline, |d| d.min(deadline)));
    }

    /// When [`handle_timeout`](Self::handle_timeout) has work: the earliest
    /// deadline, but at most one sweep a second (a sweep scans every
    /// conversation, bounded by `max_sessions`).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let next = self.next_deadline?;
        Some(self.swept.map_or(next, |at| next.max(at + SWEEP_EVERY)))
    }

    /// Drops conversations past their deadline (each a `TimedOut` event);
    /// returns how many.
    #[allow(clippy::disallowed_methods)] // a minimum: the same in any order
    pub fn handle_timeout(&mut self, now: Instant) -> usize {
        if self.poll_timeout().is_none_or(|t| now < t) {
            return 0;
        }
        self.swept = Some(now);
        let before = self.sessions.len();
        self.sessions.retain(|_, s| s.deadline > now);
        self.next_deadline = self.sessions.values().map(|s| s.deadline).min();
        // Entries of conversations that came back, ended or expired.
        let sessions = &self.sessions;
        self.half_open.retain(|k| sessions.get(k).is_some_and(|s| !s.returned));
        let expired = before - self.sessions.len();
        self.events.extend(std::iter::repeat_n(Refusal::TimedOut, expired));
        expired
    }

    /// The next conversation that ended without an answer to count.
    pub fn poll_event(&mut self) -> Option<Refusal> {
        self.events.pop_front()
    }
}
