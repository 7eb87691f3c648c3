//! A scripted history with known drifts, remediation times, overrides and
//! enforcement, and the report's numbers checked in every format.

use super::*;
use serde_json::json;

const H: UnixMillis = 3600 * 1000;
/// 2026-11-01T00:00:00Z.
const T0: UnixMillis = 1_793_491_200_000;

fn history() -> Vec<String> {
    let mut chain = crate::audit::Chain::default();
    let mut lines = Vec::new();
    let mut add = |at: UnixMillis, kind: &str, device: &str, data: serde_json::Value| {
        lines.push(chain.append(at, kind, Some(device), data));
    };
    let changed = |to: &str, failed: &[&str], groups: &[&str]| json!({"from": "x", "to": to, "cause": "telemetry", "failed_rules": failed, "quarantine": to == "noncompliant", "member_of": groups});
    // Before the window.
    add(T0 + H, "warden.verdict.changed", "d1", changed("compliant", &[], &["pos"]));
    add(T0 + 2 * H, "warden.verdict.changed", "d2", changed("noncompliant", &["pos-baseline/not-rooted"], &[]));
    // Day 1 of the window.
    add(
        DAY + T0 + H,
        "warden.verdict.changed",
        "d1",
        changed("noncompliant", &["pos-baseline/disk-encrypted"], &["pos"]),
    );
    add(
        DAY + T0 + 2 * H,
        "warden.remediation.completed",
        "d1",
        json!({"rule": "pos-baseline/disk-encrypted", "took_s": 3600, "took_ms": 3_600_000}),
    );
    add(DAY + T0 + 2 * H, "warden.verdict.changed", "d1", changed("compliant", &[], &["pos"]));
    add(
        DAY + T0 + 3 * H,
        "warden.verdict.changed",
        "d3",
        changed("noncompliant", &["pos-baseline/disk-encrypted", "byod-laptop/x"], &[]),
    );
    add(
        DAY + T0 + 4 * H,
        "warden.remediation.completed",
        "d3",
        json!({"rule": "pos-baseline/disk-encrypted", "took_s": 600}),
    );
    // Day 2.
    add(2 * DAY + T0 + H, "warden.remediation.escalated", "d2", json!({"rule": "pos-baseline/not-rooted"}));
    let until = |t| crate::telemetry::report::format_rfc3339(t);
    add(
        2 * DAY + T0 + 2 * H,
        "warden.override.set",
        "d2",
        json!({"mode": "exempt", "by": "alice", "reason": "ticket 1", "until": until(T0 + 10 * DAY)}),
    );
    add(
        2 * DAY + T0 + 3 * H,
        "warden.override.set",
        "d1",
        json!({"mode": "quarantine", "by": "bob", "reason": "x", "until": until(2 * DAY + T0 + 5 * H)}),
    );
    add(
        2 * DAY + T0 + 4 * H,
        "warden.enforcement.applied",
        "d2",
        json!({"plane": "radius", "action": "disconnect", "result": "ack"}),
    );
    add(
        2 * DAY + T0 + 4 * H,
        "warden.enforcement.applied",
        "d1",
        json!({"plane": "wireguard", "from": "full", "to": "quarantine", "peer": "k"}),
    );
    add(2 * DAY + T0 + 5 * H, "warden.override.expired", "d1", json!({"mode": "quarantine"}));
    lines.push(chain.checkpoint(2 * DAY + T0 + 6 * H, None));
    // After the window: not counted.
    lines.push(chain.append(
        4 * DAY + T0,
        "warden.verdict.changed",
        Some("d4"),
        changed("noncompliant", &["pos-baseline/x"], &[]),
    ));
    lines
}

fn report(policy: Option<&str>, group: Option<&str>) -> Report {
    let mut b = Builder::new(Options {
        since: T0 + DAY,
        until: T0 + 3 * DAY,
        policy: policy.map(str::to_string),
        group: group.map(str::to_string),
        step: DAY,
    });
    for l in history() {
        b.line(l.as_bytes());
    }
    b.line(b"{\"seq\":99,\"at\":\"garbage");
    b.finish()
}

fn point(at: UnixMillis, c: u64, n: u64, u: u64) -> Point {
    Point { at: crate::telemetry::report::format_rfc3339(at), compliant: c, noncompliant: n, unknown: u }
}

#[test]
fn the_numbers_of_a_scripted_history() {
    let r = report(None, None);
    assert_eq!((r.devices, r.changes, r.unreadable), (3, 3, 1));
    assert_eq!(r.series, vec![point(T0 + DAY, 1, 1, 0), point(T0 + 2 * DAY, 1, 2, 0), point(T0 + 3 * DAY, 1, 2, 0)]);
    let rule = |k: &str| r.rules.iter().find(|s| s.rule == k).cloned().unwrap_or_else(|| panic!("{k}: {:?}", r.rules));
    let disk = rule("pos-baseline/disk-encrypted");
    assert_eq!((disk.drifts, disk.remediated, disk.escalations), (2, 2, 0));
    assert_eq!((disk.ttr_median_s, disk.ttr_p90_s), (Some(600.0), Some(3600.0)));
    let rooted = rule("pos-baseline/not-rooted");
    assert_eq!((rooted.drifts, rooted.escalations), (0, 1), "its drift was before the window");
    assert_eq!(rule("byod-laptop/x").drifts, 1);
    assert!(r.rules.iter().all(|s| s.rule != "pos-baseline/x"), "after the window");
    let failing: Vec<(&str, &str)> = r.failing.iter().map(|f| (f.device.as_str(), f.since.as_str())).collect();
    assert_eq!(failing, vec![("d2", "2026-11-01T02:00:00Z"), ("d3", "2026-11-02T03:00:00Z")]);
    assert_eq!(r.failing[1].failed_rules, vec!["pos-baseline/disk-encrypted", "byod-laptop/x"]);
    assert_eq!(r.overrides.len(), 1, "d1's override expired");
    assert_eq!((r.overrides[0].device.as_str(), r.overrides[0].by.as_str()), ("d2", "alice"));
    let enforcement: Vec<(&str, &str, &str, u64)> =
        r.enforcement.iter().map(|e| (e.plane.as_str(), e.action.as_str(), e.result.as_str(), e.count)).collect();
    assert_eq!(enforcement, vec![("radius", "disconnect", "ack", 1), ("wireguard", "to quarantine", "applied", 1)]);
}

#[test]
fn a_policy_or_a_group_narrows_it() {
    let r = report(Some("byod-laptop"), None);
    assert_eq!(r.rules.iter().map(|s| s.rule.as_str()).collect::<Vec<_>>(), vec!["byod-laptop/x"]);
    assert_eq!(r.failing.len(), 1);
    assert_eq!(r.failing[0].failed_rules, vec!["byod-laptop/x"]);
    assert_eq!(r.series[0], point(T0 + DAY, 2, 0, 0), "failing another policy's rule is compliant here");
    assert_eq!(r.series[1], point(T0 + 2 * DAY, 2, 1, 0));

    let r = report(None, Some("pos"));
    assert_eq!(r.devices, 1);
    assert_eq!(r.changes, 2);
    assert!(r.failing.is_empty());
    assert_eq!(r.enforcement.len(), 1, "only d1's");
}

#[test]
fn every_format_carries_the_same_numbers() {
    let r = report(None, None);
    let v: serde_json::Value = serde_json::from_str(&render::json(&r)).unwrap();
    assert_eq!(v["rules"][1]["rule"], "pos-baseline/disk-encrypted");
    assert_eq!(v["rules"][1]["ttr_median_s"], 600.0);
    assert_eq!(v["failing"][0]["device"], "d2");

    let csv = render::csv(&r);
    assert!(csv.contains("rules,pos-baseline/disk-encrypted,2,2,600,3600,0\r\n"), "{csv}");
    assert!(csv.contains("series,2026-11-03T00:00:00Z,1,2,0\r\n"), "{csv}");
    assert!(csv.contains("failing,d3,2026-11-02T03:00:00Z,pos-baseline/disk-encrypted byod-laptop/x\r\n"), "{csv}");
    assert!(csv.contains("overrides,d2,exempt,alice,ticket 1,"), "{csv}");
    assert!(csv.contains("enforcement,radius,disconnect,ack,1\r\n"), "{csv}");

    let html = render::html(&r);
    assert!(
        html.contains(
            "<td>pos-baseline/disk-encrypted</td><td>2</td><td>2</td><td>10 min</td><td>60 min</td><td>0</td>"
        ),
        "{html}"
    );
    assert!(html.contains("Devices noncompliant now (2)"));
    assert!(html.contains("<svg"), "an inline chart");
    for external in ["src=", "href=", "url(", "@import", "<script"] {
        assert!(!html.contains(external), "the page requests nothing: {external}");
    }
}

#[test]
fn csv_and_html_escape_what_devices_send() {
    let mut r = report(None, None);
    r.failing[0].device = "=HYPERLINK(\"x\"),<b>".into();
    let csv = render::csv(&r);
    assert!(csv.contains("\"'=HYPERLINK(\"\"x\"\"),<b>\""), "{csv}");
    let html = render::html(&r);
    assert!(html.contains("=HYPERLINK(&quot;x&quot;),&lt;b&gt;"));
}
