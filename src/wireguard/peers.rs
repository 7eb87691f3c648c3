//! The peers and the three ways a packet finds one: a handshake by the
//! initiator's static key, a data message by its receiver index, an inner
//! packet from the TUN by its destination (cryptokey routing: the longest
//! allowed-IPs prefix that holds it).

use super::acl::Access;
use super::tunnel::{Gate, Tunnel};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A peer as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub device_id: Arc<str>,
    pub public_key: [u8; 32],
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
}

/// The Noise session and where the peer was last heard from.
pub struct Session {
    pub tunnel: Tunnel,
    pub endpoint: Option<SocketAddr>,
}

pub struct Peer {
    pub spec: PeerSpec,
    /// Our 24-bit index for it: the top bits of its receiver indexes.
    pub index: u32,
    /// [`Access`] as a byte: read on every packet without a lock, written
    /// by verdict events.
    access: AtomicU8,
    session: Mutex<Session>,
}

impl Peer {
    pub fn new(spec: PeerSpec, index: u32, gate: &Gate, access: Access) -> Self {
        let tunnel = gate.tunnel(&spec.public_key, index, spec.persistent_keepalive);
        Self {
            spec,
            index,
            access: AtomicU8::new(access as u8),
            session: Mutex::new(Session { tunnel, endpoint: None }),
        }
    }

    pub fn access(&self) -> Access {
        Access::from_u8(self.access.load(Ordering::Acquire))
    }

    /// Returns the previous access.
    pub fn set_access(&self, access: Access) -> Access {
        Access::from_u8(self.access.swap(access as u8, Ordering::AcqRel))
    }

    /// Sets `new` only if the access is still `current`; false otherwise.
    pub fn replace_access(&self, current: Access, new: Access) -> bool {
        self.access.compare_exchange(current as u8, new as u8, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The session; a poisoned lock (a panic elsewhere) still yields it.
    pub fn session(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cryptokey routing on receive: may this peer use `src` as its source?
    pub fn owns(&self, src: IpAddr) -> bool {
        self.spec.allowed_ips.iter().any(|n| n.contains(&src))
    }
}

/// 24 bits of index space.
const INDEX_SPACE: u32 = 1 << 24;

/// An immutable set of peers; a config reload builds a new one.
#[derive(Default)]
pub struct PeerSet {
    by_key: HashMap<[u8; 32], Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    by_device: HashMap<Arc<str>, Vec<Arc<Peer>>>,
    /// Host routes (/32, /128): the common case, one lookup.
    hosts: HashMap<IpAddr, Arc<Peer>>,
    /// Wider prefixes, longest first.
    nets: Vec<(IpNet, Arc<Peer>)>,
    /// Every peer in the order of its spec: walks are the same every run.
    order: Vec<Arc<Peer>>,
}

impl PeerSet {
    /// Builds the set for `specs`. A peer whose spec did not change keeps
    /// its session (no re-handshake); a new or changed one gets a fresh
    /// index from `next_index`. Returns the peers that left.
    pub fn build(
        specs: &[PeerSpec],
        previous: &PeerSet,
        gate: &Gate,
        next_index: &mut u32,
        access: impl Fn(&PeerSpec) -> Access,
    ) -> (PeerSet, Vec<Arc<Peer>>) {
        let mut set = PeerSet::default();
        for spec in specs {
            let peer = match previous.by_key.get(&spec.public_key) {
                Some(p) if p.spec == *spec => Arc::clone(p),
                _ => {
                    let index = loop {
                        let i = *next_index % INDEX_SPACE;
                        *next_index = next_index.wrapping_add(1);
                        if !previous.by_index.contains_key(&i) && !set.by_index.contains_key(&i) {
                            break i;
                        }
                    };
                    Arc::new(Peer::new(spec.clone(), index, gate, access(spec)))
                }
            };
            set.insert(peer);
        }
        set.nets.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
        let removed = previous.order.iter().filter(|p| !set.by_index.contains_key(&p.index)).map(Arc::clone).collect();
        (set, removed)
    }

    fn insert(&mut self, peer: Arc<Peer>) {
        for net in &peer.spec.allowed_ips {
            if net.prefix_len() == net.max_prefix_len() {
                self.hosts.insert(net.addr(), Arc::clone(&peer));
            } else {
                self.nets.push((*net, Arc::clone(&peer)));
            }
        }
        self.by_device.entry(Arc::clone(&peer.spec.device_id)).or_default().push(Arc::clone(&peer));
        self.by_index.insert(peer.index, Arc::clone(&peer));
        self.by_key.insert(peer.spec.public_key, Arc::clone(&peer));
        self.order.push(peer);
    }

    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Arc<Peer>> {
        self.by_key.get(key)
    }

    pub fn by_index(&self, index: u32) -> Option<&Arc<Peer>> {
        self.by_index.get(&index)
    }

    pub fn for_device(&self, device: &str) -> &[Arc<Peer>] {
        self.by_device.get(device).map_or(&[], Vec::as_slice)
    }

    /// The peer an inner packet to `dst` goes to.
    pub fn route(&self, dst: IpAddr) -> Option<&Arc<Peer>> {
        self.hosts.get(&dst).or_else(|| self.nets.iter().find(|(n, _)| n.contains(&dst)).map(|(_, p)| p))
    }

    /// The specs of every peer, to rebuild the set with one more.
    pub fn specs(&self) -> Vec<PeerSpec> {
        self.order.iter().map(|p| p.spec.clone()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.order.iter()
    }

    pub fn len(&self) -> usize {
        self.by_index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(n: u8, nets: &[&str]) -> PeerSpec {
        PeerSpec {
            device_id: format!("dev-{n}").into(),
            public_key: [n; 32],
            allowed_ips: nets.iter().map(|s| s.parse::<IpNet>().unwrap().trunc()).collect(),
            persistent_keepalive: None,
        }
    }

    /// A gate for the peers' sessions (its time is not used here).
    #[allow(clippy::disallowed_methods)]
    fn gate() -> Gate {
        Gate::new(&[7; 32], std::time::Instant::now())
    }

    #[test]
    fn lookups_and_longest_prefix() {
        let specs = [spec(1, &["10.0.0.2/32"]), spec(2, &["10.0.0.0/24"]), spec(3, &["10.0.0.0/16", "fd00::/64"])];
        let mut next = 1;
        let (set, removed) = PeerSet::build(&specs, &PeerSet::default(), &gate(), &mut next, |_| Access::Full);
        assert!(removed.is_empty());
        let key_of = |ip: &str| set.route(ip.parse().unwrap()).map(|p| p.spec.public_key[0]);
        assert_eq!(key_of("10.0.0.2"), Some(1));
        assert_eq!(key_of("10.0.0.3"), Some(2));
        assert_eq!(key_of("10.0.9.3"), Some(3));
        assert_eq!(key_of("fd00::9"), Some(3));
        assert_eq!(key_of("10.1.0.1"), None);
        let p = set.by_key(&[2; 32]).unwrap();
        assert!(Arc::ptr_eq(p, set.by_index(p.index).unwrap()));
        assert_eq!(set.for_device("dev-3").len(), 1);
        assert!(p.owns("10.0.0.200".parse().unwrap()) && !p.owns("10.0.1.1".parse().unwrap()));
    }

    #[test]
    fn a_reload_keeps_unchanged_sessions_and_reports_the_removed() {
        let mut next = 1;
        let a = [spec(1, &["10.0.0.2/32"]), spec(2, &["10.0.0.3/32"]), spec(3, &["10.0.0.4/32"])];
        let (old, _) = PeerSet::build(&a, &PeerSet::default(), &gate(), &mut next, |_| Access::Full);
        let b = [spec(1, &["10.0.0.2/32"]), spec(2, &["10.0.0.33/32"])];
        let (new, removed) = PeerSet::build(&b, &old, &gate(), &mut next, |_| Access::Full);
        assert!(Arc::ptr_eq(old.by_key(&[1; 32]).unwrap(), new.by_key(&[1; 32]).unwrap()));
        let (o2, n2) = (old.by_key(&[2; 32]).unwrap(), new.by_key(&[2; 32]).unwrap());
        assert!(!Arc::ptr_eq(o2, n2) && o2.index != n2.index, "a changed peer is a new session");
        let mut gone: Vec<u8> = removed.iter().map(|p| p.spec.public_key[0]).collect();
        gone.sort();
        assert_eq!(gone, vec![2, 3], "the old peer 2 and peer 3 left");
        assert!(new.by_index(old.by_key(&[3; 32]).unwrap().index).is_none());
    }

    proptest! {
        /// Routing agrees with the naive reference: among all peers' prefixes
        /// holding the address, the longest wins.
        #[test]
        fn route_matches_the_naive_reference(
            peers in proptest::collection::vec(proptest::collection::vec((0u32..16, 28u8..=32), 1..3), 1..8),
            probes in proptest::collection::vec(0u32..16, 1..20),
        ) {
            let mut seen = std::collections::HashSet::new();
            let specs: Vec<PeerSpec> = peers.iter().enumerate().map(|(i, nets)| PeerSpec {
                device_id: format!("d{i}").into(),
                public_key: [i as u8; 32],
                allowed_ips: nets.iter()
                    .map(|(a, l)| IpNet::new(IpAddr::from((0x0a00_0000 | a).to_be_bytes()), *l).unwrap().trunc())
                    .filter(|n| seen.insert(*n))
                    .collect(),
                persistent_keepalive: None,
            }).collect();
            let (set, _) = PeerSet::build(&specs, &PeerSet::default(), &gate(), &mut 1, |_| Access::Full);
            for a in probes {
                let ip = IpAddr::from((0x0a00_0000 | a).to_be_bytes());
                let naive = specs.iter()
                    .flat_map(|s| s.allowed_ips.iter().map(move |n| (n, s.public_key[0])))
                    .filter(|(n, _)| n.contains(&ip))
                    .max_by_key(|(n, _)| n.prefix_len())
                    .map(|(_, k)| k);
                prop_assert_eq!(set.route(ip).map(|p| p.spec.public_key[0]), naive);
            }
        }
    }
}
