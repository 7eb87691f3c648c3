//! The WireGuard data plane's core: datagrams and inner packets in,
//! transmits out, every decision tallied. No sockets and no TUN: the shell
//! (`gateway::wireguard_task`) reads them and sends what lands in the
//! [`Transmits`]. Safe to call from several threads at once (one per
//! direction): the peer plan is read without a lock (swapped whole on a
//! reload or an admission), peer sessions are behind per-peer locks,
//! access is atomic.
//!
//! Drive it: [`Router::handle_datagram`] for every UDP datagram,
//! [`Router::handle_tun_packet`] for every packet read from the TUN and
//! [`Router::update_timers`] about every 250 ms, each with `now`; send what
//! lands in the [`Transmits`] and act on its [`Event`]s. The index seed
//! comes from the shell too: the core reads no clock and draws no
//! randomness of its own (boringtun's own clock reads stay behind
//! [`super::tunnel`]).

use super::acl::{self, Access, Direction, Rule};
use super::packet;
use super::peers::{Peer, PeerSet, PeerSpec};
use super::tunnel::{Addressed, BUF, Discard, Gate, Step};
use arc_swap::ArcSwap;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What became of an inner packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Forwarded: the peer's access allows everything.
    Forward,
    /// Forwarded under quarantine: a remediation destination.
    Remediation,
    /// Dropped: quarantined and not a remediation destination.
    DropQuarantine,
    /// Dropped: the peer's access is blocked.
    DropBlocked,
    /// Dropped: its inner source is not in the sending peer's allowed IPs.
    DropSpoofed,
    /// Dropped: not a well-formed IPv4/IPv6 packet.
    DropMalformed,
    /// Dropped: no peer's allowed IPs hold the destination (or the peer
    /// has no endpoint yet).
    DropNoRoute,
}

impl Fate {
    pub const ALL: [Fate; 7] = [
        Fate::Forward,
        Fate::Remediation,
        Fate::DropQuarantine,
        Fate::DropBlocked,
        Fate::DropSpoofed,
        Fate::DropMalformed,
        Fate::DropNoRoute,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Fate::Forward => "forward",
            Fate::Remediation => "remediation",
            Fate::DropQuarantine => "drop_quarantine",
            Fate::DropBlocked => "drop_blocked",
            Fate::DropSpoofed => "drop_spoofed",
            Fate::DropMalformed => "drop_malformed",
            Fate::DropNoRoute => "drop_no_route",
        }
    }
}

/// Where a transmit goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    Network(SocketAddr),
    Tun,
}

/// Something the shell acts on beyond sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A key reported in telemetry was let in as a new peer with this
    /// tunnel address: the device's agent is told, to configure its side.
    Admitted { device_id: Arc<str>, public_key: [u8; 32], address: IpNet },
}

/// Transmits produced by one or more calls, in one reusable buffer (no
/// allocation per packet once warm), the tallies of what was decided and
/// the events for the shell.
#[derive(Default)]
pub struct Transmits {
    bytes: Vec<u8>,
    items: Vec<(Dest, Range<usize>)>,
    /// Taken by the shell with [`Transmits::take_events`].
    events: Vec<Event>,
    /// Per direction (from peer, to peer), per [`Fate`].
    pub fates: [[u64; Fate::ALL.len()]; 2],
    /// Per [`Discard`] reason.
    pub discards: [u64; Discard::ALL.len()],
}

impl Transmits {
    fn push(&mut self, dest: Dest, data: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        self.items.push((dest, start..self.bytes.len()));
    }

    /// Puts a transmit in, as a call would (tests that replay one).
    #[cfg(test)]
    pub(crate) fn push_for_test(&mut self, dest: Dest, data: &[u8]) {
        self.push(dest, data);
    }

    fn fate(&mut self, direction: Direction, fate: Fate) {
        let d = match direction {
            Direction::FromPeer => 0,
            Direction::ToPeer => 1,
        };
        self.fates[d][fate as usize] += 1;
    }

    fn discard(&mut self, reason: Discard) {
        if let Some(i) = Discard::ALL.iter().position(|d| *d == reason) {
            self.discards[i] += 1;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (Dest, &[u8])> {
        self.items.iter().map(|(d, r)| (*d, &self.bytes[r.clone()]))
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The events since the last call.
    pub fn take_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.events.drain(..)
    }

    /// Transmits held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The network transmits grouped for UDP segmentation offload (GSO):
    /// runs of datagrams to one destination, adjacent in the buffer, all of
    /// one size but the last (which may be shorter), at most `max_segments`
    /// and 64 000 bytes each. Yields (destination, bytes, segment size if
    /// more than one datagram).
    pub fn network_batches(&self, max_segments: usize) -> Vec<(SocketAddr, &[u8], Option<usize>)> {
        let mut batches = Vec::new();
        let mut i = 0;
        while i < self.items.len() {
            let (Dest::Network(to), first) = &self.items[i] else {
                i += 1;
                continue;
            };
            let size = first.len();
            let mut end = first.end;
            let mut count = 1;
            i += 1;
            while let Some((Dest::Network(next_to), r)) = self.items.get(i) {
                let fits = count < max_segments && end - first.start + r.len() <= 64_000;
                if next_to != to || r.start != end || r.len() > size || !fits {
                    break;
                }
                end = r.end;
                count += 1;
                i += 1;
                if r.len() < size {
                    break; // only the last segment may be short
                }
            }
            batches.push((*to, &self.bytes[first.start..end], (count > 1).then_some(size)));
        }
        batches
    }

    /// The inner packets for the TUN, in order.
    pub fn tun_packets(&self) -> impl Iterator<Item = &[u8]> {
        self.items.iter().filter(|(d, _)| *d == Dest::Tun).map(|(_, r)| &self.bytes[r.clone()])
    }

    /// Forgets the transmits (after sending) and the tallies (after counting).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
        self.events.clear();
        self.fates = Default::default();
        self.discards = Default::default();
    }
}

/// Peers and remediation rules: replaced as a whole on reload.
struct Plan {
    peers: PeerSet,
    remediation: Arc<[Rule]>,
}

/// Where peers that are not in the config may come from: devices that
/// reported their WireGuard key in telemetry. Asked on an authenticated
/// handshake initiation from a key no peer has; answers the peer to create
/// and its starting access, or `None` (the handshake is dropped).
pub trait Admission: Send + Sync {
    fn admit(&self, key: &[u8; 32]) -> Option<(PeerSpec, Access)>;
}

/// The access a peer gets when a tunnel is established. A handshake that
/// starts a tunnel (no session younger than [`SESSION_LIFETIME`]) is an
/// admission, as an Access-Request is for RADIUS: `admission`-mode failures
/// restrict it. A rekey of a running tunnel is not.
pub trait Grants: Send + Sync {
    fn at_admission(&self, spec: &PeerSpec) -> Access;
}

/// WireGuard gives up on a session this long after its handshake
/// (Reject-After-Time): a handshake later than this starts a new tunnel.
pub const SESSION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(180);

pub struct Router {
    gate: Gate,
    /// Read on every packet without a lock; replaced whole by writers,
    /// who take `next_index` first so that two never race.
    plan: ArcSwap<Plan>,
    next_index: Mutex<u32>,
    admission: Option<Box<dyn Admission>>,
    grants: Option<Box<dyn Grants>>,
}

/// A scratch buffer of [`BUF`] bytes, one per calling thread.
pub fn scratch() -> Box<[u8]> {
    vec![0u8; BUF].into_boxed_slice()
}

impl Router {
    /// `index_seed` starts the peers' 24-bit indexes: random in the shell,
    /// so that indexes do not repeat across restarts (a datagram for a
    /// pre-restart session then finds no peer rather than the wrong one).
    pub fn new(private_key: [u8; 32], remediation: Vec<Rule>, now: Instant, index_seed: u32) -> Self {
        Self {
            gate: Gate::new(&private_key, now),
            plan: ArcSwap::from_pointee(Plan { peers: PeerSet::default(), remediation: remediation.into() }),
            next_index: Mutex::new(index_seed % (1 << 24)),
            admission: None,
            grants: None,
        }
    }

    /// Decides a peer's access afresh whenever it establishes a tunnel.
    pub fn with_grants(mut self, grants: Box<dyn Grants>) -> Self {
        self.grants = Some(grants);
        self
    }

    /// Lets unknown keys in through `admission`.
    pub fn with_admission(mut self, admission: Box<dyn Admission>) -> Self {
        self.admission = Some(admission);
        self
    }

    /// A peer for an unknown key, if admission has one: added to the set
    /// (the other peers keep their sessions), and an [`Event::Admitted`].
    fn admit(&self, key: &[u8; 32], out: &mut Transmits) -> Option<Arc<Peer>> {
        let (spec, access) = self.admission.as_ref()?.admit(key)?;
        let mut next = self.next_index.lock().unwrap_or_else(|p| p.into_inner());
        let plan = self.plan.load_full();
        if let Some(p) = plan.peers.by_key(key) {
            return Some(Arc::clone(p)); // admitted by the other direction meanwhile
        }
        let address = spec.allowed_ips.first().copied();
        let mut specs = plan.peers.specs();
        specs.push(spec);
        let (peers, _) = PeerSet::build(&specs, &plan.peers, &self.gate, &mut next, |_| access);
        let peer = peers.by_key(key).map(Arc::clone);
        self.plan.store(Arc::new(Plan { peers, remediation: Arc::clone(&plan.remediation) }));
        if let (Some(p), Some(address)) = (&peer, address) {
            out.events.push(Event::Admitted { device_id: Arc::clone(&p.spec.device_id), public_key: *key, address });
        }
        peer
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.gate.public_key()
    }

    fn plan(&self) -> Arc<Plan> {
        self.plan.load_full()
    }

    /// Installs a new peer set and remediation list. `access` gives a new
    /// peer its starting access; peers that left are blocked at once (a
    /// packet already past the lookup cannot slip through) and returned.
    pub fn set_peers(
        &self,
        specs: &[PeerSpec],
        remediation: Vec<Rule>,
        access: impl Fn(&PeerSpec) -> Access,
    ) -> Vec<Arc<Peer>> {
        let mut next = self.next_index.lock().unwrap_or_else(|p| p.into_inner());
        let plan = self.plan.load();
        let (peers, removed) = PeerSet::build(specs, &plan.peers, &self.gate, &mut next, access);
        for p in &removed {
            p.set_access(Access::Deny);
        }
        self.plan.store(Arc::new(Plan { peers, remediation: remediation.into() }));
        removed
    }

    /// Every peer now, for verdict binding, timers and gauges.
    pub fn peers(&self) -> Vec<Arc<Peer>> {
        self.plan().peers.iter().map(Arc::clone).collect()
    }

    pub fn peers_of_device(&self, device: &str) -> Vec<Arc<Peer>> {
        self.plan().peers.for_device(device).to_vec()
    }

    pub fn peer_by_key(&self, key: &[u8; 32]) -> Option<Arc<Peer>> {
        self.plan().peers.by_key(key).map(Arc::clone)
    }

    /// A UDP datagram from `from`.
    pub fn handle_datagram(
        &self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        scratch: &mut [u8],
        out: &mut Transmits,
    ) {
        let plan = self.plan.load();
        let mut initiation = false;
        let peer = match self.gate.check(now, from.ip(), datagram, scratch) {
            Ok(Addressed::Initiation(key)) => {
                initiation = true;
                plan.peers.by_key(&key).map(Arc::clone).or_else(|| self.admit(&key, out)).ok_or(Discard::UnknownKey)
            }
            Ok(Addressed::Index(i)) => plan.peers.by_index(i).map(Arc::clone).ok_or(Discard::UnknownIndex),
            Err((reason, reply)) => {
                if let Some(reply) = reply {
                    out.push(Dest::Network(from), reply);
                }
                out.discard(reason);
                return;
            }
        };
        let peer = match peer {
            Ok(p) => p,
            Err(reason) => return out.discard(reason),
        };
        let mut session = peer.session();
        if initiation && !session.tunnel.initiation_allowed(now) {
            // Past this peer's share of the second: prove the address.
            if let Err((reason, reply)) = self.gate.challenge(from.ip(), datagram, scratch) {
                if let Some(reply) = reply {
                    out.push(Dest::Network(from), reply);
                }
                return out.discard(reason);
            }
        }
        // A tunnel starts when there is no live session to rekey.
        let admission = initiation && session.tunnel.since_handshake(now).is_none_or(|d| d >= SESSION_LIFETIME);
        match session.tunnel.decapsulate(now, Some(from.ip()), datagram, scratch) {
            Step::Done => session.endpoint = Some(from),
            Step::Discard(reason) => out.discard(reason),
            Step::Network(reply) => {
                if admission && let Some(grants) = &self.grants {
                    // Before the response leaves, so no packet of the new
                    // tunnel passes under the old access.
                    peer.set_access(grants.at_admission(&peer.spec));
                }
                // Authenticated: this is where the peer is now (roaming).
                session.endpoint = Some(from);
                out.push(Dest::Network(from), reply);
                // Packets queued while the handshake was in flight.
                while let Step::Network(queued) = session.tunnel.decapsulate(now, None, &[], scratch) {
                    out.push(Dest::Network(from), queued);
                }
            }
            Step::Inner(inner) => {
                session.endpoint = Some(from);
                drop_or_forward(&peer, &plan.remediation, inner, Direction::FromPeer, out);
            }
        }
    }

    /// An inner packet read from the TUN, to be sent to the peer that owns
    /// its destination.
    pub fn handle_tun_packet(&self, now: Instant, packet: &[u8], scratch: &mut [u8], out: &mut Transmits) {
        let plan = self.plan.load();
        let Some(flow) = packet::parse(packet) else {
            return out.fate(Direction::ToPeer, Fate::DropMalformed);
        };
        let Some(peer) = plan.peers.route(flow.dst) else {
            return out.fate(Direction::ToPeer, Fate::DropNoRoute);
        };
        let fate = decide(peer.access(), &plan.remediation, &flow, Direction::ToPeer);
        out.fate(Direction::ToPeer, fate);
        if !matches!(fate, Fate::Forward | Fate::Remediation) {
            return;
        }
        let mut session = peer.session();
        let endpoint = session.endpoint;
        match session.tunnel.encapsulate(now, packet, scratch) {
            Step::Network(datagram) => match endpoint {
                Some(to) => out.push(Dest::Network(to), datagram),
                None => out.fate(Direction::ToPeer, Fate::DropNoRoute),
            },
            Step::Discard(reason) => out.discard(reason),
            Step::Done | Step::Inner(_) => {}
        }
    }

    /// Timers of every peer: keepalives, rekeys, handshake retries.
    pub fn update_timers(&self, now: Instant, scratch: &mut [u8], out: &mut Transmits) {
        for peer in self.plan.load().peers.iter() {
            let mut session = peer.session();
            let endpoint = session.endpoint;
            if let (Step::Network(datagram), Some(to)) = (session.tunnel.update_timers(now, scratch), endpoint) {
                out.push(Dest::Network(to), datagram);
            }
        }
    }
}

/// The ACL's answer as a [`Fate`].
fn decide(access: Access, rules: &[Rule], flow: &packet::Flow, direction: Direction) -> Fate {
    match (access, acl::permits(access, rules, flow, direction)) {
        (Access::Full, _) => Fate::Forward,
        (Access::Quarantine, true) => Fate::Remediation,
        (Access::Quarantine, false) => Fate::DropQuarantine,
        (Access::Deny, _) => Fate::DropBlocked,
    }
}

/// A decrypted packet from `peer`: cryptokey routing (its source must be
/// one of the peer's allowed IPs), then the ACL.
fn drop_or_forward(peer: &Peer, rules: &[Rule], inner: &[u8], direction: Direction, out: &mut Transmits) {
    let Some(flow) = packet::parse(inner) else {
        return out.fate(direction, Fate::DropMalformed);
    };
    if !peer.owns(flow.src) {
        return out.fate(direction, Fate::DropSpoofed);
    }
    let fate = decide(peer.access(), rules, &flow, direction);
    out.fate(direction, fate);
    if matches!(fate, Fate::Forward | Fate::Remediation) {
        out.push(Dest::Tun, inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_batches_are_same_size_runs_to_one_destination() {
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1".parse().unwrap();
        let mut t = Transmits::default();
        for (dest, len) in [
            (Dest::Network(a), 100),
            (Dest::Network(a), 100),
            (Dest::Network(a), 60), // a short last segment ends the run
            (Dest::Network(a), 100),
            (Dest::Network(b), 100), // another destination
            (Dest::Tun, 100),
            (Dest::Network(b), 100), // not adjacent to the previous one
            (Dest::Network(b), 120), // larger: a new run
        ] {
            t.push(dest, &vec![len as u8; len]);
        }
        let got: Vec<_> = t.network_batches(64).into_iter().map(|(d, bytes, seg)| (d, bytes.len(), seg)).collect();
        assert_eq!(got, vec![(a, 260, Some(100)), (a, 100, None), (b, 100, None), (b, 100, None), (b, 120, None)]);
        let got: Vec<_> = t.network_batches(1).into_iter().map(|(_, bytes, seg)| (bytes.len(), seg)).collect();
        assert_eq!(got.len(), 7, "no GSO: one datagram each");
        assert!(got.iter().all(|(_, seg)| seg.is_none()));
        assert_eq!(t.tun_packets().count(), 1);
    }
}
