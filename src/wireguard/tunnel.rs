//! Our small wrapper around boringtun's `noise` module: the only file that
//! names boringtun, so moving to a fork (Firezone's, Mullvad's GotaTun) is a
//! local change.
//!
//! Known limits of boringtun 0.7 that this wrapper works around or records:
//! - `encapsulate` panics on a short output buffer: every output buffer
//!   handed in is [`BUF`] bytes, more than any datagram plus overhead.
//! - Its rate limiter reads `Instant::now()` itself and is not reset by
//!   anything but `reset_count()`: the shell calls [`Gate::reset`] every second.
//! - It reads the clock internally for timers; time is not passed in.

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use std::net::IpAddr;
use std::time::Duration;

/// Output buffer size: the largest UDP payload plus WireGuard's overhead.
pub const BUF: usize = 65_536 + 64;

/// Handshakes per second over all peers before the gate asks for cookies
/// (WireGuard's DoS defence: a valid mac2 proves the source address).
pub const HANDSHAKES_PER_SECOND: u64 = 100;

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
/// whose it is.
pub struct Gate {
    secret: StaticSecret,
    public: PublicKey,
    limiter: RateLimiter,
}

impl Gate {
    pub fn new(private_key: &[u8; 32]) -> Self {
        let secret = StaticSecret::from(*private_key);
        let public = PublicKey::from(&secret);
        let limiter = RateLimiter::new(&public, HANDSHAKES_PER_SECOND);
        Self { secret, public, limiter }
    }

    pub fn public_key(&self) -> [u8; 32] {
        *self.public.as_bytes()
    }

    /// Starts a new rate-limit second.
    pub fn reset(&self) {
        self.limiter.reset_count();
    }

    /// `Err((discard, Some(reply)))` when a cookie reply should go back.
    pub fn check<'a>(
        &self,
        from: IpAddr,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Result<Addressed, (Discard, Option<&'a [u8]>)> {
        let mut cookie = [0u8; 64];
        match self.limiter.verify_packet(Some(from), datagram, &mut cookie) {
            Ok(Packet::HandshakeInit(init)) => match parse_handshake_anon(&self.secret, &self.public, &init) {
                Ok(half) => Ok(Addressed::Initiation(half.peer_static_public)),
                Err(e) => Err((Discard::from_error(&e), None)),
            },
            Ok(Packet::HandshakeResponse(r)) => Ok(Addressed::Index(r.receiver_idx >> 8)),
            Ok(Packet::PacketCookieReply(c)) => Ok(Addressed::Index(c.receiver_idx >> 8)),
            Ok(Packet::PacketData(d)) => Ok(Addressed::Index(d.receiver_idx >> 8)),
            Err(TunnResult::WriteToNetwork(reply)) => {
                let n = reply.len();
                out[..n].copy_from_slice(reply);
                Err((Discard::CookieSent, Some(&out[..n])))
            }
            Err(TunnResult::Err(e)) => Err((Discard::from_error(&e), None)),
            Err(_) => Err((Discard::Rejected, None)),
        }
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

/// One peer's Noise session state.
pub struct Tunnel {
    tunn: Tunn,
}

impl Tunnel {
    /// `index` is the peer's 24-bit index: the receiver index of every
    /// message for it carries it in its top 24 bits.
    pub fn new(private_key: &[u8; 32], peer_public: &[u8; 32], index: u32, keepalive: Option<u16>) -> Self {
        // No shared rate limiter: the gate applied the global one, and each
        // tunnel's own (10 handshakes/s, reset by its timers) caps a single
        // peer. Sharing one would count every handshake twice.
        let tunn =
            Tunn::new(StaticSecret::from(*private_key), PublicKey::from(*peer_public), None, keepalive, index, None);
        Self { tunn }
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
    pub fn decapsulate<'a>(&mut self, from: Option<IpAddr>, datagram: &[u8], out: &'a mut [u8]) -> Step<'a> {
        Self::step(self.tunn.decapsulate(from, datagram, out))
    }

    /// An inner packet for the peer. `out` must be [`BUF`] bytes.
    pub fn encapsulate<'a>(&mut self, packet: &[u8], out: &'a mut [u8]) -> Step<'a> {
        if out.len() < packet.len() + 148 {
            return Step::Discard(Discard::Rejected);
        }
        Self::step(self.tunn.encapsulate(packet, out))
    }

    /// Keepalives, rekeys and handshake retries, every ~250 ms.
    pub fn update_timers<'a>(&mut self, out: &'a mut [u8]) -> Step<'a> {
        Self::step(self.tunn.update_timers(out))
    }

    /// Time since the current session's handshake, if there is one.
    pub fn since_handshake(&self) -> Option<Duration> {
        self.tunn.time_since_last_handshake()
    }
}

/// The public key for a private one (`wg pubkey`).
pub fn public_key(private_key: &[u8; 32]) -> [u8; 32] {
    *PublicKey::from(&StaticSecret::from(*private_key)).as_bytes()
}
