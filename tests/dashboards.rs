//! The Grafana dashboard and the Prometheus alerting rules in docs/ (issue
//! 16) against the real binary: every metric they query is one warden
//! exports, and promtool (Debian's prometheus package) accepts the rules.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

const DOCS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs");

/// Every `warden_*` name in `text`, histogram series folded to their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("warden_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        names.insert(family.to_string());
        rest = &tail[end..];
    }
    names
}

/// The metric families a running warden exports, after one drift with a
/// remediation command (so the series labelled by action exist too).
fn exported() -> BTreeSet<String> {
    let dir = Warden::workdir();
    let w = Warden::start(&dir, &Setup::embedded());
    publish(w.mqtt, "devices/pos-0001/telemetry", &pos_report(1, serde_json::json!({"encrypted": false})));
    w.wait_verdict("pos-0001", "noncompliant");
    wait_for("the remediation command", Duration::from_secs(10), || {
        (w.get("/metrics")?.1.contains("warden_remediation_commands_total{")).then_some(())
    });
    let (_, body) = w.get("/metrics").unwrap();
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

#[test]
fn the_dashboard_is_valid_and_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(Path::new(DOCS).join("grafana/warden.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut exprs = String::new();
    for p in panels {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
        for t in targets {
            exprs.push_str(t["expr"].as_str().unwrap_or_else(|| panic!("panel {}: a target without expr", p["title"])));
            exprs.push('\n');
        }
    }
    let used = metric_names(&exprs);
    let exported = exported();
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "the dashboard queries metrics warden does not export: {missing:?}");
    for wanted in [
        "warden_devices",
        "warden_telemetry_messages_total",
        "warden_enforcement_seconds",
        "warden_radius_requests_total",
        "warden_coa_requests_total",
        "warden_wireguard_packets_total",
        "warden_wireguard_peers",
        "warden_telemetry_source_up",
        "warden_verdicts_held",
    ] {
        assert!(used.contains(wanted), "the dashboard shows {wanted}");
    }
}

#[test]
fn the_alerting_rules_pass_promtool_and_use_only_exported_metrics() {
    require("promtool", "prometheus");
    let rules = Path::new(DOCS).join("prometheus/alerts.yml");
    let out = std::process::Command::new("promtool").arg("check").arg("rules").arg(&rules).output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let used = metric_names(&std::fs::read_to_string(&rules).unwrap());
    let exported = exported();
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "the rules query metrics warden does not export: {missing:?}");
    for alert in [
        "WardenTelemetrySourceDown",
        "WardenVerdictsHeld",
        "WardenCircuitBreakerHolding",
        "WardenCoaTimeoutsRising",
        "WardenEnforcementSlow",
    ] {
        assert!(std::fs::read_to_string(&rules).unwrap().contains(alert), "{alert}");
    }
}
