//! What the compliance ACL costs per packet, next to what a packet costs
//! the WireGuard plane: `cargo bench --bench wg_acl`.
//!
//! Times `packet::parse` + `acl::permits` for a 1420-byte TCP packet under
//! each access, with 10 remediation rules where only the last matches (the
//! worst case for a quarantined peer), and prints it as a share of the CPU
//! the gateway spends per packet: `CORE_SECONDS_PER_GBIT` (first argument,
//! default 0.53, bench/wireguard.py's median) × 1420 × 8 bits.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::Instant;
use warden::wireguard::acl::{Access, Direction, Rule, permits};
use warden::wireguard::packet;

fn tcp_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 99, 0, 2]);
    p[16..20].copy_from_slice(&[10, 99, 0, 1]);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[32] = 0x50;
    p
}

fn main() {
    let cpu_per_gbit: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(0.53);
    let per_packet_ns = cpu_per_gbit * 1420.0 * 8.0;
    let mut rules: Vec<Rule> = (100..109).map(|i| Rule::parse(&format!("10.{i}.0.0/16:443")).unwrap()).collect();
    rules.push(Rule::parse("10.99.0.1/32").unwrap());
    let pkt = tcp_packet(1420);
    const N: u32 = 20_000_000;
    for (name, access) in [("forward", Access::Full), ("quarantined, last of 10 rules", Access::Quarantine)] {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            let mut passed = 0u32;
            for _ in 0..N {
                let flow = packet::parse(black_box(&pkt)).unwrap();
                passed += u32::from(permits(black_box(access), &rules, &flow, Direction::FromPeer));
            }
            assert_eq!(passed, N);
            best = best.min(start.elapsed().as_secs_f64() * 1e9 / f64::from(N));
        }
        println!(
            "{name:32} parse + ACL {best:6.1} ns/packet = {:.2}% of the gateway's {per_packet_ns:.0} ns of CPU per 1420-byte packet",
            100.0 * best / per_packet_ns
        );
    }
}
