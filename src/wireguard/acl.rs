//! The compliance ACL: which inner packets a peer's current access lets
//! through. A pure function of (access, remediation rules, flow, direction),
//! evaluated on every packet in both directions.

use super::packet::{Flow, TCP, UDP};
use ipnet::IpNet;
use std::net::IpAddr;

/// What a peer may do now: the one access model's value, mapped here to
/// the ACL (`Full` forwards, `Quarantine` reaches remediation only, `Deny`
/// drops everything).
pub use crate::compliance::Access;

/// Which way a packet goes through the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Decrypted from the peer, towards the network: the remediation rule
    /// is matched against its destination.
    FromPeer,
    /// From the network, to be encrypted for the peer: matched against its
    /// source (the remediation host answering).
    ToPeer,
}

/// A remediation destination: a network, optionally one TCP/UDP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub net: IpNet,
    pub port: Option<u16>,
}

impl Rule {
    /// `10.99.0.1/32`, `203.0.113.10/32:443`, `fd00::/64`, `[fd00::1/128]:443`;
    /// a bare address is a host route.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let bad = || {
            format!("remediation {t:?}: write CIDR or CIDR:port, e.g. \"203.0.113.10/32:443\" or \"[fd00::1/128]:443\"")
        };
        let (net, port) = if let Some(rest) = t.strip_prefix('[') {
            let (net, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad()),
            };
            (net, port)
        } else if t.matches(':').count() == 1 {
            let (net, port) = t.split_once(':').ok_or_else(bad)?;
            (net, Some(port))
        } else {
            (t, None)
        };
        let net = super::config::parse_net(net).map_err(|_| bad())?.trunc();
        let port = match port {
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?),
            None => None,
        };
        Ok(Rule { net, port })
    }

    fn matches(&self, addr: IpAddr, proto: u8, port: Option<u16>) -> bool {
        // The port first: a compare, where the prefix test costs ~10 ns.
        let port_ok = match self.port {
            None => true,
            Some(p) => (proto == TCP || proto == UDP) && port == Some(p),
        };
        port_ok && self.net.contains(&addr)
    }
}

/// Does `access` let this packet through in `direction`?
pub fn permits(access: Access, rules: &[Rule], flow: &Flow, direction: Direction) -> bool {
    match access {
        Access::Full => true,
        Access::Deny => false,
        Access::Quarantine => {
            let (addr, port) = match direction {
                Direction::FromPeer => (flow.dst, flow.dst_port),
                Direction::ToPeer => (flow.src, flow.src_port),
            };
            rules.iter().any(|r| r.matches(addr, flow.proto, port))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn flow(src: [u8; 4], dst: [u8; 4], proto: u8, sport: Option<u16>, dport: Option<u16>) -> Flow {
        Flow { src: src.into(), dst: dst.into(), proto, src_port: sport, dst_port: dport }
    }

    #[test]
    fn rules_parse() {
        assert_eq!(Rule::parse("10.99.0.1/32").unwrap(), Rule { net: "10.99.0.1/32".parse().unwrap(), port: None });
        assert_eq!(Rule::parse("203.0.113.10/32:443").unwrap().port, Some(443));
        assert_eq!(Rule::parse("10.0.0.7").unwrap().net, "10.0.0.7/32".parse::<IpNet>().unwrap());
        assert_eq!(Rule::parse("fd00::/64").unwrap().port, None);
        assert_eq!(Rule::parse("[fd00::1/128]:8443").unwrap().port, Some(8443));
        assert_eq!(Rule::parse("10.1.2.3/8").unwrap().net, "10.0.0.0/8".parse::<IpNet>().unwrap());
        for bad in ["", "10.0.0.1/33", "10.0.0.1:0", "10.0.0.1:http", "[fd00::1", "[fd00::1]x", "host:443"] {
            assert!(Rule::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quarantine_reaches_only_remediation_both_ways() {
        let rules = [Rule::parse("10.99.0.1/32").unwrap(), Rule::parse("203.0.113.10/32:443").unwrap()];
        let peer = [10, 99, 0, 2];
        let ping_gw = flow(peer, [10, 99, 0, 1], 1, None, None);
        let https = flow(peer, [203, 0, 113, 10], TCP, Some(5000), Some(443));
        let ssh = flow(peer, [203, 0, 113, 10], TCP, Some(5000), Some(22));
        let other = flow(peer, [198, 51, 100, 1], UDP, Some(5000), Some(53));
        let reply = flow([203, 0, 113, 10], peer, TCP, Some(443), Some(5000));
        let r = Access::Quarantine;
        assert!(permits(r, &rules, &ping_gw, Direction::FromPeer));
        assert!(permits(r, &rules, &https, Direction::FromPeer));
        assert!(!permits(r, &rules, &ssh, Direction::FromPeer));
        assert!(!permits(r, &rules, &other, Direction::FromPeer));
        assert!(permits(r, &rules, &reply, Direction::ToPeer));
        assert!(!permits(r, &rules, &flow([198, 51, 100, 1], peer, UDP, Some(53), Some(5000)), Direction::ToPeer));
        assert!(permits(Access::Full, &rules, &other, Direction::FromPeer));
        assert!(!permits(Access::Deny, &rules, &ping_gw, Direction::FromPeer));
    }

    /// The naive reference: a rule matches when every byte of the address
    /// under the prefix is equal and the port, if any, is the flow's.
    fn reference(access: Access, rules: &[(u32, u8, Option<u16>)], f: &Flow, dir: Direction) -> bool {
        let (addr, port) = match dir {
            Direction::FromPeer => (f.dst, f.dst_port),
            Direction::ToPeer => (f.src, f.src_port),
        };
        let IpAddr::V4(a) = addr else { return false };
        match access {
            Access::Full => true,
            Access::Deny => false,
            Access::Quarantine => rules.iter().any(|(net, len, p)| {
                let mask = if *len == 0 { 0 } else { u32::MAX << (32 - u32::from(*len)) };
                (u32::from(a) & mask) == (net & mask)
                    && p.is_none_or(|p| (f.proto == TCP || f.proto == UDP) && port == Some(p))
            }),
        }
    }

    proptest! {
        #[test]
        fn matches_the_reference(
            rules in proptest::collection::vec((any::<u32>(), 0u8..=32, proptest::option::of(1u16..4)), 0..5),
            src in any::<u32>(), dst in any::<u32>(), proto in prop_oneof![Just(1u8), Just(TCP), Just(UDP)],
            sport in 1u16..4, dport in 1u16..4, access in 0u8..3, to_peer in any::<bool>(),
        ) {
            // Small port and address spaces make matches common.
            let (src, dst) = (src & 0xff00_00ff, dst & 0xff00_00ff);
            let ported = proto != 1;
            let f = Flow { src: IpAddr::from(src.to_be_bytes()), dst: IpAddr::from(dst.to_be_bytes()), proto,
                src_port: ported.then_some(sport), dst_port: ported.then_some(dport) };
            let rs: Vec<Rule> = rules.iter().map(|(n, l, p)| Rule {
                net: IpNet::new(IpAddr::from((n & 0xff00_00ff).to_be_bytes()), *l).unwrap().trunc(), port: *p }).collect();
            let naive: Vec<_> = rules.iter().map(|(n, l, p)| (n & 0xff00_00ff, *l, *p)).collect();
            let dir = if to_peer { Direction::ToPeer } else { Direction::FromPeer };
            let access = Access::from_u8(access);
            prop_assert_eq!(permits(access, &rs, &f, dir), reference(access, &naive, &f, dir));
        }
    }
}
