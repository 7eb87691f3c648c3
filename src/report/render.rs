//! A [`Report`] as JSON, CSV or one self-contained HTML page (inline SVG
//! chart and CSS, no script, no request to anywhere; it prints well).

use super::Report;
use std::fmt::Write as _;

/// Rows of the failing-devices table the HTML page shows (JSON and CSV
/// list them all).
const HTML_FAILING_ROWS: usize = 1000;

pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_default() + "\n"
}

/// One CSV: a `section` column says which table a row belongs to; each
/// section starts with its own header row.
pub fn csv(r: &Report) -> String {
    let mut out = String::new();
    let mut row = |cells: &[&str]| {
        let line: Vec<String> = cells.iter().map(|c| field(c)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    };
    row(&["section", "since", "until", "policy", "group", "devices", "changes"]);
    let (devices, changes) = (r.devices.to_string(), r.changes.to_string());
    row(&[
        "summary",
        &r.since,
        &r.until,
        r.policy.as_deref().unwrap_or(""),
        r.group.as_deref().unwrap_or(""),
        &devices,
        &changes,
    ]);
    row(&["section", "at", "compliant", "noncompliant", "unknown"]);
    for p in &r.series {
        row(&["series", &p.at, &p.compliant.to_string(), &p.noncompliant.to_string(), &p.unknown.to_string()]);
    }
    row(&["section", "rule", "drifts", "remediated", "ttr_median_s", "ttr_p90_s", "escalations"]);
    let opt = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_default();
    for s in &r.rules {
        row(&[
            "rules",
            &s.rule,
            &s.drifts.to_string(),
            &s.remediated.to_string(),
            &opt(s.ttr_median_s),
            &opt(s.ttr_p90_s),
            &s.escalations.to_string(),
        ]);
    }
    row(&["section", "device", "since", "failed_rules"]);
    for f in &r.failing {
        row(&["failing", &f.device, &f.since, &f.failed_rules.join(" ")]);
    }
    row(&["section", "device", "mode", "by", "reason", "until"]);
    for o in &r.overrides {
        row(&["overrides", &o.device, &o.mode, &o.by, &o.reason, &o.until]);
    }
    row(&["section", "plane", "action", "result", "count"]);
    for e in &r.enforcement {
        row(&["enforcement", &e.plane, &e.action, &e.result, &e.count.to_string()]);
    }
    out
}

/// RFC 4180: quoted when it holds a comma, quote or line break. A leading
/// `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet does not run
/// it as a formula (device ids and reasons come from outside).
fn field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s.to_string() };
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
}

/// Text for HTML content and quoted attributes (the console uses it too).
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

pub fn html(r: &Report) -> String {
    let mut h = String::new();
    let scope = match (&r.policy, &r.group) {
        (Some(p), Some(g)) => format!("policy {}, group {}", esc(p), esc(g)),
        (Some(p), None) => format!("policy {}", esc(p)),
        (None, Some(g)) => format!("group {}", esc(g)),
        (None, None) => "the whole fleet".into(),
    };
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>warden drift report</title>\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\
         <style>{CSS}</style></head><body><h1>Drift report</h1>\
         <p class=\"meta\">{} to {} &middot; {scope} &middot; {} devices &middot; {} verdict changes</p>",
        esc(&r.since),
        esc(&r.until),
        r.devices,
        r.changes
    );
    h.push_str("<h2>Fleet compliance over time</h2>");
    h.push_str(&chart(r));
    h.push_str("<h2>Drifts and remediation by rule</h2><table><thead><tr><th>Rule</th><th>Drifts</th><th>Remediated</th><th>Time to remediate (median)</th><th>(p90)</th><th>Escalations</th></tr></thead><tbody>");
    for s in &r.rules {
        let t = |v: Option<f64>| v.map(human).unwrap_or_else(|| "&ndash;".into());
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.rule),
            s.drifts,
            s.remediated,
            t(s.ttr_median_s),
            t(s.ttr_p90_s),
            s.escalations
        );
    }
    if r.rules.is_empty() {
        h.push_str("<tr><td colspan=\"6\">No drift in this window.</td></tr>");
    }
    h.push_str("</tbody></table>");
    let _ = write!(
        h,
        "<h2>Devices noncompliant now ({})</h2><table><thead><tr><th>Device</th><th>Since</th><th>Failed rules</th></tr></thead><tbody>",
        r.failing.len()
    );
    for f in r.failing.iter().take(HTML_FAILING_ROWS) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&f.device),
            esc(&f.since),
            esc(&f.failed_rules.join(", "))
        );
    }
    if r.failing.len() > HTML_FAILING_ROWS {
        let _ = write!(
            h,
            "<tr><td colspan=\"3\">&hellip; and {} more (the CSV and JSON formats list every one)</td></tr>",
            r.failing.len() - HTML_FAILING_ROWS
        );
    }
    h.push_str("</tbody></table><h2>Overrides in force</h2><table><thead><tr><th>Device</th><th>Mode</th><th>Set by</th><th>Reason</th><th>Until</th></tr></thead><tbody>");
    for o in &r.overrides {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&o.device),
            esc(&o.mode),
            esc(&o.by),
            esc(&o.reason),
            esc(&o.until)
        );
    }
    if r.overrides.is_empty() {
        h.push_str("<tr><td colspan=\"5\">None.</td></tr>");
    }
    h.push_str("</tbody></table><h2>Enforcement actions</h2><table><thead><tr><th>Plane</th><th>Action</th><th>Result</th><th>Count</th></tr></thead><tbody>");
    for e in &r.enforcement {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.plane),
            esc(&e.action),
            esc(&e.result),
            e.count
        );
    }
    if r.enforcement.is_empty() {
        h.push_str("<tr><td colspan=\"4\">None.</td></tr>");
    }
    h.push_str("</tbody></table>");
    if r.unreadable > 0 {
        let _ = write!(h, "<p class=\"warn\">{} trail lines could not be read and were skipped.</p>", r.unreadable);
    }
    h.push_str("</body></html>\n");
    h
}

fn human(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// Stacked bars per point: compliant, noncompliant, unknown.
fn chart(r: &Report) -> String {
    let (w, h, pad) = (720.0, 220.0, 30.0);
    let max = r.series.iter().map(|p| p.compliant + p.noncompliant + p.unknown).max().unwrap_or(0).max(1) as f64;
    let n = r.series.len().max(1) as f64;
    let bar = ((w - 2.0 * pad) / n * 0.8).max(1.0);
    let mut s = format!(
        "<svg role=\"img\" aria-label=\"devices by verdict over time\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    for (i, p) in r.series.iter().enumerate() {
        let x = pad + i as f64 * (w - 2.0 * pad) / n;
        let mut y = h - pad;
        for (v, class) in [(p.compliant, "c"), (p.noncompliant, "n"), (p.unknown, "u")] {
            let bh = v as f64 / max * (h - 2.0 * pad);
            y -= bh;
            let _ = write!(
                s,
                "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{bh:.1}\"><title>{}: {v} {}</title></rect>",
                esc(&p.at),
                match class {
                    "c" => "compliant",
                    "n" => "noncompliant",
                    _ => "unknown",
                }
            );
        }
    }
    if let (Some(first), Some(last)) = (r.series.first(), r.series.last()) {
        let _ = write!(
            s,
            "<text x=\"{pad}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            h - 8.0,
            esc(&first.at[..first.at.len().min(10)]),
            w - pad,
            h - 8.0,
            esc(&last.at[..last.at.len().min(10)])
        );
    }
    let _ = write!(s, "<text x=\"{pad}\" y=\"16\">{max:.0} devices</text></svg>");
    s.push_str("<p class=\"legend\"><span class=\"c\">&#9632;</span> compliant <span class=\"n\">&#9632;</span> noncompliant <span class=\"u\">&#9632;</span> unknown</p>");
    s
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}h1{margin:0 0 .2em}\
.meta{color:#555}table{border-collapse:collapse;margin:.5em 0 1.5em;min-width:40%}\
th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#f4f4f4}\
rect.c{fill:#3a7d44}rect.n{fill:#c0392b}rect.u{fill:#999}span.c{color:#3a7d44}span.n{color:#c0392b}span.u{color:#999}\
svg text{font-size:11px;fill:#555}.warn{color:#c0392b}\
@media print{body{margin:0}h2{break-after:avoid}tr{break-inside:avoid}}";
