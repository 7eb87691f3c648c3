//! Remediation plans: what warden asks of a device, and when, while one of
//! its rules fails (PRODUCT.md, "Remediation plans").
//!
//! A plan is an ordered list of steps, each an action with a delay after the
//! violation began. `repeat` and `every` on a step are unfolded here into
//! plain steps, so the scheduler only ever walks a sorted list.

use crate::diag::Located;
use serde::Deserialize;
use std::time::Duration;

/// The step action that sends the failing rule's own `remediation` command.
pub const FIX: &str = "fix";
/// The step action that raises an event for people and sends nothing.
pub const ESCALATE: &str = "escalate";

/// Steps a plan may have once repeats are unfolded: a plan is a short
/// escalation ladder, not a schedule, and every step is state per device.
pub const MAX_STEPS: usize = 32;

/// How long a command is worth doing, unless the plan says otherwise.
const DEFAULT_EXPIRES: Duration = Duration::from_secs(15 * 60);
/// How soon an unacknowledged command is sent again, unless the plan says otherwise.
const DEFAULT_RETRY: Duration = Duration::from_secs(60);
/// Sends of one command, unless the plan says otherwise.
const DEFAULT_ATTEMPTS: u8 = 3;

/// One step as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepText {
    #[serde(with = "crate::diag::duration")]
    after: Duration,
    action: String,
    #[serde(default)]
    args: Option<toml::Table>,
    /// Run this many times in all (1: once).
    #[serde(default)]
    repeat: Option<u8>,
    /// Between repeats.
    #[serde(default, with = "optional_duration")]
    every: Option<Duration>,
}

/// A plan as written in a policy file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanText {
    name: String,
    steps: Vec<StepText>,
    /// A command is worth doing this long after it was issued.
    #[serde(default, with = "optional_duration")]
    expires: Option<Duration>,
    /// An unacknowledged command is sent again after this long.
    #[serde(default, with = "optional_duration")]
    retry_every: Option<Duration>,
    /// Sends of one command before the device counts as away.
    #[serde(default)]
    max_attempts: Option<u8>,
}

/// One step of a compiled plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// After the violation began.
    pub after: Duration,
    /// `fix`, `escalate`, or a command name the device's agent knows.
    pub action: String,
    /// Passed to the device as they are (a JSON object).
    pub args: serde_json::Value,
}

impl Step {
    /// True for a step that sends nothing to the device.
    pub fn escalates(&self) -> bool {
        self.action == ESCALATE
    }
}

/// A compiled plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub name: String,
    /// Sorted by `after`; repeats unfolded.
    pub steps: Vec<Step>,
    pub expires: Duration,
    pub retry_every: Duration,
    pub max_attempts: u8,
}

impl Plan {
    /// The plan a rule with a `remediation` command and no `plan` gets: the
    /// fix, once, at once.
    pub fn fix_at_once() -> Self {
        Self {
            name: "fix".into(),
            steps: vec![Step { after: Duration::ZERO, action: FIX.into(), args: serde_json::json!({}) }],
            expires: DEFAULT_EXPIRES,
            retry_every: DEFAULT_RETRY,
            max_attempts: DEFAULT_ATTEMPTS,
        }
    }

    /// Compiles one written plan, the `index`th of its file; errors are
    /// located at its name.
    pub fn compile(p: PlanText, src: &crate::diag::Source, index: usize) -> Result<Self, Located> {
        let at = src.offset(&["plans", &index.to_string(), "name"]);
        let err = |message: String| src.error_at(at, message);
        if p.name.trim().is_empty() {
            return Err(err("plan name must not be empty".into()));
        }
        if p.steps.is_empty() {
            return Err(err(format!("plan {:?} has no steps", p.name)));
        }
        let mut steps = Vec::new();
        for s in p.steps {
            if s.action.trim().is_empty() || s.action.len() > 64 {
                return Err(err(format!("plan {:?}: a step's action must be 1 to 64 characters", p.name)));
            }
            let repeat = s.repeat.unwrap_or(1);
            if repeat == 0 {
                return Err(err(format!("plan {:?}: `repeat` counts runs and must be at least 1", p.name)));
            }
            let every = match (repeat, s.every) {
                (1, None) => Duration::ZERO,
                (_, Some(every)) if every > Duration::ZERO => every,
                _ => return Err(err(format!("plan {:?}: a step that repeats needs `every` (above 0s)", p.name))),
            };
            if s.action == ESCALATE && repeat > 1 {
                return Err(err(format!("plan {:?}: `escalate` happens once", p.name)));
            }
            let args = serde_json::to_value(s.args.unwrap_or_default())
                .map_err(|e| err(format!("plan {:?}: args: {e}", p.name)))?;
            for n in 0..u32::from(repeat) {
                steps.push(Step { after: s.after + every * n, action: s.action.clone(), args: args.clone() });
            }
        }
        if steps.len() > MAX_STEPS {
            return Err(err(format!(
                "plan {:?} has {} steps with its repeats; at most {MAX_STEPS}",
                p.name,
                steps.len()
            )));
        }
        // Stable: steps at the same delay keep their written order.
        steps.sort_by_key(|s| s.after);
        let max_attempts = p.max_attempts.unwrap_or(DEFAULT_ATTEMPTS);
        if max_attempts == 0 {
            return Err(err(format!("plan {:?}: max_attempts must be at least 1", p.name)));
        }
        let retry_every = p.retry_every.unwrap_or(DEFAULT_RETRY);
        let expires = p.expires.unwrap_or(DEFAULT_EXPIRES);
        if retry_every.is_zero() || expires.is_zero() {
            return Err(err(format!("plan {:?}: retry_every and expires must be above 0s", p.name)));
        }
        Ok(Self { name: p.name, steps, expires, retry_every, max_attempts })
    }

    /// True when a step sends the failing rule's own command.
    pub fn needs_fix(&self) -> bool {
        self.steps.iter().any(|s| s.action == FIX)
    }
}

mod optional_duration {
    use serde::{Deserialize, Deserializer, de::Error};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        crate::diag::parse_duration(&text).map(Some).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<Plan, String> {
        #[derive(Deserialize)]
        struct F {
            plans: Vec<PlanText>,
        }
        let f: F = toml::from_str(text).map_err(|e| e.to_string())?;
        let p = f.plans.into_iter().next().unwrap();
        Plan::compile(p, &crate::diag::Source::new(std::path::Path::new("p.toml"), text), 0).map_err(|e| e.to_string())
    }

    #[test]
    fn repeats_unfold_and_steps_sort_by_delay() {
        let p = compile(
            r#"
[[plans]]
name = "kiosk-offline"
steps = [
  { after = "10m", action = "reboot" },
  { after = "0s", action = "fix" },
  { after = "5m", action = "toggle_airplane_mode", repeat = 2, every = "1m", args = { seconds = 10 } },
  { after = "30m", action = "escalate" },
]
"#,
        )
        .unwrap();
        let got: Vec<(u64, &str)> = p.steps.iter().map(|s| (s.after.as_secs(), s.action.as_str())).collect();
        assert_eq!(
            got,
            [
                (0, "fix"),
                (300, "toggle_airplane_mode"),
                (360, "toggle_airplane_mode"),
                (600, "reboot"),
                (1800, "escalate")
            ]
        );
        assert_eq!(p.steps[1].args, serde_json::json!({"seconds": 10}));
        assert_eq!((p.max_attempts, p.retry_every, p.expires), (3, DEFAULT_RETRY, DEFAULT_EXPIRES));
        assert!(p.needs_fix());
    }

    #[test]
    fn bad_plans_are_refused_with_their_location() {
        for (text, want) in [
            ("[[plans]]\nname = \"p\"\nsteps = []\n", "no steps"),
            ("[[plans]]\nname = \"p\"\nsteps = [{ after = \"1m\", action = \"x\", repeat = 3 }]\n", "needs `every`"),
            (
                "[[plans]]\nname = \"p\"\nsteps = [{ after = \"1m\", action = \"x\", repeat = 0, every = \"1s\" }]\n",
                "at least 1",
            ),
            ("[[plans]]\nname = \"p\"\nsteps = [{ after = \"1m\", action = \"\" }]\n", "1 to 64"),
            (
                "[[plans]]\nname = \"p\"\nsteps = [{ after = \"1m\", action = \"x\", repeat = 40, every = \"1s\" }]\n",
                "at most 32",
            ),
            (
                "[[plans]]\nname = \"p\"\nsteps = [{ after = \"1m\", action = \"escalate\", repeat = 2, every = \"1s\" }]\n",
                "once",
            ),
            (
                "[[plans]]\nname = \"p\"\nmax_attempts = 0\nsteps = [{ after = \"1m\", action = \"x\" }]\n",
                "max_attempts",
            ),
            ("[[plans]]\nname = \"p\"\nsteps = [{ after = \"soon\", action = \"x\" }]\n", "invalid duration"),
        ] {
            let e = compile(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let e = compile("[[plans]]\nname = \"p\"\nsteps = []\n").unwrap_err();
        assert!(e.starts_with("p.toml:2:8:"), "{e}");
    }
}
