//! Group commit for telemetry: the compliance task applies a batch of
//! reports and writes their journal records; this task makes them durable
//! (one `fdatasync` for every batch that queued meanwhile, off the async
//! threads) and only then acknowledges them to the broker, in the order
//! they arrived (MQTT 3.1.1 §4.6 wants PUBACKs in order).
//!
//! A crash can then cause redelivery (refused as a replay), never loss.
//!
//! When the journal cannot be written or synced, nothing since is
//! acknowledged until a snapshot begun after the failure has been written
//! (it holds everything applied before it). Then the connection is
//! dropped once, so the broker redelivers what went unacknowledged; those
//! messages are replays by then, and are acknowledged as such.

// A shell: it owns a file and the MQTT client.
#![allow(clippy::disallowed_methods)]

use crate::metrics::Metrics;
use crate::telemetry::ingest::Ack;
use rumqttc::AsyncClient;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// One batch of the compliance task.
pub struct Commit {
    /// The journal segment written to, when the batch wrote anything.
    pub file: Option<Arc<std::fs::File>>,
    /// The acknowledgements the batch owes, in arrival order.
    pub acks: Vec<Ack>,
}

/// Durability failures, and how many of them a written snapshot covers.
#[derive(Debug, Default)]
pub struct Durability {
    failures: AtomicU64,
    covered: AtomicU64,
}

impl Durability {
    /// A write or sync failed: nothing is acknowledged until a snapshot
    /// begun after now has been written.
    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::AcqRel);
    }

    /// The mark to give [`Durability::covered`] for a snapshot beginning now.
    pub fn mark(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }

    /// A snapshot begun at `mark` was written.
    pub fn covered(&self, mark: u64) {
        self.covered.fetch_max(mark, Ordering::AcqRel);
    }

    /// True while a failure is not yet covered by a snapshot.
    pub fn degraded(&self) -> bool {
        self.covered.load(Ordering::Acquire) < self.failures.load(Ordering::Acquire)
    }
}

/// Batches that may queue before the compliance task waits for the disk.
pub const QUEUE: usize = 256;

/// Runs until the compliance task drops its sender.
pub async fn run(
    client: AsyncClient,
    connection: Arc<AtomicU64>,
    durability: Arc<Durability>,
    mut commits: mpsc::Receiver<Commit>,
    metrics: Arc<Metrics>,
) {
    let mut owed_redelivery = false;
    let mut batch = Vec::new();
    loop {
        if commits.recv_many(&mut batch, QUEUE).await == 0 {
            break;
        }
        let mut files: Vec<Arc<std::fs::File>> = Vec::new();
        for c in &batch {
            if let Some(f) = &c.file
                && !files.iter().any(|seen| Arc::ptr_eq(seen, f))
            {
                files.push(Arc::clone(f));
            }
        }
        let synced = if files.is_empty() {
            Ok(())
        } else {
            let started = std::time::Instant::now();
            let result = tokio::task::spawn_blocking(move || files.iter().try_for_each(|f| f.sync_data()))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            metrics.journal_sync_seconds.observe(started.elapsed().as_secs_f64());
            result
        };
        if let Err(e) = &synced {
            durability.failed();
            metrics.journal_failures.inc();
            tracing::error!(error = %e, "compliance journal sync failed; reports are not acknowledged until a snapshot holds them");
        }
        let acks = batch.drain(..).flat_map(|c| c.acks);
        if durability.degraded() {
            let dropped = acks.count();
            if dropped > 0 {
                owed_redelivery = true;
                metrics.telemetry_acks_withheld.inc_by(dropped as u64);
            }
            continue;
        }
        if owed_redelivery {
            // Covered by a snapshot now: have the broker send again what
            // went unacknowledged (a fresh connection, same session).
            owed_redelivery = false;
            tracing::info!("compliance state durable again; reconnecting for the unacknowledged reports");
            let _ = client.try_disconnect();
            continue;
        }
        let current = connection.load(Ordering::Acquire);
        for ack in acks {
            if ack.connection != current {
                continue;
            }
            if client.ack(&ack.publish()).await.is_err() {
                // The event loop is gone: warden is stopping.
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_degrades_until_a_snapshot_begun_after_it_is_written() {
        let d = Durability::default();
        assert!(!d.degraded());
        let before = d.mark();
        d.failed();
        assert!(d.degraded());
        d.covered(before);
        assert!(d.degraded(), "a snapshot begun before the failure does not cover it");
        let after = d.mark();
        d.failed();
        d.covered(after);
        assert!(d.degraded(), "a second failure after the snapshot began is not covered");
        d.covered(d.mark());
        assert!(!d.degraded());
    }
}
