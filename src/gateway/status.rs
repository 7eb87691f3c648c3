//! Retained verdict messages on `status_topic`, for other consumers (another
//! warden, a SIEM bridge, the device's own agent).

use crate::compliance::Change;
use crate::metrics::Metrics;
use rumqttc::{AsyncClient, QoS};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::broadcast;

pub async fn run(
    client: AsyncClient,
    template: String,
    mut changes: broadcast::Receiver<Arc<Change>>,
    metrics: Arc<Metrics>,
) {
    loop {
        let change = match changes.recv().await {
            Ok(c) => c,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                metrics.events_lagged.inc_by(n);
                metrics.status_dropped.inc_by(n);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let topic = template.replace("{device_id}", &change.device);
        let failed: Vec<_> = change
            .failures
            .iter()
            .map(|f| json!({"policy": f.policy.name, "rule": f.rule().id, "observed": &*f.observed, "expected": f.rule().check.expected()}))
            .collect();
        let payload = json!({
            "device_id": &*change.device,
            "verdict": change.new,
            "previous": change.old,
            "cause": change.cause.label(),
            "failed_rules": failed,
            "enforce": change.enforce,
            "at": crate::telemetry::report::format_rfc3339(change.wall),
        });
        // try_publish never waits: a full request queue drops the status
        // message (counted) rather than stalling verdict delivery. QoS 0:
        // the message is retained and the latest one wins, so a lost one is
        // superseded by the next change (the API is the authority); and a
        // QoS 1 publish through the embedded rumqttd stalls ~44 ms on Nagle +
        // delayed ACK (it sets no TCP_NODELAY), against 0.4 ms at QoS 0
        // (bench/RESULTS.md).
        match client.try_publish(topic, QoS::AtMostOnce, true, payload.to_string()) {
            Ok(()) => metrics.status_published.inc(),
            Err(_) => metrics.status_dropped.inc(),
        }
    }
}
