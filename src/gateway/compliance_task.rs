//! The task that owns the compliance [`Engine`]: it feeds it telemetry,
//! policy sets and timeouts, publishes every verdict change to the planes,
//! journals every accepted report (acknowledged once the commit task has
//! made it durable) and compacts the journal into the snapshot.
//!
//! Longer than most files here because it is one event loop whose handlers
//! share the task's state (the engine, the pending acks, the journal, the
//! remediation core); the decisions themselves live in the cores
//! (`compliance::Engine`, `remediation`) and in `commit`.

use super::commit::{Commit, Durability};
use super::log_limit::LogLimiter;
use crate::compliance::{Cause, Change, Engine, Held, journal, snapshot};
use crate::gateway::mqtt::{Inbound, wall_now};
use crate::metrics::Metrics;
use crate::policy::PolicySet;
use crate::telemetry::parse::Freshness;
use crate::telemetry::{TopicPattern, UnixMillis, parse_payload};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

pub use crate::http::requests::{Confirm, OverrideRequest};

/// Messages taken from the channel in one go before events are drained.
const BATCH: usize = 1024;

/// A journal segment this large is compacted into the snapshot at once.
const COMPACT_BYTES: u64 = 256 << 20;

/// Verdicts republished at start per step, and the status queue length
/// under which the next step goes.
const REPUBLISH_CHUNK: usize = 4096;
/// How often the republishing looks whether the status queue has room.
const REPUBLISH_PAUSE: Duration = Duration::from_millis(20);

pub struct ComplianceTask {
    pub engine: Engine,
    pub telemetry: mpsc::Receiver<Inbound>,
    pub policies: mpsc::Receiver<PolicySet>,
    /// True while the telemetry subscription is up.
    pub source: watch::Receiver<bool>,
    /// Confirmations of held batches, from the API.
    pub confirms: mpsc::Receiver<Confirm>,
    /// Overrides set or cleared, from the API.
    pub overrides: mpsc::Receiver<OverrideRequest>,
    /// The batches the circuit breaker holds, for the API.
    pub held: watch::Sender<Vec<Held>>,
    pub pattern: TopicPattern,
    pub freshness: Freshness,
    /// Verdict changes of the batch being gathered, handed to the commit
    /// task with its journal records: the planes hear of them once those
    /// are written.
    pub outgoing: Vec<Arc<Change>>,
    /// Current verdicts to state again on the status topic, likewise.
    pub restated: Vec<Arc<Change>>,
    /// Bumped after a policy reload: every plane reconciles all it enforces.
    pub reconcile: watch::Sender<u64>,
    pub metrics: Arc<Metrics>,
    pub state_dir: PathBuf,
    pub snapshot_every: Duration,
    /// Where accepted reports are appended.
    pub journal: journal::Writer,
    /// Verdict changes for the status topic, coalesced per device (read
    /// here for its length only; the commit task fills it).
    pub status: Arc<super::status::Pending>,
    /// Batches to make durable and acknowledge, in order.
    pub commits: mpsc::Sender<Commit>,
    pub durability: Arc<Durability>,
    /// For the log line when an outage begins.
    pub outage_grace: Duration,
    /// Devices whose current verdict is published again on the status
    /// topic, a chunk at a time while the status queue is short.
    pub republish: Vec<Arc<str>>,
    /// Remediation plans: fed verdict changes, reports and acknowledgements.
    pub remediation: crate::remediation::Remediation,
    /// Where devices acknowledge commands (`mqtt.ack_topic`).
    pub acks: TopicPattern,
    /// Commands to the publisher task.
    pub commands: mpsc::Sender<crate::remediation::Command>,
    /// The API's view of each device's plans.
    pub remediation_views: Arc<super::remediation::Views>,
    /// The dynamic groups in force, for the API.
    pub groups: watch::Sender<Arc<crate::policy::Groups>>,
    /// Remediation's log lines, limited.
    pub remediation_log: LogLimiter,
    /// The audit trail (`None`: `audit.enabled = false`).
    pub audit: Option<super::audit_trail::AuditTrail>,
    /// Who confirmed the held change being applied (for its audit entry).
    pub confirmed_by: Option<(String, Option<String>)>,
    /// Entries from the enforcement planes, for the trail.
    pub foreign: mpsc::Receiver<super::audit_trail::Foreign>,
    pub shutdown: watch::Receiver<bool>,
}

impl ComplianceTask {
    pub async fn run(mut self) {
        let mut snapshot_tick = tokio::time::interval(self.snapshot_every);
        snapshot_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        snapshot_tick.tick().await; // the first tick is immediate
        let snapshot_busy = Arc::new(AtomicBool::new(false));
        let mut snapshot_generation = self.engine.generation();
        let mut refusal_log = LogLimiter::new();
        let mut timer = super::timer::Timer::new();
        let mut acks = Vec::new();
        let mut last_recovery: Option<Instant> = None;
        // A policy reload re-evaluates every device; the failure start
        // times it sets are in no journal record: a snapshot holds them,
        // as soon as one can start.
        let mut reevaluated = false;
        self.seed_remediation();
        loop {
            let remediation = self.remediation.poll_timeout();
            timer.arm(self.engine.poll_timeout().into_iter().chain(remediation).min());
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                Some(set) = self.policies.recv() => {
                    let started = Instant::now();
                    let files = policy_files(&set);
                    self.engine.handle_policies(set, Instant::now(), wall_now());
                    self.audit_record(None, "warden.policy.reloaded", serde_json::json!({"files": files}));
                    self.groups.send_replace(Arc::clone(&self.engine.policies().groups));
                    self.reconcile.send_modify(|n| *n += 1);
                    reevaluated = true;
                    tracing::info!(devices = self.engine.table().len(), took_ms = started.elapsed().as_millis() as u64, "devices re-evaluated under the new policies");
                }
                msg = self.telemetry.recv() => {
                    let Some(msg) = msg else { break };
                    self.ingest(msg, &mut refusal_log, &mut acks);
                    for _ in 0..BATCH {
                        match self.telemetry.try_recv() {
                            Ok(msg) => self.ingest(msg, &mut refusal_log, &mut acks),
                            Err(_) => break,
                        }
                    }
                }
                _ = timer.fired() => {
                    let (now, wall) = (Instant::now(), wall_now());
                    self.engine.handle_timeout(now, wall);
                    while let Some((device, o)) = self.engine.poll_override_expired() {
                        let data = serde_json::json!({"mode": o.mode.label(), "reason": o.reason, "by": o.by,
                            "set": crate::telemetry::report::format_rfc3339(o.set), "until": crate::telemetry::report::format_rfc3339(o.until)});
                        self.audit_record(Some(&device), "warden.override.expired", data);
                    }
                    self.remediation.handle_timeout(now, wall);
                }
                Some(request) = self.overrides.recv() => self.handle_override(request, &mut acks),
                Some(entry) = self.foreign.recv() => {
                    let mut more = vec![entry];
                    while more.len() < BATCH && let Ok(e) = self.foreign.try_recv() {
                        more.push(e);
                    }
                    if let Some(a) = &mut self.audit {
                        for e in more {
                            a.record(e.at, e.kind, e.device.as_deref(), e.data);
                        }
                    }
                }
                Some(confirm) = self.confirms.recv() => {
                    self.confirmed_by = Some((confirm.by.clone(), confirm.from.clone()));
                    let done = self.engine.confirm(confirm.id, Instant::now(), wall_now());
                    if done.is_some() {
                        self.reconcile.send_modify(|n| *n += 1);
                        reevaluated = true;
                    }
                    let _ = confirm.reply.send(done);
                }
                r = self.source.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let up = *self.source.borrow_and_update();
                    self.engine.handle_source(up, Instant::now(), wall_now());
                }
                _ = snapshot_tick.tick() => {
                    // Nothing changed since the last one: nothing to write.
                    if self.engine.generation() != snapshot_generation && self.snapshot(&snapshot_busy) {
                        snapshot_generation = self.engine.generation();
                    }
                }
                _ = tokio::time::sleep(REPUBLISH_PAUSE), if !self.republish.is_empty() => self.republish_some(),
            }
            self.drain();
            self.commit(&mut acks).await;
            // A journal that grew large is compacted without waiting for the
            // tick (restart replays it); one that failed, as soon as it can
            // be (at most every second), to make its reports durable again.
            let recover = self.durability.degraded()
                && last_recovery.is_none_or(|at: Instant| at.elapsed() >= Duration::from_secs(1));
            if (self.journal.written() >= COMPACT_BYTES || recover || reevaluated) && self.snapshot(&snapshot_busy) {
                snapshot_generation = self.engine.generation();
                reevaluated = false;
                if recover {
                    last_recovery = Some(Instant::now());
                }
            }
        }
        // The audit trail's last checkpoint goes with the last batch, after
        // every entry before it.
        if let Some(a) = &mut self.audit {
            a.stopping(wall_now());
        }
        self.commit(&mut acks).await;
        // A last snapshot on the way out, waited for: it holds everything,
        // so the journal is no longer needed.
        let table = self.engine.table().clone();
        let dir = self.state_dir.clone();
        let last = self.journal.segment();
        let written = tokio::task::spawn_blocking(move || {
            let n = snapshot::write(&table, &dir)?;
            journal::remove_through(&dir, last)?;
            Ok::<_, std::io::Error>(n)
        })
        .await;
        match written {
            Ok(Ok(n)) => tracing::info!(devices = n, "compliance snapshot written"),
            Ok(Err(e)) => tracing::error!(error = %e, "final compliance snapshot failed"),
            Err(e) => tracing::error!(error = %e, "final compliance snapshot task failed"),
        }
    }

    fn ingest(&mut self, msg: Inbound, log: &mut LogLimiter, acks: &mut Vec<crate::gateway::mqtt::Ack>) {
        acks.extend(msg.ack);
        if !self.pattern.matches(&msg.topic) && self.acks.matches(&msg.topic) {
            return self.command_ack(&msg.topic, &msg.payload, msg.arrived, msg.wall, log);
        }
        let result = self
            .pattern
            .device_id(&msg.topic)
            .and_then(|id| Ok((id, parse_payload(&msg.payload, msg.wall, self.freshness)?)))
            .and_then(|(id, report)| {
                self.engine.handle_telemetry(id, report, msg.arrived, msg.wall)?;
                Ok(id)
            });
        if let Ok(id) = result
            && let Some(device) = self.engine.table().get(id)
        {
            self.journal.report_as_received(&device, &msg.payload);
            self.remediation.handle_report(id, msg.arrived, msg.wall);
        }
        self.metrics.telemetry(result.as_ref().map(|_| ()));
        if let Err(refusal) = result
            && log.allow(msg.arrived)
        {
            // The topic may be attacker-chosen: shown escaped and cut short.
            let topic: String = msg.topic.chars().take(160).collect();
            tracing::info!(topic = ?topic, reason = refusal.label(), detail = %refusal, suppressed = log.take_suppressed(), "telemetry message ignored");
        }
    }

    /// A device's acknowledgement of a remediation command.
    fn command_ack(&mut self, topic: &str, payload: &[u8], arrived: Instant, wall: UnixMillis, log: &mut LogLimiter) {
        use crate::remediation::{AckRefusal, parse_ack};
        let result = match self.acks.device_id(topic) {
            Ok(device) => parse_ack(payload).and_then(|ack| self.remediation.handle_ack(device, &ack, arrived, wall)),
            Err(e) => Err(AckRefusal::Malformed(e.to_string())),
        };
        match result {
            Ok(()) => self.metrics.remediation_ack(Ok(())),
            Err(refusal) => {
                self.metrics.remediation_ack(Err(&refusal));
                if log.allow(arrived) {
                    let topic: String = topic.chars().take(160).collect();
                    tracing::info!(topic = ?topic, reason = refusal.label(), detail = %refusal, suppressed = log.take_suppressed(), "command acknowledgement ignored");
                }
            }
        }
    }

    /// After a restart: every failing rule's plan, rebuilt from the table
    /// (the remediation core keeps nothing on disk; see its docs).
    fn seed_remediation(&mut self) {
        let mut failing = Vec::new();
        self.engine.table().for_each(|d| {
            if !d.failures.is_empty() {
                failing.push(Arc::clone(d));
            }
        });
        let (now, wall) = (Instant::now(), wall_now());
        for d in &failing {
            self.remediation.seed(&d.id, &d.failures, now, wall);
        }
        self.after_remediation();
        if !self.remediation.is_empty() {
            tracing::info!(devices = self.remediation.len(), "remediation plans resumed");
        }
    }

    /// Publishes what the remediation core produced, and hands the engine
    /// each touched device's plan state (for its groups). True when that
    /// made engine events.
    fn after_remediation(&mut self) -> bool {
        let touched = super::remediation::after_batch(
            &mut self.remediation,
            &self.commands,
            &self.remediation_views,
            &self.metrics,
            &mut self.remediation_log,
            self.audit.as_mut(),
        );
        let (now, wall) = (Instant::now(), wall_now());
        let before = self.engine.generation();
        for id in touched {
            let plans = self.remediation.plans(&id);
            let escalated = plans.iter().any(|a| a.escalated);
            self.engine.set_remediation(&id, !plans.is_empty(), escalated, now, wall);
        }
        self.engine.generation() != before
    }

    /// Publishes every queued change and refreshes the device gauges.
    fn drain(&mut self) {
        let gaps = self.engine.take_seq_gaps();
        if gaps > 0 {
            self.metrics.telemetry_seq_gaps.inc_by(gaps);
        }
        self.outages();
        self.breaker();
        let mut forgotten = 0usize;
        while let Some(id) = self.engine.poll_forgotten() {
            forgotten += 1;
            self.journal.forgotten(&id);
            self.remediation.forget(&id);
            self.audit_record(Some(&id), "warden.device.forgotten", serde_json::json!({"after": "forget_after"}));
            tracing::debug!(device = %id, "device forgotten");
        }
        if forgotten > 0 {
            self.metrics.devices_forgotten.inc_by(forgotten as u64);
            self.metrics.set_devices(self.engine.counts());
            tracing::info!(forgotten, "devices silent for forget_after removed from the table");
        }
        while let Some(c) = self.engine.poll_conflict() {
            self.metrics.identity_conflict(c.kind);
            self.audit_record(
                Some(&c.claimant),
                "warden.identity.conflict",
                serde_json::json!({"kind": c.kind.label(), "owner": &*c.owner, "identity": &*c.identity}),
            );
            tracing::info!(device = %c.claimant, owner = %c.owner, kind = c.kind.label(), "identity claim refused: bound to another live device");
            tracing::debug!(identity = %c.identity, "refused identity");
        }
        let mut any = false;
        let start = self.outgoing.len();
        // The changes of this drain by device, once a second round needs it.
        let mut by_device: Option<std::collections::HashMap<Arc<str>, usize, foldhash::fast::RandomState>> = None;
        loop {
            let first = self.outgoing.len();
            while let Some(change) = self.engine.poll_event() {
                if change.cause == Cause::Remediation {
                    // A plan's state moved the device's groups right after
                    // an earlier change in this drain: one change for both,
                    // so planes and the status topic see one, not two.
                    let index = by_device.get_or_insert_with(|| {
                        self.outgoing[start..]
                            .iter()
                            .enumerate()
                            .map(|(i, c)| (Arc::clone(&c.device), start + i))
                            .collect()
                    });
                    if let Some(&i) = index.get(&change.device) {
                        let earlier = &self.outgoing[i];
                        let merged = Change {
                            old: earlier.old,
                            cause: earlier.cause,
                            at: earlier.at,
                            wall: earlier.wall,
                            ..change
                        };
                        self.outgoing[i] = Arc::new(merged);
                        continue;
                    }
                }
                self.metrics.verdict_change(change.old, change.new);
                if change.cause == Cause::OverrideExpired {
                    tracing::info!(device = %change.device, verdict = change.new.label(), "override expired; access follows the reports again");
                }
                if change.old != change.new {
                    let failed: Vec<String> = change.failures.iter().map(|f| f.key()).collect();
                    tracing::info!(device = %change.device, from = change.old.label(), to = change.new.label(), cause = change.cause.label(), ?failed, quarantine = change.enforce.quarantine, "verdict changed");
                }
                self.audit_change(&change);
                // Told to the planes once its record is written (commit.rs).
                self.outgoing.push(Arc::new(change));
            }
            let (now, wall) = (Instant::now(), wall_now());
            for change in self.outgoing[first..].iter().filter(|c| c.cause != Cause::Remediation) {
                self.remediation.handle_change(change, now, wall);
            }
            any |= self.outgoing.len() > first;
            // A plan that began, ended or escalated changes the device's
            // groups: that is a change too, and goes round once more.
            if !self.after_remediation() {
                break;
            }
        }
        if any {
            self.metrics.set_devices(self.engine.counts());
        }
    }

    /// The audit entry of a verdict change (before anything it causes).
    fn audit_change(&mut self, change: &Change) {
        let Some(a) = &mut self.audit else { return };
        let failed: Vec<String> = change.failures.iter().map(|f| f.key()).collect();
        let data = serde_json::json!({
            "from": change.old.label(),
            "to": change.new.label(),
            "cause": change.cause.label(),
            "failed_rules": failed,
            "quarantine": change.enforce.quarantine,
            "member_of": change.group_names(),
        });
        a.record(change.wall, "warden.verdict.changed", Some(&change.device), data);
    }

    /// Records an audit entry now (nothing when the trail is off).
    fn audit_record(&mut self, device: Option<&str>, kind: &str, data: serde_json::Value) {
        if let Some(a) = &mut self.audit {
            a.record(wall_now(), kind, device, data);
        }
    }

    /// Reports what the circuit breaker did and publishes what it holds.
    fn breaker(&mut self) {
        use crate::compliance::BreakerEvent;
        let mut any = false;
        while let Some(event) = self.engine.poll_breaker() {
            any = true;
            let audited = match &event {
                BreakerEvent::Held(h) => Some(("warden.changes.held", h.id, h.restricting)),
                BreakerEvent::Confirmed(h) => Some(("warden.changes.confirmed", h.id, h.restricting)),
                BreakerEvent::Superseded(_) => None,
            };
            if let Some((kind, id, restricting)) = audited {
                let mut data = serde_json::json!({"change": id, "restricting": restricting});
                if kind == "warden.changes.confirmed"
                    && let Some((by, from)) = self.confirmed_by.take()
                {
                    (data["by"], data["from"]) = (by.into(), from.into());
                }
                self.audit_record(None, kind, data);
            }
            match event {
                BreakerEvent::Held(h) => tracing::warn!(
                    change = h.id,
                    cause = h.cause.label(),
                    restricting = h.restricting,
                    devices = h.live,
                    "circuit breaker: a change would quarantine too many devices; held until confirmed (warden changes confirm {})",
                    h.id
                ),
                BreakerEvent::Confirmed(h) => {
                    tracing::info!(change = h.id, restricting = h.restricting, "held change confirmed and applied")
                }
                BreakerEvent::Superseded(h) => {
                    tracing::info!(change = h.id, "held change replaced by a newer one")
                }
            }
        }
        if any {
            let held = self.engine.held_changes();
            let before = self.held.send_replace(held).len();
            self.metrics.changes_pending.add(self.held.borrow().len() as i64 - before as i64);
        }
    }

    /// Reports the telemetry source's outages, and keeps the backlog of the
    /// latest one acceptable.
    fn outages(&mut self) {
        use crate::compliance::OutageEvent;
        while let Some(event) = self.engine.poll_outage() {
            match event {
                OutageEvent::Began { cause } => tracing::warn!(
                    cause = cause.label(),
                    grace = %humantime::format_duration(self.outage_grace),
                    "telemetry source out: verdicts held, silence enforces nothing"
                ),
                OutageEvent::Expired { fail_mode, held } => tracing::warn!(
                    ?fail_mode,
                    held,
                    "telemetry source still out after outage_grace; the fail mode applies"
                ),
                OutageEvent::Ended { cause, lasted, released } => tracing::info!(
                    cause = cause.label(),
                    lasted_ms = lasted.as_millis() as u64,
                    released,
                    "telemetry source back: held verdicts released"
                ),
            }
        }
        self.freshness.not_before = self.engine.accept_since();
        self.metrics.telemetry_source_up.set(i64::from(self.engine.outage().is_none()));
        self.metrics.verdicts_held.set(i64::try_from(self.engine.held()).unwrap_or(i64::MAX));
    }

    /// Applies an override, journals the device with it, and answers with
    /// the acknowledgement the commit task fires once that is durable.
    fn handle_override(&mut self, request: OverrideRequest, acks: &mut Vec<crate::gateway::mqtt::Ack>) {
        let (now, wall) = (Instant::now(), wall_now());
        let data = match &request.set {
            Some(o) => {
                serde_json::json!({"mode": o.mode.label(), "reason": o.reason, "by": request.by, "from": request.from, "until": crate::telemetry::report::format_rfc3339(o.until)})
            }
            None => serde_json::json!({"by": request.by, "from": request.from}),
        };
        let kind = if request.set.is_some() { "warden.override.set" } else { "warden.override.cleared" };
        if !self.engine.set_override(&request.device, request.set, now, wall) {
            let _ = request.reply.send(None);
            return;
        }
        self.audit_record(Some(&request.device), kind, data);
        if let Some(d) = self.engine.table().get(&request.device) {
            self.journal.report(&d);
        }
        let (durable, done) = tokio::sync::oneshot::channel();
        acks.push(crate::gateway::mqtt::Ack::Hook(durable));
        let _ = request.reply.send(Some(done));
    }

    /// Offers the status topic the current verdict of the next chunk of
    /// [`ComplianceTask::republish`], while few messages wait. Done here,
    /// between changes, so a republished verdict is never older than a
    /// change offered before it.
    fn republish_some(&mut self) {
        if self.status.len() >= REPUBLISH_CHUNK {
            return;
        }
        let at = self.republish.len().saturating_sub(REPUBLISH_CHUNK);
        let now = Instant::now();
        for id in self.republish.drain(at..) {
            if let Some(d) = self.engine.table().get(&id) {
                self.restated.push(Arc::new(Change {
                    device: id,
                    old: d.verdict,
                    new: d.verdict,
                    failures: d.failures.clone(),
                    enforce: d.enforce,
                    cause: Cause::Restart,
                    at: now,
                    // When the verdict began, not this message.
                    wall: d.since,
                    groups: d.groups,
                    group_set: Arc::clone(&self.engine.policies().groups),
                }));
            }
        }
        if self.republish.is_empty() {
            tracing::info!("current verdicts published again on the status topic");
        }
    }

    /// Hands this batch's journal records, with the acknowledgements the
    /// batch owes, to the commit task.
    async fn commit(&mut self, acks: &mut Vec<crate::gateway::mqtt::Ack>) {
        let records = self.journal.take();
        let audit = self.audit.as_mut().and_then(super::audit_trail::AuditTrail::take);
        if acks.is_empty()
            && records.bytes.is_empty()
            && self.outgoing.is_empty()
            && self.restated.is_empty()
            && audit.is_none()
        {
            return;
        }
        let commit = Commit {
            records,
            audit,
            acks: std::mem::take(acks),
            changes: std::mem::take(&mut self.outgoing),
            restated: std::mem::take(&mut self.restated),
        };
        // The commit task only stops when warden does.
        let _ = self.commits.send(commit).await;
    }

    /// Compacts: moves the journal to a new segment and writes the snapshot
    /// off the async threads, then removes the segments it covers. One at a
    /// time; false when one is still being written.
    fn snapshot(&mut self, busy: &Arc<AtomicBool>) -> bool {
        if busy.swap(true, Ordering::AcqRel) {
            return false;
        }
        let covers = match self.journal.rotate() {
            Ok((rest, previous)) => {
                // Empty in practice (every batch hands its records over as
                // it ends); if not, in order with the commits before it. A
                // full queue drops them: the snapshot about to be written
                // holds them, and until it is, nothing is acknowledged.
                if !rest.bytes.is_empty()
                    && self
                        .commits
                        .try_send(Commit {
                            records: rest,
                            audit: None,
                            acks: Vec::new(),
                            changes: Vec::new(),
                            restated: Vec::new(),
                        })
                        .is_err()
                {
                    self.durability.failed();
                }
                Some(previous)
            }
            Err(e) => {
                // Keep appending to the current segment; the snapshot still helps.
                self.durability.failed();
                self.metrics.journal_failures.inc();
                tracing::error!(error = %e, "compliance journal could not start a new segment");
                None
            }
        };
        // Taken after the rotation: the snapshot reads the table after this,
        // so it covers every failure counted so far, those just above too.
        let mark = self.durability.mark();
        let (table, dir, metrics, busy, durability) = (
            self.engine.table().clone(),
            self.state_dir.clone(),
            Arc::clone(&self.metrics),
            Arc::clone(busy),
            Arc::clone(&self.durability),
        );
        tokio::task::spawn_blocking(move || {
            match snapshot::write(&table, &dir) {
                Ok(n) => {
                    metrics.snapshot_devices.set(i64::try_from(n).unwrap_or(i64::MAX));
                    durability.covered(mark);
                    if let Some(last) = covers
                        && let Err(e) = journal::remove_through(&dir, last)
                    {
                        tracing::warn!(error = %e, "old compliance journal segments not removed");
                    }
                }
                Err(e) => {
                    metrics.snapshot_failures.inc();
                    tracing::error!(error = %e, dir = %dir.display(), "compliance snapshot failed");
                }
            }
            busy.store(false, Ordering::Release);
        });
        true
    }
}

/// Each policy file of `set` (and groups.toml) with the SHA-256 of its
/// content, for the audit trail's record of a reload.
fn policy_files(set: &PolicySet) -> Vec<serde_json::Value> {
    let mut paths: Vec<std::path::PathBuf> = set.policies.iter().map(|p| p.source.clone()).collect();
    let groups = set.policies.first().and_then(|p| p.source.parent()).map(|d| d.join(crate::policy::groups::FILE));
    paths.extend(groups.filter(|g| g.exists()));
    paths
        .iter()
        .map(|p| {
            let sha = std::fs::read(p).map(|b| {
                ring::digest::digest(&ring::digest::SHA256, &b)
                    .as_ref()
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<String>()
            });
            serde_json::json!({"file": p.display().to_string(), "sha256": sha.ok()})
        })
        .collect()
}
