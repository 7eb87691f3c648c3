//! Resident memory per device with 1,000,000 devices in the compliance
//! table (with its MAC, WireGuard-key and certificate indexes and deadlines).
//! `cargo bench --bench table_memory [-- DEVICES [KEEP_DIR]]` (target: <= 1 KiB/device).
//! With KEEP_DIR the snapshot is left there; `-- restore DIR` then times
//! (and lets a profiler watch) the restart's restore alone, `-- parse DIR`
//! the reading and parsing of the snapshot alone.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};
use warden::compliance::{Engine, Table};
use warden::policy::PolicySet;
use warden::telemetry::Report;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("statm rss");
    pages * 4096
}

/// A report shaped like PRODUCT.md's example, with per-device identities,
/// produced at `wall`.
fn report(i: u32, wall: i64) -> Report {
    let json = serde_json::json!({
        "seq": 1, "ts": warden::telemetry::report::format_rfc3339(wall), "os": "android", "os_version": "14.0.1",
        "security_patch": "2026-10-05", "encrypted": true, "passcode": true, "firewall": true,
        "rooted": false, "kiosk_mode": true, "apps_installed": ["com.acme.pos"],
        "apps_running": ["com.acme.pos"], "wifi_ssid": "ACME-STORE", "open_ports": [443],
        "mac_addresses": [format!("aa:bb:{:02x}:{:02x}:{:02x}:{:02x}", i >> 24, (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)],
        "wg_public_key": format!("{:0>43}=", i),
        "cert_identity": format!("pos-{i:07}"),
        "groups": ["pos", format!("store-{}", i % 500)], "agent_version": "3.2.0"
    });
    serde_json::from_value(json).expect("valid report")
}

/// The restore as warden starts (`warden::gateway::restore::table`, the
/// function `warden run` calls): the snapshot parsed and each device
/// settled on a reader thread, installed by the engine as chunks arrive,
/// the journal replayed after. Returns the seconds it took.
fn restore(dir: &std::path::Path, policies: PolicySet, expect: Option<usize>) -> f64 {
    let start = Instant::now();
    let forget = Duration::from_secs(90 * 86_400);
    // As warden sizes it; `TABLE_GROWS=1` measures a table grown as it fills.
    let table = match std::env::var_os("TABLE_GROWS") {
        Some(_) => Table::default(),
        None => Table::with_capacity(
            warden::compliance::snapshot::estimate(dir) + warden::compliance::journal::estimate(dir),
        ),
    };
    let mut restored = Engine::new(table, policies, Duration::from_secs(900)).with_forget_after(forget);
    let metrics = warden::metrics::Metrics::new();
    warden::gateway::restore::table(&mut restored, dir, forget, &metrics, true).expect("restored");
    let took = start.elapsed().as_secs_f64();
    assert_eq!(metrics.snapshot_bad_lines.get(), 0);
    if let Some(n) = expect {
        assert_eq!(restored.table().len(), n);
    }
    let [c, n, u] = restored.counts();
    println!(
        "  restored {} devices in {took:.2} s ({c} compliant, {n} noncompliant, {u} unknown)",
        restored.table().len()
    );
    took
}

fn main() {
    let shipped = || {
        PolicySet::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
            .expect("shipped policies")
    };
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.first().map(String::as_str) == Some("parse") {
        // The reader's share alone: read and parse every line, keep nothing.
        let dir = std::path::PathBuf::from(args.get(1).expect("parse DIR"));
        let start = Instant::now();
        let mut n = 0usize;
        warden::compliance::snapshot::stream(&dir, Vec::new(), |_, _| Some(()), |chunk| n += chunk.len())
            .expect("snapshot read");
        println!("  parsed {n} lines in {:.2} s", start.elapsed().as_secs_f64());
        return;
    }
    if args.first().map(String::as_str) == Some("restore") {
        let dir = std::path::PathBuf::from(args.get(1).expect("restore DIR"));
        restore(&dir, shipped(), None);
        return;
    }
    let n: u32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let keep = args.get(1).map(std::path::PathBuf::from);
    let policies = shipped();
    let before = rss_bytes();
    let mut engine = Engine::new(Table::default(), policies, Duration::from_secs(900));
    let start = Instant::now();
    let (now, wall) = (Instant::now(), warden::clock::wall_now());
    for i in 0..n {
        engine.handle_telemetry(&format!("pos-{i:07}"), report(i, wall), now, wall).expect("accepted");
        while engine.poll_event().is_some() {}
    }
    let took = start.elapsed();
    let after = rss_bytes();
    let per = (after - before) as f64 / f64::from(n);
    println!("table_memory: {n} devices (indexed by MAC, WireGuard key, certificate identity)");
    println!(
        "  inserted in {:.2} s ({:.0} reports/s, one thread, shipped policies)",
        took.as_secs_f64(),
        f64::from(n) / took.as_secs_f64()
    );
    println!("  RSS grew {:.0} MiB: {per:.0} bytes per device", (after - before) as f64 / 1048576.0);
    println!("  target <= 1024 bytes/device: {}", if per <= 1024.0 { "met" } else { "NOT met" });
    assert_eq!(engine.table().len(), n as usize);

    // The snapshot a restart resumes from: write, then read and restore.
    let dir = std::env::temp_dir().join(format!("warden-bench-snapshot-{}", std::process::id()));
    let start = Instant::now();
    let written = warden::compliance::snapshot::write(engine.table(), &dir).expect("snapshot written");
    let write_s = start.elapsed().as_secs_f64();
    let size = std::fs::metadata(warden::compliance::snapshot::path(&dir)).map(|m| m.len()).unwrap_or(0);
    journal_cost(&engine, &dir, n);
    let policies = engine.policies().clone();
    drop(engine);
    let read_s = restore(&dir, policies, Some(n as usize));
    assert_eq!(written, n as usize);
    println!(
        "  snapshot: {:.0} MiB, written in {write_s:.2} s, read and restored in {read_s:.2} s (streamed)",
        size as f64 / 1048576.0
    );
    match keep {
        Some(k) => {
            std::fs::rename(&dir, &k).expect("keep the snapshot");
            println!("  snapshot kept in {}", k.display());
        }
        None => drop(std::fs::remove_dir_all(&dir)),
    }
}

/// What journaling costs per report, as the compliance task and the commit
/// task pay it: each device's record built from the payload as received,
/// handed over in batches of 1,024 (the task's batch), each batch written
/// and synced with one `fdatasync` (group commit at its smallest groups).
fn journal_cost(engine: &Engine, dir: &std::path::Path, n: u32) {
    use warden::compliance::journal::Writer;
    let wall = warden::clock::wall_now();
    let payloads: Vec<Vec<u8>> = (0..1024).map(|i| serde_json::to_vec(&report(i, wall)).expect("report")).collect();
    let mut writer = Writer::create(dir, 1 << 40).expect("journal segment");
    let (mut build, mut store, mut bytes, mut batches) = (Duration::ZERO, Duration::ZERO, 0u64, 0u32);
    let mut i = 0usize;
    let started = Instant::now();
    engine.table().for_each(|d| {
        let t = Instant::now();
        writer.report_as_received(d, &payloads[i % payloads.len()]);
        build += t.elapsed();
        i += 1;
        if i.is_multiple_of(1024) || i == n as usize {
            let batch = writer.take();
            bytes += batch.bytes.len() as u64;
            let t = Instant::now();
            batch.write().expect("journal write");
            batch.file.sync_data().expect("journal sync");
            store += t.elapsed();
            batches += 1;
        }
    });
    let total = started.elapsed().as_secs_f64();
    println!(
        "  journal: {n} reports in {total:.2} s; building records {:.2} us/report (compliance task), \
         write + fdatasync {:.2} us/report in {batches} batches of 1,024 ({:.2} ms/batch), {:.0} bytes/report",
        build.as_secs_f64() * 1e6 / f64::from(n),
        store.as_secs_f64() * 1e6 / f64::from(n),
        store.as_secs_f64() * 1e3 / f64::from(batches),
        bytes as f64 / f64::from(n)
    );
    println!(
        "  at 80,000 reports/s: {:.0} % of one core to build records, {:.0} MB/s to disk",
        build.as_secs_f64() / f64::from(n) * 80_000.0 * 100.0,
        bytes as f64 / f64::from(n) * 80_000.0 / 1e6
    );
    let _ = warden::compliance::journal::remove_through(dir, u64::MAX);
}

/// The allocator the warden binary uses (src/main.rs), so memory and time
/// are measured as warden pays them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
