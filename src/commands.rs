//! The one-shot commands: `check` and `policy test`, and loading the config
//! the same way for every command.

use crate::config::Loaded;
use crate::policy::PolicySet;
use std::path::Path;
use std::process::ExitCode;

/// Loads `--config FILE`, or the embedded default; prints errors and returns
/// the exit code on failure.
pub fn load(file: Option<&Path>) -> Result<Loaded, ExitCode> {
    match file {
        None => {
            tracing::warn!("no --config: running the embedded default (loopback only, for trying warden)");
            let loaded = Loaded::embedded_default();
            for w in &loaded.warnings {
                // Shown once, on the terminal that started warden.
                eprintln!("warning: {w}");
            }
            Ok(loaded)
        }
        Some(f) => Loaded::from_file(f)
            .inspect(|l| {
                for w in &l.warnings {
                    tracing::warn!("{w}");
                }
            })
            .map_err(|errors| {
                for e in &errors {
                    eprintln!("{e}");
                }
                ExitCode::FAILURE
            }),
    }
}

/// `warden check`: the configuration and every policy.
pub fn check(file: Option<&Path>) -> ExitCode {
    let loaded = match file {
        None => {
            let mut l = Loaded::embedded_default();
            l.warnings.clear(); // no secret to show: `check` starts nothing
            l
        }
        Some(f) => match Loaded::from_file(f) {
            Ok(l) => l,
            Err(errors) => {
                for e in &errors {
                    eprintln!("{e}");
                }
                return ExitCode::FAILURE;
            }
        },
    };
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    match PolicySet::load_dir(&loaded.config.policy.dir) {
        Ok(set) => {
            let what = loaded.file.as_ref().map_or_else(|| "embedded default".to_string(), |f| f.display().to_string());
            println!("{what}: OK ({} policies, {} rules)", set.policies.len(), set.rule_count());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `warden policy test`: every case in DIR/tests against DIR's policies.
pub fn policy_test(dir: &Path) -> ExitCode {
    let outcomes = match crate::policy::cases::run_dir(dir, crate::telemetry::ingest::wall_now()) {
        Ok(o) => o,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    for o in &outcomes {
        match &o.problem {
            None => println!("ok    {}: {}", o.file.display(), o.name),
            Some(p) => {
                failed += 1;
                println!("FAIL  {}: {}: {p}", o.file.display(), o.name);
            }
        }
    }
    println!("{} passed, {} failed", outcomes.len() - failed, failed);
    if failed == 0 && !outcomes.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
