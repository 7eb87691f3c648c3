//! Policy evaluations per second on one core, for a 15-rule policy.
//! `cargo bench --bench policy_eval` (target: >= 1,000,000 / s / core).

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use warden::policy::{Policy, PolicySet, decide};
use warden::telemetry::Report;

const POLICY: &str = r#"
name = "bench-15"
severity = "critical"
applies_to = { groups = ["pos"] }
[[rules]]
id = "r1"
check = { attr = "encrypted", eq = true }
[[rules]]
id = "r2"
check = { attr = "rooted", eq = false }
[[rules]]
id = "r3"
check = { attr = "passcode", eq = true }
[[rules]]
id = "r4"
check = { attr = "firewall", ne = false }
[[rules]]
id = "r5"
check = { attr = "kiosk_mode", eq = true }
[[rules]]
id = "r6"
check = { attr = "os", one_of = ["android", "ios"] }
[[rules]]
id = "r7"
check = { attr = "os_version", version_gte = "14.0" }
[[rules]]
id = "r8"
check = { attr = "agent_version", version_lt = "9.0" }
[[rules]]
id = "r9"
check = { attr = "apps_running", contains = "com.acme.pos" }
[[rules]]
id = "r10"
check = { attr = "apps_installed", not_contains = "com.termux" }
[[rules]]
id = "r11"
check = { attr = "open_ports", subset_of = [443, 8443] }
[[rules]]
id = "r12"
check = { attr = "wifi_ssid", one_of = ["ACME-STORE", "ACME-STORE-5G"] }
[[rules]]
id = "r13"
check = { attr = "security_patch", within = "90days" }
[[rules]]
id = "r14"
check = { attr = "cert_identity", present = true }
[[rules]]
id = "r15"
check = { attr = "attributes.battery", gte = 20 }
"#;

const NOW: i64 = 1_795_342_500_000; // 2026-11-22T10:15:00Z

fn report(encrypted: bool) -> Report {
    let json = serde_json::json!({
        "seq": 1, "ts": "2026-11-22T10:15:00Z", "os": "android", "os_version": "14.0.1",
        "security_patch": "2026-10-05", "encrypted": encrypted, "passcode": true, "firewall": true,
        "rooted": false, "kiosk_mode": true, "apps_installed": ["com.acme.pos", "com.acme.scanner"],
        "apps_running": ["com.acme.pos"], "wifi_ssid": "ACME-STORE", "open_ports": [443],
        "cert_identity": "pos-0001", "groups": ["pos", "store-17"], "agent_version": "3.2.0",
        "attributes": {"battery": 80}
    });
    serde_json::from_value(json).expect("valid report")
}

fn measure(set: &PolicySet, r: &Report) -> f64 {
    let n = 2_000_000u32;
    let start = Instant::now();
    for _ in 0..n {
        black_box(decide(black_box(set), black_box(r), NOW));
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let policy = Policy::parse(Path::new("bench-15.toml"), POLICY).expect("valid policy");
    assert_eq!(policy.rules.len(), 15);
    let set = PolicySet { policies: vec![Arc::new(policy)], ..Default::default() };
    let ok = report(true);
    let bad = report(false);
    assert!(decide(&set, &ok, NOW).compliant(), "the compliant report must pass all 15 rules");
    assert_eq!(decide(&set, &bad, NOW).failures.len(), 1);
    let runs = 7;
    let compliant = median((0..runs).map(|_| measure(&set, &ok)).collect());
    let failing = median((0..runs).map(|_| measure(&set, &bad)).collect());
    println!("policy_eval: 15 rules, one core, median of {runs} runs of 2M evaluations");
    println!("  compliant report:        {:>12.0} evaluations/s  ({:.0} ns each)", compliant, 1e9 / compliant);
    println!("  one failing rule:        {:>12.0} evaluations/s  ({:.0} ns each)", failing, 1e9 / failing);
    println!("  target >= 1,000,000/s:   {}", if compliant.min(failing) >= 1e6 { "met" } else { "NOT met" });
}
