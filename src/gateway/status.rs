//! Retained verdict messages on `status_topic`, for other consumers (another
//! warden, an IdP bridge, a SIEM, the device's own agent).
//!
//! Coalesced per device: the compliance task leaves each change in
//! [`Pending`] (a newer change for the same device replaces the older), and
//! this task publishes whatever is pending whenever it can. A slow broker
//! thus skips intermediate states and never the latest one, and nothing
//! grows past one entry per device. The messages go at QoS 1, so a consumer
//! always converges on the current verdict.

use crate::compliance::Change;
use crate::metrics::Metrics;
use rumqttc::{AsyncClient, QoS};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{Notify, watch};

/// The latest unpublished change of each device.
#[derive(Default)]
pub struct Pending {
    changes: Mutex<HashMap<Arc<str>, Arc<Change>, foldhash::fast::RandomState>>,
    wake: Notify,
}

impl Pending {
    /// Leaves `change` for publication; returns true when it replaced an
    /// unpublished change of the same device.
    pub fn offer(&self, change: Arc<Change>) -> bool {
        let replaced = self
            .changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(Arc::clone(&change.device), change)
            .is_some();
        self.wake.notify_one();
        replaced
    }

    /// Changes waiting to be published.
    pub fn len(&self) -> usize {
        self.changes.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn take(&self) -> HashMap<Arc<str>, Arc<Change>, foldhash::fast::RandomState> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The retained message for `change`.
fn payload(change: &Change) -> String {
    let failed: Vec<_> = change
        .failures
        .iter()
        .map(|f| json!({"policy": f.policy.name, "rule": f.rule().id, "observed": &*f.observed, "expected": f.rule().check.expected()}))
        .collect();
    json!({
        "device_id": &*change.device,
        "verdict": change.new,
        "previous": change.old,
        "cause": change.cause.label(),
        "failed_rules": failed,
        "enforce": change.enforce,
        "member_of": change.group_names(),
        "at": crate::telemetry::report::format_rfc3339(change.wall),
    })
    .to_string()
}

/// Publishes what is pending until `shutdown`, retained, at QoS 1 (the
/// broker keeps what it acknowledged, through either kind of broker).
pub async fn run(
    client: AsyncClient,
    template: String,
    pending: Arc<Pending>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = pending.wake.notified() => {}
            _ = shutdown.changed() => return,
        }
        for (device, change) in pending.take() {
            let topic = template.replace("{device_id}", &device);
            // Waits for room in the client's queue: meanwhile newer changes
            // coalesce in `pending` instead of being dropped.
            let sent = tokio::select! {
                r = client.publish(topic, QoS::AtLeastOnce, true, payload(&change)) => r,
                _ = shutdown.changed() => return,
            };
            match sent {
                Ok(()) => metrics.status_published.inc(),
                Err(_) => metrics.status_dropped.inc(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn a_newer_change_replaces_the_unpublished_one() {
        use crate::compliance::{Cause, Enforce, Verdict};
        let pending = Pending::default();
        let change = |new| {
            Arc::new(Change {
                device: "pos-1".into(),
                old: Verdict::Compliant,
                new,
                failures: Vec::new(),
                enforce: Enforce::default(),
                cause: Cause::Telemetry,
                at: std::time::Instant::now(),
                wall: 1,
                groups: 0,
                group_set: Arc::default(),
            })
        };
        assert!(!pending.offer(change(Verdict::Noncompliant)));
        assert!(pending.offer(change(Verdict::Compliant)));
        let taken = pending.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken["pos-1"].new, Verdict::Compliant, "the latest wins");
        assert!(pending.take().is_empty());
    }
}
