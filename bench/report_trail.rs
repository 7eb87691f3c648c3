//! Writes a synthetic audit trail for bench/report.py: DEVICES devices and
//! EVENTS entries spread over DAYS days ending now, in 64 MiB files as
//! warden writes them, with a real hash chain.
//!
//!   report_trail DIR DEVICES EVENTS DAYS
//!
//! Most entries are verdict changes (each device flips between compliant
//! and noncompliant on one of four rules); one in ten is a remediation
//! completion, one in twenty an enforcement outcome, one in a thousand an
//! override.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

use serde_json::json;
use std::io::Write;

const RULES: [&str; 4] =
    ["pos-baseline/not-rooted", "pos-baseline/disk-encrypted", "pos-baseline/min-os", "byod-laptop/disk-encrypted"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg =
        |i: usize| -> u64 { args.get(i).and_then(|a| a.parse().ok()).expect("report_trail DIR DEVICES EVENTS DAYS") };
    let dir = std::path::PathBuf::from(args.get(1).expect("DIR"));
    let (devices, events, days) = (arg(2), arg(3), arg(4) as i64);
    std::fs::create_dir_all(&dir).expect("dir");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let start = now - days * 24 * 3600 * 1000;
    let step = (now - start) as f64 / events as f64;
    let mut chain = warden::audit::Chain::default();
    let mut failing = vec![false; devices as usize];
    let (mut segment, mut size) = (1u64, 0u64);
    let open = |n: u64| {
        std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(dir.join(format!("audit-{n}.jsonl"))).expect("file"),
        )
    };
    let mut out = open(segment);
    let mut rng = fastrand::Rng::with_seed(7);
    let started = std::time::Instant::now();
    for i in 0..events {
        let at = start + (i as f64 * step) as i64;
        let d = rng.u64(..devices) as usize;
        let device = format!("dev-{d:07}");
        let rule = RULES[d % RULES.len()];
        let line = match i % 20 {
            0 | 10 => chain.append(at, "warden.remediation.completed", Some(&device), json!({"rule": rule, "took_s": rng.u64(1..3600), "took_ms": rng.u64(1000..3_600_000), "escalated": false})),
            5 => chain.append(at, "warden.enforcement.applied", Some(&device), json!({"plane": "radius", "action": "disconnect", "result": "ack"})),
            7 if i % 1000 == 7 => chain.append(at, "warden.override.set", Some(&device), json!({"mode": "exempt", "by": "admin", "reason": "bench", "until": warden::telemetry::report::format_rfc3339(now + 3_600_000)})),
            _ => {
                failing[d] = !failing[d];
                let (to, failed) = if failing[d] { ("noncompliant", vec![rule]) } else { ("compliant", vec![]) };
                chain.append(at, "warden.verdict.changed", Some(&device), json!({"from": "x", "to": to, "cause": "telemetry", "failed_rules": failed, "quarantine": failing[d], "member_of": if d.is_multiple_of(2) { vec!["pos"] } else { vec![] }}))
            }
        };
        out.write_all(line.as_bytes()).expect("write");
        out.write_all(b"\n").expect("write");
        size += line.len() as u64 + 1;
        if i % 1000 == 999 {
            let c = chain.checkpoint(at, None);
            out.write_all(c.as_bytes()).expect("write");
            out.write_all(b"\n").expect("write");
            size += c.len() as u64 + 1;
        }
        if size >= 64 << 20 {
            out.flush().expect("flush");
            segment += 1;
            size = 0;
            out = open(segment);
        }
    }
    out.flush().expect("flush");
    println!(
        "{events} entries for {devices} devices over {days} days in {segment} files, written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
