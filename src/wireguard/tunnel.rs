//! Our small wrapper around boringtun's `noise` module: the only file that
//! names boringtun, so moving to a fork (Firezone's, Mullvad's GotaTun) is a
//! local change.
//!
//! Time comes in from the caller as `now`, and every timing decision that is
//! warden's is made in it: the age of a session (is a handshake a rekey or a
//! new tunnel?), persistent keepalives, and the handshake rate-limit second.
//! boringtun 0.7 has no `*_at(now)` methods (Firezone's fork has them but is
//! not published to a registry), so its own clock reads stay here, behind
//! this wrapper, for what is boringtun's alone: REKEY/REJECT timers of the
//! Noise session, passive keepalives, handshake retries and the cookie
//! secret's two-minute rotation. Its `mock-instant` feature is no way out: a
//! test-only, thread-local clock whose subtraction panics when two threads
//! disagree by a microsecond.
//!
//! Other limits of boringtun 0.7 that this wrapper works around:
//! - `encapsulate` panics on a short output buffer: every output buffer
//!   handed in is [`BUF`] bytes, more than any datagram plus overhead.
//! - Its rate limiter only resets on its own clock and counts a handshake
//!   twice when shared: the [`Gate`] counts handshakes itself, in `now`, and
//!   uses two limiters for what only they can do (mac1, cookie replies).

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Output buffer size: the largest UDP payload plus WireGuard's overhead.
pub const BUF: usize = 65_536 + 64;

/// Handshakes per second over all peers before the gate asks for cookies
/// (WireGuard's DoS defence: a valid mac2 proves the source address).
pub const HANDSHAKES_PER_SECOND: u64 = 100;

/// Handshake initiations per second one peer may start before it must
/// prove its source address (mac2, after a cookie reply), as under global
/// load. Not a drop: a replayed initiation counts too, and must not lock
/// the real peer out. boringtun's own per-peer limit (10/s) ran on its
/// clock; this one runs on `now`.
pub const PEER_HANDSHAKES_PER_SECOND: u32 = 10;

/// Why a datagram got no answer and changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// Not a WireGuard message: wrong type, wrong size.
    Malformed,
    /// A handshake whose mac1 is not keyed to our public key.
    BadMac,
    /// Under load and without a valid mac2: answered with a cookie reply.
    CookieSent,
    /// Under load and no source address to bind a cookie to.
    UnderLoad,
    /// A valid handshake from a key no peer has.
    UnknownKey,
    /// A message for a receiver index no peer has (or a removed peer's).
    UnknownIndex,
    /// A handshake or data message that repeats one already seen.
    Replay,
    /// Anything else the peer's session refused (bad tag, wrong index...).
    Rejected,
}

impl Discard {
    pub const ALL: [Discard; 8] = [
        Discard::Malformed,
        Discard::BadMac,
        Discard::CookieSent,
        Discard::UnderLoad,
        Discard::UnknownKey,
        Discard::UnknownIndex,
        Discard::Replay,
        Discard::Rejected,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Discard::Malformed => "malformed",
            Discard::BadMac => "bad_mac",
            Discard::CookieSent => "cookie_sent",
            Discard::UnderLoad => "under_load",
            Discard::UnknownKey => "unknown_key",
            Discard::UnknownIndex => "unknown_index",
            Discard::Replay => "replay",
            Discard::Rejected => "rejected",
        }
    }

    fn from_error(e: &WireGuardError) -> Self {
        match e {
            WireGuardError::DuplicateCounter | WireGuardError::WrongTai64nTimestamp => Discard::Replay,
            WireGuardError::InvalidMac => Discard::BadMac,
            WireGuardError::UnderLoad => Discard::UnderLoad,
            WireGuardError::InvalidPacket | WireGuardError::IncorrectPacketLength => Discard::Malformed,
            _ => Discard::Rejected,
        }
    }
}

/// Who a datagram is for, once the gate let it through.
#[derive(Debug, PartialEq, Eq)]
pub enum Addressed {
    /// A handshake initiation from this static public key.
    Initiation([u8; 32]),
    /// A response, cookie reply or data message for this peer index.
    Index(u32),
}

/// The first check of every datagram, shared by all peers: message shape,
/// mac1, the global handshake rate limit (cookie replies under load), and
/// whose it is. Safe to share between threads: the count is atomic.
pub struct Gate {
    secret: StaticSecret,
    public: PublicKey,
    /// Checks mac1 and is never under load (its limit is never reached);
    /// the peers' sessions share it, so only the gate limits.
    open: Arc<RateLimiter>,
    /// Always under load: asks for a valid mac2, or answers a cookie reply.
    loaded: RateLimiter,
    /// Where the caller's time starts; seconds are counted from it.
    epoch: Instant,
    /// The rate-limit second the count is for, and the count.
    second: AtomicU64,
    count: AtomicU64,
}

impl Gate {
    pub fn new(private_key: &[u8; 32], now: Instant) -> Self {
        let secret = StaticSecret::from(*private_key);
        let public = PublicKey::from(&secret);
        Self {
            open: Arc::new(RateLimiter::new(&public, u64::MAX)),
            loaded: RateLimiter::new(&public, 0),
            secret,
            public,
            epoch: now,
            second: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn public_key(&self) -> [u8; 32] {
        *self.public.as_bytes()
    }

    /// A session with a peer behind this gate: the gate's key, and no rate
    /// limit of boringtun's own (the gate's and the tunnel's, in `now`).
    pub fn tunnel(&self, peer_public: &[u8; 32], index: u32, keepalive: Option<u16>) -> Tunnel {
        let limiter = Some(Arc::clone(&self.open));
        let tunn = Tunn::new(self.secret.clone(), PublicKey::from(*peer_public), None, None, index, limiter);
        Tunnel::wrap(tunn, keepalive)
    }

    /// For a handshake past one peer's share of the second: goes on only
    /// with a valid mac2; otherwise the answer is a cookie reply.
    pub fn challenge<'a>(
        &self,
        from: IpAddr,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Result<(), (Discard, Option<&'a [u8]>)> {
        let mut cookie = [0u8; 64];
        match self.loaded.verify_packet(Some(from), datagram, &mut cookie) {
            Ok(_) => Ok(()),
            Err(refusal) => Err(refused(refusal, out)),
        }
    }

    /// Counts a handshake with a valid mac1 in the second `now` falls in;
    /// true when that second is over the limit. Races between threads at a
    /// second's turn may lose a count or two, as boringtun's own did.
    fn over_limit(&self, now: Instant) -> bool {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let seen = self.second.load(Ordering::Acquire);
        if second > seen && self.second.compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.count.store(0, Ordering::Release);
        }
        self.count.fetch_add(1, Ordering::AcqRel) >= HANDSHAKES_PER_SECOND
    }

    /// `Err((discard, Some(reply)))` when a cookie reply should go back.
    pub fn check<'a>(
        &self,
        now: Instant,
        from: IpAddr,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Result<Addressed, (Discard, Option<&'a [u8]>)> {
        let mut cookie = [0u8; 64];
        let mut packet = self.open.verify_packet(Some(from), datagram, &mut cookie);
        if matches!(packet, Ok(Packet::HandshakeInit(_) | Packet::HandshakeResponse(_))) && self.over_limit(now) {
            // Under load: only a handshake that proves its source address
            // (mac2, from an earlier cookie reply) goes on.
            packet = self.loaded.verify_packet(Some(from), datagram, &mut cookie);
        }
        match packet {
            Ok(Packet::HandshakeInit(init)) => match parse_handshake_anon(&self.secret, &self.public, &init) {
                Ok(half) => Ok(Addressed::Initiation(half.peer_static_public)),
                Err(e) => Err((Discard::from_error(&e), None)),
            },
            Ok(Packet::HandshakeResponse(r)) => Ok(Addressed::Index(r.receiver_idx >> 8)),
            Ok(Packet::PacketCookieReply(c)) => Ok(Addressed::Index(c.receiver_idx >> 8)),
            Ok(Packet::PacketData(d)) => Ok(Addressed::Index(d.receiver_idx >> 8)),
            Err(refusal) => Err(refused(refusal, out)),
        }
    }
}

/// Why the gate refused a datagram, and the cookie reply to send back
/// when boringtun wrote one (copied into `out`; a reply that does not fit,
/// which boringtun's 64-byte cookie replies never are, is not sent).
fn refused<'a>(refusal: TunnResult<'_>, out: &'a mut [u8]) -> (Discard, Option<&'a [u8]>) {
    match refusal {
        TunnResult::WriteToNetwork(reply) => match out.get_mut(..reply.len()) {
            Some(dst) => {
                dst.copy_from_slice(reply);
                (Discard::CookieSent, Some(dst))
            }
            None => (Discard::Rejected, None),
        },
        TunnResult::Err(e) => (Discard::from_error(&e), None),
        _ => (Discard::Rejected, None),
    }
}

/// What one call into a tunnel produced.
#[derive(Debug)]
pub enum Step<'a> {
    /// Nothing (more) to do.
    Done,
    /// Send this to the peer's endpoint.
    Network(&'a [u8]),
    /// A decrypted inner packet (checked by the caller before the TUN gets it).
    Inner(&'a [u8]),
    /// The message was refused.
    Discard(Discard),
}

/// WireGuard message types (the first byte of every message).
const HANDSHAKE_INITIATION: u8 = 1;
const HANDSHAKE_RESPONSE: u8 = 2;

/// One peer's Noise session state, and the times warden decides on.
pub struct Tunnel {
    tunn: Tunn,
    /// When the current session was established (a handshake completed).
    established: Option<Instant>,
    /// The last time anything authenticated went to or came from the peer.
    last_traffic: Option<Instant>,
    /// Persistent keepalive interval (owned here; boringtun's is off).
    keepalive: Option<Duration>,
    /// The second handshake initiations are counted in, and their count.
    initiations: (Option<Instant>, u32),
}

impl Tunnel {
    /// A standalone session (the remote end, in tests and tools), with
    /// boringtun's own rate limiter. `index` is the 24-bit index: the
    /// receiver index of every message for it carries it in its top 24 bits.
    /// Peers of a router are made with [`Gate::tunnel`].
    pub fn new(private_key: &[u8; 32], peer_public: &[u8; 32], index: u32, keepalive: Option<u16>) -> Self {
        let tunn = Tunn::new(StaticSecret::from(*private_key), PublicKey::from(*peer_public), None, None, index, None);
        Self::wrap(tunn, keepalive)
    }

    fn wrap(tunn: Tunn, keepalive: Option<u16>) -> Self {
        let keepalive = keepalive.filter(|s| *s > 0).map(|s| Duration::from_secs(s.into()));
        Self { tunn, established: None, last_traffic: None, keepalive, initiations: (None, 0) }
    }

    /// Counts an initiation in its second; false past the per-peer limit
    /// (the caller then asks [`Gate::challenge`]).
    pub fn initiation_allowed(&mut self, now: Instant) -> bool {
        let (start, count) = &mut self.initiations;
        if start.is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1)) {
            *start = Some(now);
            *count = 0;
        }
        *count += 1;
        *count <= PEER_HANDSHAKES_PER_SECOND
    }

    fn step(r: TunnResult<'_>) -> Step<'_> {
        match r {
            TunnResult::Done => Step::Done,
            TunnResult::Err(WireGuardError::ConnectionExpired) => Step::Done,
            TunnResult::Err(e) => Step::Discard(Discard::from_error(&e)),
            TunnResult::WriteToNetwork(b) => Step::Network(b),
            TunnResult::WriteToTunnelV4(b, _) | TunnResult::WriteToTunnelV6(b, _) => Step::Inner(b),
        }
    }

    /// A datagram from the peer. After a `Network` step, call again with an
    /// empty datagram until `Done`: that drains packets queued while the
    /// handshake was in flight.
    pub fn decapsulate<'a>(
        &mut self,
        now: Instant,
        from: Option<IpAddr>,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Step<'a> {
        let step = Self::step(self.tunn.decapsulate(from, datagram, out));
        if matches!(step, Step::Discard(_)) {
            return step;
        }
        // boringtun establishes a session when it answers an initiation
        // (responder) or accepts a response (initiator).
        match datagram.first() {
            Some(&HANDSHAKE_INITIATION) if matches!(step, Step::Network(_)) => self.established = Some(now),
            Some(&HANDSHAKE_RESPONSE) => self.established = Some(now),
            _ => {}
        }
        if !datagram.is_empty() || matches!(step, Step::Network(_)) {
            self.last_traffic = Some(now);
        }
        step
    }

    /// An inner packet for the peer. `out` must be [`BUF`] bytes.
    pub fn encapsulate<'a>(&mut self, now: Instant, packet: &[u8], out: &'a mut [u8]) -> Step<'a> {
        if out.len() < packet.len() + 148 {
            return Step::Discard(Discard::Rejected);
        }
        let step = Self::step(self.tunn.encapsulate(packet, out));
        if matches!(step, Step::Network(_)) {
            self.last_traffic = Some(now);
        }
        step
    }

    /// Keepalives, rekeys and handshake retries, every ~250 ms. The
    /// persistent keepalive (WireGuard §6.5: sent when nothing else crossed
    /// the tunnel for the interval) is decided here, in `now`.
    pub fn update_timers<'a>(&mut self, now: Instant, out: &'a mut [u8]) -> Step<'a> {
        // boringtun writes what it sends at the start of `out`; only its
        // length is kept, so `out` is free again for a keepalive.
        match self.tunn.update_timers(out) {
            TunnResult::WriteToNetwork(b) => {
                let n = b.len();
                self.last_traffic = Some(now);
                return Step::Network(&out[..n]);
            }
            TunnResult::Err(e) if !matches!(e, WireGuardError::ConnectionExpired) => {
                return Step::Discard(Discard::from_error(&e));
            }
            _ => {}
        }
        let due = match (self.keepalive, self.last_traffic) {
            (Some(every), Some(last)) => now.saturating_duration_since(last) >= every,
            _ => false,
        };
        if !due || self.established.is_none() {
            return Step::Done;
        }
        self.encapsulate(now, &[], out)
    }

    /// Time since the current session's handshake, if there is one.
    pub fn since_handshake(&self, now: Instant) -> Option<Duration> {
        self.established.map(|t| now.saturating_duration_since(t))
    }
}

/// The public key for a private one (`wg pubkey`).
pub fn public_key(private_key: &[u8; 32]) -> [u8; 32] {
    *PublicKey::from(&StaticSecret::from(*private_key)).as_bytes()
}
