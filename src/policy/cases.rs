//! Policy test cases (`policies/tests/*.toml`): a telemetry sample and the
//! verdict and failed rules it must produce. Run by `warden policy test`.

use super::{PolicySet, decide};
use crate::diag::Located;
use crate::telemetry::{Report, UnixMillis};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(rename = "cases")]
    cases: Vec<Case>,
}

/// One test case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// The evaluation time (RFC 3339); default: the wall clock. `ts`
    /// defaults to it and `seq` to 1.
    now: Option<String>,
    /// The report, as the device would publish it (TOML instead of JSON).
    telemetry: toml::Table,
    /// `compliant` or `noncompliant`.
    expect: Expect,
    /// The failed rules as `policy/rule` (or bare `rule`); when given, the
    /// failures must be exactly these.
    failed: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Compliant,
    Noncompliant,
}

/// The outcome of one case.
#[derive(Debug)]
pub struct Outcome {
    pub file: PathBuf,
    pub name: String,
    /// `None` when the case passed, else what went wrong.
    pub problem: Option<String>,
}

/// Loads `dir/*.toml` as policies and runs every case in `dir/tests/*.toml`.
pub fn run_dir(dir: &Path, wall_now: UnixMillis) -> Result<Vec<Outcome>, Vec<Located>> {
    let set = PolicySet::load_dir(dir)?;
    let files = super::toml_files(&dir.join("tests")).map_err(|e| vec![e])?;
    let mut outcomes = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| vec![Located::file(&file, e.to_string())])?;
        match toml::from_str::<CaseFile>(&text) {
            Ok(cf) => outcomes.extend(cf.cases.into_iter().map(|c| run_case(&set, &file, c, wall_now))),
            Err(e) => errors.push(Located::toml(&file, &text, &e)),
        }
    }
    if errors.is_empty() { Ok(outcomes) } else { Err(errors) }
}

fn run_case(set: &PolicySet, file: &Path, case: Case, wall_now: UnixMillis) -> Outcome {
    let outcome = |problem: Option<String>| Outcome { file: file.to_path_buf(), name: case.name.clone(), problem };
    let now = match case.now.as_deref().map(parse_rfc3339) {
        None => wall_now,
        Some(Ok(t)) => t,
        Some(Err(e)) => return outcome(Some(e)),
    };
    let mut json = match serde_json::to_value(&case.telemetry) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => return outcome(Some("telemetry is not a table".into())),
    };
    json.entry("seq").or_insert(1.into());
    json.entry("ts").or_insert(crate::telemetry::report::format_rfc3339(now).into());
    let report: Report = match serde_json::from_value(serde_json::Value::Object(json)) {
        Ok(r) => r,
        Err(e) => return outcome(Some(format!("telemetry is not a valid report: {e}"))),
    };
    let eval = decide(set, &report, now);
    let got = if eval.compliant() { Expect::Compliant } else { Expect::Noncompliant };
    let failed: Vec<String> = eval.failures.iter().map(|f| f.key()).collect();
    if got != case.expect {
        return outcome(Some(format!("expected {:?}, got {got:?} (failed: {failed:?})", case.expect)));
    }
    if let Some(want) = &case.failed {
        let matches = |w: &String, f: &String| {
            if w.contains('/') { w == f } else { f.rsplit('/').next() == Some(w) }
        };
        let missing: Vec<&String> = want.iter().filter(|w| !failed.iter().any(|f| matches(w, f))).collect();
        let extra: Vec<&String> = failed.iter().filter(|f| !want.iter().any(|w| matches(w, f))).collect();
        if !missing.is_empty() || !extra.is_empty() {
            return outcome(Some(format!("failed rules differ: missing {missing:?}, unexpected {extra:?}")));
        }
    }
    outcome(None)
}

fn parse_rfc3339(s: &str) -> Result<UnixMillis, String> {
    crate::telemetry::report::parse_rfc3339(s).map_err(|e| format!("now = {e}"))
}
