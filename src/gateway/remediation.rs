//! The remediation core's shell: publishes its commands on each device's
//! command topic, and turns what it reports into logs, metrics and the
//! API's view of each device's plans. The compliance task drives the core
//! itself (it sees the verdict changes, reports and acknowledgements).

// A shell: it reads the clock for its log limiter and the audit trail.
#![allow(clippy::disallowed_methods)]

use super::log_limit::LogLimiter;
use crate::metrics::Metrics;
use crate::remediation::{Active, Command, Event, Remediation, State};
use crate::telemetry::report::format_rfc3339;
use rumqttc::{AsyncClient, QoS};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

pub use crate::http::requests::RemediationViews as Views;

/// Commands queued for the publisher; past this one is dropped and counted,
/// and the plan sends it again after its `retry_every`. Room for a policy
/// change that sets 250,000 plans going at once.
pub const QUEUE: usize = 262_144;

/// Publishes commands until `shutdown`, at QoS 1, not retained (the
/// retained message on a command topic is the WireGuard configuration).
pub async fn publish(
    client: AsyncClient,
    template: String,
    mut commands: mpsc::Receiver<Command>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let command = tokio::select! {
            c = commands.recv() => c,
            _ = shutdown.changed() => None,
        };
        let Some(c) = command else { break };
        let topic = template.replace("{device_id}", &c.device);
        // rumqttc queues it and sends it again until the broker acks it.
        if client.publish(topic, QoS::AtLeastOnce, false, c.payload()).await.is_err() {
            break;
        }
    }
}

/// After a batch of the compliance task: hands the core's commands to the
/// publisher, reports its events and refreshes the views it touched.
/// Returns the devices whose plans changed.
pub fn after_batch(
    r: &mut Remediation,
    commands: &mpsc::Sender<Command>,
    views: &Views,
    metrics: &Metrics,
    log: &mut LogLimiter,
    mut audit: Option<&mut super::audit_trail::AuditTrail>,
) -> Vec<Arc<str>> {
    while let Some(c) = r.poll_transmit() {
        if let Err(mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c)) = commands.try_send(c) {
            metrics.remediation_command(&c.action, "dropped");
        }
    }
    while let Some(e) = r.poll_event() {
        report(&e, metrics, log);
        if let Some(a) = audit.as_deref_mut() {
            record(a, &e);
        }
    }
    let mut touched = r.take_touched();
    touched.sort_unstable();
    touched.dedup();
    for device in &touched {
        let plans = r.plans(device);
        if plans.is_empty() {
            views.remove(device);
        } else {
            views.insert(Arc::clone(device), view(r, device, plans).to_string().into_boxed_str());
        }
    }
    metrics.remediation_plans.set(i64::try_from(r.len()).unwrap_or(i64::MAX));
    touched
}

/// Counts every event; logs the ones people act on, at most 20 lines per
/// 10 s (a policy change can start 100,000 plans at once; the metrics
/// carry the totals).
fn report(e: &Event, metrics: &Metrics, log: &mut LogLimiter) {
    let now = std::time::Instant::now();
    match e {
        Event::Sent { device, action, key, attempt } => {
            metrics.remediation_command(action, if *attempt > 1 { "resent" } else { "sent" });
            tracing::trace!(%device, %action, rule = %key, attempt, "remediation command sent");
        }
        Event::Command { device, action, key, state } => {
            metrics.remediation_command(action, state.label());
            let trouble = matches!(state, State::Failed | State::Expired | State::Unanswered);
            if trouble && log.allow(now) {
                tracing::info!(%device, %action, rule = %key, state = state.label(), suppressed = log.take_suppressed(), "remediation command did not succeed");
            } else {
                tracing::debug!(%device, %action, rule = %key, state = state.label(), "remediation command");
            }
        }
        Event::Remediated { device, key, took, escalated } => {
            metrics.remediation_seconds.observe(took.as_secs_f64());
            if log.allow(now) {
                tracing::info!(%device, rule = %key, took_s = took.as_secs(), escalated, suppressed = log.take_suppressed(), "remediated: a fresh report passes the rule");
            }
        }
        Event::Escalated { device, key } => {
            metrics.remediation_escalations.inc();
            if log.allow(now) {
                tracing::warn!(%device, rule = %key, suppressed = log.take_suppressed(), "remediation escalated: the plan's steps ran out and the rule still fails");
            }
        }
        Event::Stopped { device, key } => {
            tracing::debug!(%device, rule = %key, "remediation plan stopped: the rule no longer applies");
        }
    }
}

/// A device's plans for the API (PRODUCT.md: plan, step, commands and
/// their states).
fn view(r: &Remediation, device: &str, plans: &[Active]) -> Value {
    let plans: Vec<Value> = plans
        .iter()
        .map(|a| {
            let next = a.plan.steps.get(a.next_step).map(|s| {
                let after = i64::try_from(s.after.as_millis()).unwrap_or(i64::MAX);
                json!({"action": &*a.action(a.next_step), "at": format_rfc3339(a.since.saturating_add(after))})
            });
            let commands: Vec<Value> = a
                .commands
                .iter()
                .map(|c| {
                    json!({
                        "id": r.wire_id(c.id),
                        "action": &*a.action(usize::from(c.step)),
                        "state": c.state,
                        "attempts": c.attempts,
                        "issued": format_rfc3339(c.issued),
                        "expires": format_rfc3339(c.expires),
                        "reason": c.reason.as_deref(),
                    })
                })
                .collect();
            let rule = &a.policy.rules[usize::from(a.rule)];
            json!({
                "policy": a.policy.name,
                "rule": rule.id,
                "plan": a.plan.name,
                "since": format_rfc3339(a.since),
                "step": a.next_step,
                "next": next,
                "escalated": a.escalated,
                "commands": commands,
            })
        })
        .collect();
    json!({"away": r.away(device), "plans": plans})
}

/// The audit trail's entry for a remediation event people answer for: a
/// command sent (the first time) or ended, a plan remediated or escalated.
fn record(a: &mut super::audit_trail::AuditTrail, e: &Event) {
    let at = super::mqtt::wall_now();
    match e {
        Event::Sent { device, action, key, attempt: 1 } => {
            a.record(
                at,
                "warden.remediation.command",
                Some(device),
                json!({"action": &**action, "rule": key, "state": "sent"}),
            );
        }
        Event::Command { device, action, key, state } if state.is_final() => {
            a.record(
                at,
                "warden.remediation.command",
                Some(device),
                json!({"action": &**action, "rule": key, "state": state.label()}),
            );
        }
        Event::Remediated { device, key, took, escalated } => a.record(
            at,
            "warden.remediation.completed",
            Some(device),
            json!({"rule": key, "took_s": took.as_secs(), "took_ms": took.as_millis() as u64, "escalated": escalated}),
        ),
        Event::Escalated { device, key } => {
            a.record(at, "warden.remediation.escalated", Some(device), json!({"rule": key}))
        }
        _ => {}
    }
}
