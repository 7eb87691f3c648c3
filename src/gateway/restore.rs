//! Restoring the compliance table at start: the snapshot, streamed from a
//! reader thread, and the journal written since, before any port is bound,
//! so there is no moment where a known device looks unknown, or an unknown
//! one compliant.

// A shell: it reads the clock for the engine it fills.
#![allow(clippy::disallowed_methods)]

use crate::compliance::identity::FAILURE_KEY;
use crate::compliance::snapshot::Entry;
use crate::compliance::{Engine, Settled, journal, snapshot};
use crate::gateway::mqtt::wall_now;
use crate::metrics::Metrics;
use anyhow::Context;
use std::path::Path;
use std::time::{Duration, Instant};

/// What a start restored.
pub struct Restored {
    /// The next journal segment, ready for writing.
    pub journal: journal::Writer,
    /// The devices the journal had a word on: changed since the last
    /// snapshot, so possibly after their last status message.
    pub journaled: Vec<std::sync::Arc<str>>,
    /// Every device restored, when asked for (the embedded broker lost
    /// every retained status message): gathered as they are installed,
    /// cheaper than a walk of the table afterwards (0.2 s at 1,000,000).
    pub all: Vec<std::sync::Arc<str>>,
}

/// Fills `engine` from `state_dir` and starts the next journal segment;
/// with `gather`, lists every device restored.
pub fn table(
    engine: &mut Engine,
    state_dir: &Path,
    forget_after: Duration,
    metrics: &Metrics,
    gather: bool,
) -> anyhow::Result<Restored> {
    let mut all = Vec::new();
    let started = Instant::now();
    let replayed = journal::read(state_dir).context("reading the compliance journal")?;
    let journaled = replayed.records.len();
    metrics.journal_bad_lines.inc_by(replayed.bad as u64);
    let (now, wall) = (Instant::now(), wall_now());
    // Nothing was heard while warden was down (since it last wrote its
    // state) and nothing is until the telemetry subscription is up: that
    // time is an outage, and silence in it holds verdicts instead of
    // expiring them. A restart after a long stop does not quarantine the fleet.
    let down_since = snapshot::written_at(state_dir).max(replayed.written_at).unwrap_or(wall).min(wall);
    let down_for = Duration::from_millis(u64::try_from(wall - down_since).unwrap_or(0));
    engine.handle_source(false, now.checked_sub(down_for).unwrap_or(now), down_since);
    while engine.poll_outage().is_some() {}

    // The journal's last word on a device replaces its snapshot record: its
    // id stays in `latest` so the snapshot's line is skipped, its entry
    // follows the snapshot's through the same reader (settled there too).
    let mut latest = journal::latest(replayed.records);
    let journaled_ids: Vec<std::sync::Arc<str>> = latest.keys().map(|id| id.as_str().into()).collect();
    // Identity owners before the devices whose claims were refused, so the
    // bindings come back as they were: those wait until the end.
    let mut refused: Vec<Entry> = Vec::new();
    let mut after = Vec::with_capacity(latest.len());
    for e in latest.values_mut().filter_map(Option::take) {
        if e.failing_since.iter().any(|(k, _)| k == FAILURE_KEY) {
            refused.push(e);
        } else {
            after.push(e);
        }
    }
    let mut restored = 0usize;
    // The reader thread decodes and settles each device (policy evaluation
    // included); this one binds identities and stores: two cores share it.
    enum Line {
        Settled(Settled),
        Refused(Box<Entry>),
    }
    let mut restorer = engine.restorer(now, wall);
    let bad = snapshot::stream(
        state_dir,
        after,
        |e, source| {
            if source == snapshot::Source::Snapshot && latest.contains_key(&e.id) {
                None
            } else if e.failing_since.iter().any(|(k, _)| k == FAILURE_KEY) {
                Some(Line::Refused(Box::new(e)))
            } else {
                Some(Line::Settled(restorer.settle(e)))
            }
        },
        |chunk| {
            for line in chunk {
                match line {
                    Line::Settled(s) => {
                        if gather {
                            all.push(s.id());
                        }
                        engine.install(s, now, wall);
                        restored += 1;
                    }
                    Line::Refused(e) => refused.push(*e),
                }
            }
        },
    )
    .context("reading the compliance snapshot")?;
    engine.finish_restore(restorer);
    for e in std::mem::take(&mut refused) {
        if gather {
            all.push(e.id.as_str().into());
        }
        engine.restore(&e.id, e.report, e.last_seen, &e.failing_since, now, wall);
        if let Some(o) = e.admin_override {
            engine.restore_override(&e.id, o, now, wall);
        }
        restored += 1;
    }
    let forgotten = std::iter::from_fn(|| engine.poll_forgotten()).count();
    restored -= forgotten;
    if forgotten > 0 {
        tracing::info!(forgotten, after = %humantime::format_duration(forget_after), "devices silent for forget_after not restored");
    }
    metrics.snapshot_bad_lines.inc_by(bad as u64);
    metrics.set_devices(engine.counts());
    if restored > 0 || bad > 0 || replayed.bad > 0 {
        let [c, n, u] = engine.counts();
        tracing::info!(
            restored,
            journaled,
            skipped = bad,
            journal_skipped = replayed.bad,
            compliant = c,
            noncompliant = n,
            unknown = u,
            took_ms = started.elapsed().as_millis() as u64,
            "compliance table restored from snapshot"
        );
    }
    let writer =
        journal::Writer::create(state_dir, replayed.next_segment).context("starting the compliance journal")?;
    // A start with nothing to report since leaves an empty segment behind;
    // they would pile up across restarts until the next compaction.
    for (n, path) in journal::segments(state_dir).context("listing the compliance journal")? {
        if n < writer.segment() && std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(Restored { journal: writer, journaled: journaled_ids, all })
}
