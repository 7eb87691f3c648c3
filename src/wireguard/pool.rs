//! Tunnel addresses for peers that come from telemetry: a device that
//! reported its WireGuard key gets the lowest free address of the pool on
//! its first handshake, and keeps it (the assignments are saved in
//! `state_dir` and read back at start).

use ipnet::IpNet;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

pub struct Pool {
    net: IpNet,
    /// Never handed out: the gateway's own address, configured peers' hosts.
    reserved: HashSet<IpAddr>,
    by_device: BTreeMap<Arc<str>, IpAddr>,
    taken: HashSet<IpAddr>,
    /// Changed since last saved.
    pub dirty: bool,
}

/// Addresses scanned per assignment at most: a huge IPv6 pool is not
/// walked to its end looking for a hole.
const SCAN_LIMIT: usize = 1 << 20;

impl Pool {
    pub fn new(net: IpNet, reserved: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            net: net.trunc(),
            reserved: reserved.into_iter().collect(),
            by_device: BTreeMap::new(),
            taken: HashSet::new(),
            dirty: false,
        }
    }

    /// The device's address, assigned now if it has none. `None` when the
    /// pool is full.
    pub fn assign(&mut self, device: &Arc<str>) -> Option<IpAddr> {
        if let Some(a) = self.by_device.get(device) {
            return Some(*a);
        }
        let network = self.net.network();
        let broadcast = self.net.broadcast();
        let free = self.net.hosts().take(SCAN_LIMIT).find(|a| {
            // IPv4 `hosts()` already skips network and broadcast; for IPv6
            // the subnet-router anycast address (all zeros) is skipped here.
            *a != network && *a != broadcast && !self.reserved.contains(a) && !self.taken.contains(a)
        })?;
        self.by_device.insert(Arc::clone(device), free);
        self.taken.insert(free);
        self.dirty = true;
        Some(free)
    }

    /// Every assignment, as (device, host route).
    pub fn assignments(&self) -> impl Iterator<Item = (&Arc<str>, IpNet)> {
        self.by_device.iter().map(|(d, a)| (d, IpNet::from(*a)))
    }

    /// One `device address` pair per line.
    pub fn save(&self) -> String {
        self.by_device.iter().map(|(d, a)| format!("{d} {a}\n")).collect()
    }

    /// Reads what [`Pool::save`] wrote; lines that do not parse, or whose
    /// address is outside the pool, reserved or already taken, are skipped
    /// and counted.
    pub fn load(&mut self, text: &str) -> usize {
        let mut skipped = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let parsed = line.split_once(' ').and_then(|(d, a)| Some((d, a.trim().parse::<IpAddr>().ok()?)));
            match parsed {
                Some((d, a))
                    if self.net.contains(&a)
                        && !self.reserved.contains(&a)
                        && !self.taken.contains(&a)
                        && !d.is_empty() =>
                {
                    self.by_device.insert(d.into(), a);
                    self.taken.insert(a);
                }
                _ => skipped += 1,
            }
        }
        skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(s: &str) -> Arc<str> {
        s.into()
    }

    #[test]
    fn lowest_free_stable_and_bounded() {
        let net: IpNet = "10.99.0.128/30".parse().unwrap();
        let mut p = Pool::new(net, ["10.99.0.129".parse().unwrap()]);
        assert_eq!(p.assign(&dev("a")), Some("10.99.0.130".parse().unwrap()), "reserved and network skipped");
        assert_eq!(p.assign(&dev("a")), Some("10.99.0.130".parse().unwrap()), "the same device keeps it");
        assert_eq!(p.assign(&dev("b")), None, "a /30 has two hosts, one reserved: full");
        assert!(p.dirty);
    }

    #[test]
    fn saved_assignments_come_back_and_bad_lines_are_skipped() {
        let net: IpNet = "fd00::/120".parse().unwrap();
        let mut p = Pool::new(net, []);
        let a = p.assign(&dev("laptop-1")).unwrap();
        let b = p.assign(&dev("laptop-2")).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, "fd00::".parse::<IpAddr>().unwrap());
        let text = p.save() + "garbage\nlaptop-3 10.0.0.1\nlaptop-4 " + &a.to_string() + "\n";
        let mut q = Pool::new(net, []);
        assert_eq!(q.load(&text), 3, "garbage, outside the pool, a duplicate address");
        assert_eq!(q.assign(&dev("laptop-2")), Some(b));
        assert!(!q.dirty);
        let c = q.assign(&dev("laptop-5")).unwrap();
        assert!(c != a && c != b);
    }
}
