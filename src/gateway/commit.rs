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
use crate::gateway::mqtt::Ack;
use crate::metrics::Metrics;
use rumqttc::AsyncClient;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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
/// whose device acks do not wait for warden: see `mqtt::options`), the
/// journal is still synced this often (a `kill -9` keeps written records;
/// power loss needs the sync).
const SYNC_EVERY: Duration = Duration::from_millis(100);

/// Runs until the compliance task drops its sender.
pub async fn run(
    client: Option<AsyncClient>,
    connection: Arc<AtomicU64>,
    durability: Arc<Durability>,
    mut commits: mpsc::Receiver<Commit>,
    metrics: Arc<Metrics>,
) {
    let mut owed_redelivery = false;
    let mut batch = Vec::new();
    // Segments written since the last sync.
    let mut unsynced: Vec<Arc<std::fs::File>> = Vec::new();
    let mut last_sync = Instant::now();
    let mut pending: VecDeque<Ack> = VecDeque::new();
    loop {
        let wait = if !pending.is_empty() {
            Some(ACK_RETRY)
        } else if !unsynced.is_empty() {
            Some(SYNC_EVERY.saturating_sub(last_sync.elapsed()))
        } else {
            None
        };
        let received = match wait {
            None => commits.recv_many(&mut batch, QUEUE).await,
            Some(wait) => match tokio::time::timeout(wait, commits.recv_many(&mut batch, QUEUE)).await {
                Ok(n) => n,
                Err(_) => usize::MAX, // time to sync, or to retry the acks
            },
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
            if let Some(client) = &client {
                let _ = client.try_disconnect();
            }
            continue;
        }
        pending.extend(acks);
        send_acks(client.as_ref(), &connection, &mut pending);
    }
}

/// How soon acks that found rumqttc's request queue full are tried again.
const ACK_RETRY: Duration = Duration::from_millis(1);

/// Hands the acks to rumqttc's request queue, in order, without waiting:
/// the queue is drained by the task that polls the MQTT event loop, and
/// that task may itself be waiting for the compliance task, which may be
/// waiting for this one. Waiting here deadlocked all three under load (a
/// full telemetry queue). What does not fit stays in `pending` for the next
/// round; an ack for an earlier connection is dropped (see [`Ack`]).
fn send_acks(client: Option<&AsyncClient>, connection: &AtomicU64, pending: &mut VecDeque<Ack>) {
    let current = connection.load(Ordering::Acquire);
    while let Some(a) = pending.front() {
        if let (Ack::Client { connection, pkid }, Some(client)) = (a, client)
            && *connection == current
            && client.try_ack(&Ack::publish(*pkid)).is_err()
        {
            return;
        }
        if let Some(Ack::Hook(device)) = pending.pop_front() {
            // The device may have gone meanwhile; its report is stored.
            let _ = device.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task that polls the MQTT event loop may be waiting for the
    /// compliance task, which may be waiting for this one: acks must never
    /// wait on the event loop. Here it is never polled at all, and commits
    /// carrying thousands of acks still flow through.
    #[tokio::test]
    async fn acks_never_wait_on_the_mqtt_event_loop() {
        let opts = rumqttc::MqttOptions::new("t", "127.0.0.1", 9);
        let (client, _eventloop) = AsyncClient::new(opts, 1);
        let connection = Arc::new(AtomicU64::new(1));
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(Some(client), connection, Arc::default(), rx, Arc::new(Metrics::new())));
        let dir = tempfile::tempdir().unwrap();
        let mut writer = journal::Writer::create(dir.path(), 0).unwrap();
        let sent = async {
            for pkid in 1..=(QUEUE as u16 * 4) {
                let acks =
                    (0..8).map(|i| Ack::Client { connection: 1, pkid: pkid.wrapping_mul(8).wrapping_add(i) }).collect();
                tx.send(Commit { records: writer.take(), acks }).await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), sent).await.expect("commits keep flowing");
        drop(tx);
        task.await.unwrap();
    }

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
