//! Group commit for telemetry: the compliance task applies a batch of
//! reports and serializes their journal records; this task writes them and
//! makes them durable (one `write` per batch and one `fdatasync` for every
//! batch that queued meanwhile, on a blocking thread) and only then
//! acknowledges them to the broker, in the order they arrived (MQTT 3.1.1
//! §4.6 wants PUBACKs in order). Writing here rather than on the compliance
//! task keeps a disk busy with writeback (a `write` to a page under
//! writeback waits for it) from stalling the task that applies telemetry.
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

use crate::compliance::journal;
use crate::metrics::Metrics;
use crate::telemetry::ingest::Ack;
use rumqttc::AsyncClient;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// One batch of the compliance task.
pub struct Commit {
    /// The journal records it produced (possibly none).
    pub records: journal::Batch,
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

/// With no acknowledgement waiting on it (QoS 0, or the embedded broker,
/// whose device acks do not wait for warden: see `ingest::options`), the
/// journal is still synced this often (a `kill -9` keeps written records;
/// power loss needs the sync).
const SYNC_EVERY: Duration = Duration::from_millis(100);

/// Runs until the compliance task drops its sender.
pub async fn run(
    client: AsyncClient,
    connection: Arc<AtomicU64>,
    durability: Arc<Durability>,
    mut commits: mpsc::Receiver<Commit>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut owed_redelivery = false;
    let mut batch = Vec::new();
    // Segments written since the last sync.
    let mut unsynced: Vec<Arc<std::fs::File>> = Vec::new();
    let mut last_sync = Instant::now();
    loop {
        let received = if unsynced.is_empty() {
            commits.recv_many(&mut batch, QUEUE).await
        } else {
            let wait = SYNC_EVERY.saturating_sub(last_sync.elapsed());
            match tokio::time::timeout(wait, commits.recv_many(&mut batch, QUEUE)).await {
                Ok(n) => n,
                Err(_) => usize::MAX, // time to sync what is written
            }
        };
        if received == 0 {
            break;
        }
        let owes = batch.iter().any(|c| !c.acks.is_empty());
        let writes: Vec<journal::Batch> = batch
            .iter_mut()
            .filter(|c| !c.records.bytes.is_empty())
            .map(|c| journal::Batch { file: Arc::clone(&c.records.file), bytes: std::mem::take(&mut c.records.bytes) })
            .collect();
        for w in &writes {
            if !unsynced.iter().any(|f| Arc::ptr_eq(f, &w.file)) {
                unsynced.push(Arc::clone(&w.file));
            }
        }
        let sync = !unsynced.is_empty() && (owes || last_sync.elapsed() >= SYNC_EVERY);
        let to_sync = if sync { std::mem::take(&mut unsynced) } else { Vec::new() };
        let started = Instant::now();
        let stored = tokio::task::spawn_blocking(move || {
            writes.iter().try_for_each(journal::Batch::write)?;
            to_sync.iter().try_for_each(|f| f.sync_data())
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if sync {
            last_sync = Instant::now();
            metrics.journal_sync_seconds.observe(started.elapsed().as_secs_f64());
        }
        if let Err(e) = &stored {
            durability.failed();
            metrics.journal_failures.inc();
            tracing::error!(error = %e, "compliance journal write or sync failed; reports are not acknowledged until a snapshot holds them");
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
        for a in acks {
            if a.connection == current && !send_ack(&client, a, &mut shutdown).await {
                // The event loop is gone: warden is stopping.
                return;
            }
        }
    }
}

/// Sends one PUBACK; false once warden is stopping. Then the MQTT event
/// loop is no longer polled and the ack could wait forever for room in its
/// queue: what is not acknowledged by then is redelivered on the next start.
async fn send_ack(client: &AsyncClient, ack: Ack, shutdown: &mut watch::Receiver<bool>) -> bool {
    let publish = ack.publish();
    tokio::select! {
        r = client.ack(&publish) => r.is_ok(),
        _ = shutdown.wait_for(|stop| *stop) => false,
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
