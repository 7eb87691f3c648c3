//! Scheduled drift reports (`[[reports]]`): at each due time the report
//! over the audit trail is written to `out_dir/NAME-YYYYMMDDTHHMMZ.EXT` for
//! each format (whole or not at all), and `out_dir/index.json` and
//! `index.html` list every report written there, newest first.
//!
//! Level-triggered: at start, a report whose latest due time has no entry
//! in the index is written at once (warden was down when it fell due), so a
//! restart never skips the Monday report; then each is written at its next
//! due time.

// A shell: it owns files and the clock.
#![allow(clippy::disallowed_methods)]

use crate::metrics::Metrics;
use crate::report::config::Scheduled;
use crate::report::{Builder, DAY, Options, Report, render};
use crate::telemetry::UnixMillis;
use crate::telemetry::report::format_rfc3339;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The report over the trail in `dir`, in one pass over its files.
pub fn build_from_dir(dir: &Path, opts: Options) -> std::io::Result<Report> {
    use std::io::BufRead as _;
    let mut builder = Builder::new(opts);
    for (_, path) in crate::audit::files(dir)? {
        let mut reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path)?);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line)? > 0 {
            builder.line(&line);
            line.clear();
        }
    }
    Ok(builder.finish())
}

/// The series' step for a window: days, or weeks past 90 days.
pub fn step_for(since: UnixMillis, until: UnixMillis) -> UnixMillis {
    if until - since > 90 * DAY { 7 * DAY } else { DAY }
}

/// Writes `r`'s report for the window ending at `due`; the files written.
pub fn write(r: &Scheduled, trail: &Path, due: UnixMillis) -> std::io::Result<Vec<String>> {
    let since = due - i64::try_from(r.since.as_millis()).unwrap_or(i64::MAX).min(due);
    let opts =
        Options { since, until: due, policy: r.policy.clone(), group: r.group.clone(), step: step_for(since, due) };
    let report = build_from_dir(trail, opts)?;
    std::fs::create_dir_all(&r.out_dir)?;
    let stamp: String = format_rfc3339(due).chars().filter(|c| c.is_ascii_alphanumeric()).take(13).collect();
    let mut files = Vec::new();
    for format in &r.formats {
        let (text, ext) = match format.as_str() {
            "csv" => (render::csv(&report), "csv"),
            "json" => (render::json(&report), "json"),
            _ => (render::html(&report), "html"),
        };
        let name = format!("{}-{stamp}Z.{ext}", r.name);
        crate::durable::replace(&r.out_dir.join(&name), text.as_bytes())?;
        files.push(name);
    }
    let mut index = read_index(&r.out_dir);
    index.insert(
        0,
        json!({"name": r.name, "at": format_rfc3339(due), "since": report.since, "until": report.until, "files": files}),
    );
    write_index(&r.out_dir, &index)?;
    Ok(files)
}

use crate::report::read_index;

fn write_index(dir: &Path, index: &[Value]) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(&json!({ "reports": index })).unwrap_or_default() + "\n";
    crate::durable::replace(&dir.join("index.json"), json.as_bytes())?;
    let esc = render::esc;
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>warden reports</title></head><body><h1>Reports</h1><ul>",
    );
    for r in index {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
        let links: Vec<String> = r
            .get("files")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|f| format!("<a href=\"{0}\">{0}</a>", esc(f)))
            .collect();
        html.push_str(&format!(
            "<li>{} &middot; {} to {}: {}</li>",
            esc(s("name")),
            esc(s("since")),
            esc(s("until")),
            links.join(" ")
        ));
    }
    html.push_str("</ul></body></html>\n");
    crate::durable::replace(&dir.join("index.html"), html.as_bytes())
}

/// The latest due time already written for `r` (from its index).
fn written_up_to(r: &Scheduled) -> UnixMillis {
    read_index(&r.out_dir)
        .iter()
        .filter(|e| e.get("name").and_then(Value::as_str) == Some(&r.name))
        .filter_map(|e| crate::telemetry::report::parse_rfc3339(e.get("at")?.as_str()?).ok())
        .max()
        .unwrap_or(UnixMillis::MIN)
}

/// Writes each report when due (see [`crate::report::schedule::Scheduler`]),
/// until `shutdown`.
pub async fn run(reports: Vec<Scheduled>, trail: PathBuf, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    use crate::report::schedule::Scheduler;
    if reports.is_empty() {
        return;
    }
    let written: Vec<UnixMillis> = reports.iter().map(written_up_to).collect();
    let schedules = reports.iter().map(|r| r.schedule).collect();
    let mut scheduler = Scheduler::new(schedules, &written, crate::gateway::mqtt::wall_now());
    loop {
        let now = crate::gateway::mqtt::wall_now();
        while let Some((i, due)) = scheduler.poll_due(now) {
            let (r, trail) = (reports[i].clone(), trail.clone());
            let name = r.name.clone();
            match tokio::task::spawn_blocking(move || write(&r, &trail, due)).await {
                Ok(Ok(files)) => {
                    metrics.reports(true);
                    tracing::info!(report = %name, due = %format_rfc3339(due), files = ?files, "scheduled report written");
                }
                Ok(Err(e)) => {
                    metrics.reports(false);
                    tracing::error!(report = %name, error = %e, "scheduled report not written");
                }
                Err(e) => {
                    metrics.reports(false);
                    tracing::error!(report = %name, error = %e, "scheduled report failed");
                }
            }
        }
        let next = scheduler.poll_timeout().unwrap_or(now + DAY);
        // Woken at least hourly: the wall clock may have been set meanwhile.
        let wait = Duration::from_millis(next.saturating_sub(now).clamp(0, 3_600_000) as u64);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::schedule::Schedule;

    #[test]
    fn a_due_report_is_written_in_every_format_with_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let trail = dir.path().join("audit");
        std::fs::create_dir_all(&trail).unwrap();
        let mut chain = crate::audit::Chain::default();
        let t = crate::telemetry::report::parse_rfc3339("2026-12-06T10:00:00Z").unwrap();
        let line = chain.append(
            t,
            "warden.verdict.changed",
            Some("d1"),
            json!({"to": "noncompliant", "failed_rules": ["p/r"], "member_of": []}),
        );
        std::fs::write(trail.join("audit-1.jsonl"), line + "\n").unwrap();
        let r = Scheduled {
            name: "weekly".into(),
            schedule: Schedule::parse("weekly mon 06:00").unwrap(),
            since: Duration::from_secs(7 * 24 * 3600),
            formats: vec!["html".into(), "csv".into(), "json".into()],
            out_dir: dir.path().join("reports"),
            policy: None,
            group: None,
        };
        let due = crate::telemetry::report::parse_rfc3339("2026-12-07T06:00:00Z").unwrap();
        let files = write(&r, &trail, due).unwrap();
        assert_eq!(files, ["weekly-20261207T0600Z.html", "weekly-20261207T0600Z.csv", "weekly-20261207T0600Z.json"]);
        let json: Value = serde_json::from_slice(&std::fs::read(r.out_dir.join(&files[2])).unwrap()).unwrap();
        assert_eq!(json["failing"][0]["device"], "d1");
        assert_eq!(written_up_to(&r), due);
        // A second one goes first in the index; the first stays listed.
        let next = r.schedule.next_after(due);
        write(&r, &trail, next).unwrap();
        let index = read_index(&r.out_dir);
        assert_eq!(index.len(), 2);
        assert_eq!(index[0]["at"], "2026-12-14T06:00:00Z");
        let html = std::fs::read_to_string(r.out_dir.join("index.html")).unwrap();
        assert!(html.contains("weekly-20261207T0600Z.html"));
    }
}
