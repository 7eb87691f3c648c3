//! `[[reports]]`: drift reports written on a schedule.
//!
//! ```toml
//! [[reports]]
//! name = "weekly-drift"
//! schedule = "weekly mon 06:00"   # or "daily 06:00" (UTC)
//! since = "7d"
//! formats = ["html", "csv"]
//! out_dir = "reports"
//! policy = "pos-baseline"         # optional scope
//! group = "pos"                   # optional scope
//! ```

use super::schedule::Schedule;
use crate::diag::{Located, Source};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    pub name: toml::Spanned<String>,
    pub schedule: toml::Spanned<String>,
    #[serde(default = "default_since", with = "crate::diag::duration")]
    pub since: Duration,
    #[serde(default = "default_formats")]
    pub formats: toml::Spanned<Vec<String>>,
    #[serde(default = "default_out_dir")]
    pub out_dir: PathBuf,
    pub policy: Option<String>,
    pub group: Option<String>,
}

fn default_since() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_formats() -> toml::Spanned<Vec<String>> {
    toml::Spanned::new(0..0, vec!["html".into()])
}

fn default_out_dir() -> PathBuf {
    "reports".into()
}

/// A checked scheduled report.
#[derive(Clone, Debug)]
pub struct Scheduled {
    pub name: String,
    pub schedule: Schedule,
    pub since: Duration,
    pub formats: Vec<String>,
    pub out_dir: PathBuf,
    pub policy: Option<String>,
    pub group: Option<String>,
}

pub const FORMATS: [&str; 3] = ["html", "csv", "json"];

/// Makes `out_dir`s relative to the config file's directory.
pub fn rebase(reports: &mut [ReportConfig], rebase: &impl Fn(&mut PathBuf)) {
    for r in reports {
        rebase(&mut r.out_dir);
    }
}

/// Checks every `[[reports]]`; `audit` says whether the trail they are
/// computed from is kept.
pub fn check(reports: &[ReportConfig], src: &Source, audit: bool, errors: &mut Vec<Located>) -> Vec<Scheduled> {
    let mut out = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        let name = r.name.get_ref();
        let since_at = src.offset(&["reports", &i.to_string(), "since"]);
        let mut fail = |at: usize, msg: String| errors.push(src.error_at(at, msg));
        if !audit {
            fail(r.name.span().start, "reports are computed from the audit trail: audit.enabled must be true".into());
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            fail(
                r.name.span().start,
                format!("report name {name:?}: letters, digits, - and _ only (it names the files)"),
            );
        }
        if reports[..i].iter().any(|o| o.name.get_ref() == name) {
            fail(r.name.span().start, format!("duplicate report name {name:?}"));
        }
        let schedule = Schedule::parse(r.schedule.get_ref()).map_err(|e| fail(r.schedule.span().start, e)).ok();
        let formats = r.formats.get_ref();
        if formats.is_empty() || formats.iter().any(|f| !FORMATS.contains(&f.as_str())) {
            fail(r.formats.span().start, format!("report {name:?}: formats are html, csv and json"));
        }
        if r.since.is_zero() {
            fail(since_at, format!("report {name:?}: since must be more than 0s"));
        }
        if let Some(schedule) = schedule {
            out.push(Scheduled {
                name: name.clone(),
                schedule,
                since: r.since,
                formats: formats.clone(),
                out_dir: r.out_dir.clone(),
                policy: r.policy.clone(),
                group: r.group.clone(),
            });
        }
    }
    out
}
