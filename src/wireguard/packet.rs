//! The inner (decrypted) IP packet: just enough of its headers for
//! cryptokey routing and the compliance ACL. Parsed with etherparse, which
//! checks every length against the slice; anything it refuses is dropped.

use etherparse::{IpNumber, IpSlice};
use std::net::IpAddr;

/// The addresses, protocol and (when present) ports of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The IP protocol number (for IPv6, of the payload after extension headers).
    pub proto: u8,
    /// TCP/UDP ports; `None` for other protocols and for fragments, where
    /// the transport header is absent or cannot be trusted to be whole.
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// Parses an IPv4 or IPv6 packet; `None` when it is malformed (bad version,
/// a header or total length that does not fit the bytes, a truncated
/// TCP/UDP header).
pub fn parse(packet: &[u8]) -> Option<Flow> {
    let ip = IpSlice::from_slice(packet).ok()?;
    let payload = ip.payload();
    let proto = payload.ip_number;
    let (src_port, dst_port) = if (proto == IpNumber::TCP || proto == IpNumber::UDP) && !payload.fragmented {
        let p = payload.payload;
        let need = if proto == IpNumber::TCP { 20 } else { 8 };
        if p.len() < need {
            return None;
        }
        (Some(u16::from_be_bytes([p[0], p[1]])), Some(u16::from_be_bytes([p[2], p[3]])))
    } else {
        (None, None)
    };
    Some(Flow { src: ip.source_addr(), dst: ip.destination_addr(), proto: proto.0, src_port, dst_port })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An IPv4 packet with a TCP/UDP header (ports) or an ICMP echo.
    pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let l4 = match proto {
            TCP => 20,
            UDP => 8,
            _ => 8,
        };
        let total = 20 + l4;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        if proto == TCP || proto == UDP {
            p[20..22].copy_from_slice(&sport.to_be_bytes());
            p[22..24].copy_from_slice(&dport.to_be_bytes());
        }
        if proto == TCP {
            p[32] = 0x50;
        }
        if proto == UDP {
            p[24..26].copy_from_slice(&8u16.to_be_bytes());
        }
        let sum = checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p
    }

    fn checksum(h: &[u8]) -> u16 {
        let mut s: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn tcp_udp_icmp() {
        let f = parse(&ipv4([10, 0, 0, 2], [10, 0, 0, 1], TCP, 40000, 443)).unwrap();
        assert_eq!((f.proto, f.src_port, f.dst_port), (TCP, Some(40000), Some(443)));
        assert_eq!(f.dst, IpAddr::from([10, 0, 0, 1]));
        let f = parse(&ipv4([10, 0, 0, 2], [10, 0, 0, 1], UDP, 5353, 53)).unwrap();
        assert_eq!(f.dst_port, Some(53));
        let f = parse(&ipv4([10, 0, 0, 2], [10, 0, 0, 1], 1, 0, 0)).unwrap();
        assert_eq!((f.proto, f.dst_port), (1, None));
    }

    #[test]
    fn ipv6_udp() {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        p[6] = UDP;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p[40..42].copy_from_slice(&1000u16.to_be_bytes());
        p[42..44].copy_from_slice(&53u16.to_be_bytes());
        let f = parse(&p).unwrap();
        assert_eq!((f.src, f.dst_port), ("fd00::2".parse().unwrap(), Some(53)));
    }

    #[test]
    fn malformed_shapes_are_refused() {
        let good = ipv4([10, 0, 0, 2], [10, 0, 0, 1], TCP, 1, 2);
        assert!(parse(&[]).is_none());
        assert!(parse(&[0x45]).is_none());
        assert!(parse(&good[..30]).is_none(), "truncated TCP header");
        let mut v = good.clone();
        v[0] = 0x55;
        assert!(parse(&v).is_none(), "IP version 5");
        let mut v = good.clone();
        v[2..4].copy_from_slice(&400u16.to_be_bytes());
        assert!(parse(&v).is_none(), "total length beyond the bytes");
        let mut v = good;
        v[0] = 0x4f;
        assert!(parse(&v).is_none(), "IHL beyond the bytes");
    }
}
