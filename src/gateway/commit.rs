//! Group commit for telemetry, in two stages.
//!
//! The compliance task applies a batch of reports and serializes their
//! journal records. The **write stage** appends them to the journal (one
//! `write` per batch, on a blocking thread) and only then tells the planes
//! and the status topic what the batch changed: a verdict change is acted
//! on (a CoA sent, a WireGuard peer narrowed, a retained status published)
//! only once its record is in the file, so a `kill -9` after a device was
//! quarantined cannot bring it back with its older, wider verdict. The
//! **sync stage** makes what was written durable (one `fdatasync` for every
//! batch that queued meanwhile) and only then acknowledges the reports to
//! the broker, in the order they arrived (MQTT 3.1.1 §4.6 wants PUBACKs in
//! order). The two run side by side, so a change never waits for the
//! previous batch's sync. Writing here rather than on the compliance task
//! keeps a disk busy with writeback (a `write` to a page under writeback
//! waits for it) from stalling the task that applies telemetry.
//!
//! A crash can then cause redelivery (refused as a replay), never loss.
//!
//! When the journal cannot be written or synced, nothing since is
//! acknowledged until a snapshot begun after the failure has been written
//! (it holds everything applied before it). Then the connection is
//! dropped once, so the broker redelivers what went unacknowledged; those
//! messages are replays by then, and are acknowledged as such. The planes
//! are told about changes even when their write failed: enforcement does
//! not stop because the disk did.

// A shell: it owns a file and the MQTT client.
#![allow(clippy::disallowed_methods)]

use crate::compliance::{Change, journal};
use crate::gateway::mqtt::Ack;
use crate::gateway::status;
use crate::metrics::Metrics;
use rumqttc::AsyncClient;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

/// One batch of the compliance task.
pub struct Commit {
    /// The journal records it produced (possibly none).
    pub records: journal::Batch,
    /// The audit trail's lines recording what it did (written with the
    /// records, before the planes are told), and the sequence number of
    /// its last entry.
    pub audit: Option<(journal::Batch, u64)>,
    /// The acknowledgements the batch owes, in arrival order.
    pub acks: Vec<Ack>,
    /// The verdict changes it made, for the planes and the status topic,
    /// in order.
    pub changes: Vec<Arc<Change>>,
    /// Current verdicts stated again on the status topic only (after a
    /// restart: nothing changed, the planes have nothing to do).
    pub restated: Vec<Arc<Change>>,
}

/// Where verdict changes go once their records are written.
pub struct Outbox {
    /// The planes (RADIUS, WireGuard, the API's change stream).
    pub changes: broadcast::Sender<Arc<Change>>,
    /// The status topic, coalesced per device.
    pub status: Arc<status::Pending>,
    pub metrics: Arc<Metrics>,
    /// The audit trail's last durable entry, told once it is synced (the
    /// event stream reads up to it).
    pub audit_durable: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Outbox {
    fn tell(&self, changes: Vec<Arc<Change>>, restated: Vec<Arc<Change>>) {
        for change in changes {
            if self.status.offer(Arc::clone(&change)) {
                self.metrics.status_coalesced.inc();
            }
            let at = change.at;
            // No subscriber is not an error: the planes may not be configured.
            let _ = self.changes.send(change);
            self.metrics.verdict_seconds.observe(at.elapsed().as_secs_f64());
        }
        for change in restated {
            self.status.offer(change);
        }
    }
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

/// What the write stage hands the sync stage.
struct Written {
    /// The segments it wrote to.
    files: Vec<Arc<std::fs::File>>,
    acks: Vec<Ack>,
    /// The last audit entry written (0: none in this batch).
    audit_seq: u64,
}

/// Runs until the compliance task drops its sender.
pub async fn run(
    client: Option<AsyncClient>,
    connection: Arc<AtomicU64>,
    durability: Arc<Durability>,
    commits: mpsc::Receiver<Commit>,
    outbox: Outbox,
) {
    let metrics = Arc::clone(&outbox.metrics);
    let audit_durable = Arc::clone(&outbox.audit_durable);
    let (written_tx, written_rx) = mpsc::channel(QUEUE);
    let writer_durability = Arc::clone(&durability);
    // Its own thread, blocked on the channel: a change then costs one
    // wake-up between the compliance task and the planes (a task hop plus
    // a blocking-pool hop measured 50 µs more at p50), and a write that
    // waits on writeback stalls no async worker.
    let writer = std::thread::Builder::new()
        .name("warden-journal".into())
        .spawn(move || write_stage(commits, outbox, writer_durability, written_tx));
    if let Err(e) = writer {
        tracing::error!(error = %e, "could not start the journal writer thread; nothing is written or acknowledged");
        return;
    }
    sync_stage(client, connection, durability, written_rx, metrics, audit_durable).await;
}

/// Writes each batch's records, then tells the outbox what it changed.
/// Blocking: runs on its own thread.
fn write_stage(
    mut commits: mpsc::Receiver<Commit>,
    outbox: Outbox,
    durability: Arc<Durability>,
    written: mpsc::Sender<Written>,
) {
    let mut batch = Vec::new();
    while let Some(first) = commits.blocking_recv() {
        batch.push(first);
        while batch.len() < QUEUE
            && let Ok(c) = commits.try_recv()
        {
            batch.push(c);
        }
        let mut files: Vec<Arc<std::fs::File>> = Vec::new();
        let (mut changes, mut restated, mut acks) = (Vec::new(), Vec::new(), Vec::new());
        let mut stored = Ok(());
        let mut audit_seq = 0;
        for c in batch.drain(..) {
            if let Some((_, seq)) = &c.audit {
                audit_seq = audit_seq.max(*seq);
            }
            for records in
                std::iter::once(&c.records).chain(c.audit.as_ref().map(|a| &a.0)).filter(|r| !r.bytes.is_empty())
            {
                if !files.iter().any(|f| Arc::ptr_eq(f, &records.file)) {
                    files.push(Arc::clone(&records.file));
                }
                if stored.is_ok() {
                    stored = records.write();
                }
            }
            changes.extend(c.changes);
            restated.extend(c.restated);
            acks.extend(c.acks);
        }
        outbox.tell(changes, restated);
        if let Err(e) = &stored {
            durability.failed();
            outbox.metrics.journal_failures.inc();
            tracing::error!(error = %e, "compliance journal write failed; reports are not acknowledged until a snapshot holds them");
        }
        if stored.is_err() {
            audit_seq = 0; // not told as durable; the snapshot that covers the failure does not hold the trail
        }
        if (!files.is_empty() || !acks.is_empty()) && written.blocking_send(Written { files, acks, audit_seq }).is_err()
        {
            break;
        }
    }
}

/// Syncs what was written and acknowledges it, in order.
async fn sync_stage(
    client: Option<AsyncClient>,
    connection: Arc<AtomicU64>,
    durability: Arc<Durability>,
    mut written: mpsc::Receiver<Written>,
    metrics: Arc<Metrics>,
    audit_durable: Arc<tokio::sync::watch::Sender<u64>>,
) {
    let mut owed_redelivery = false;
    // The last audit entry written and not yet synced.
    let mut audit_written = 0u64;
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
            None => written.recv_many(&mut batch, QUEUE).await,
            Some(wait) => match tokio::time::timeout(wait, written.recv_many(&mut batch, QUEUE)).await {
                Ok(n) => n,
                Err(_) => usize::MAX, // time to sync, or to retry the acks
            },
        };
        if received == 0 {
            // Stopping: what was written is synced before the process ends.
            let last = std::mem::take(&mut unsynced);
            let _ = tokio::task::spawn_blocking(move || last.iter().try_for_each(|f| f.sync_data())).await;
            break;
        }
        let owes = batch.iter().any(|w: &Written| !w.acks.is_empty());
        audit_written = batch.iter().map(|w| w.audit_seq).fold(audit_written, u64::max);
        for f in batch.iter().flat_map(|w| &w.files) {
            if !unsynced.iter().any(|u| Arc::ptr_eq(u, f)) {
                unsynced.push(Arc::clone(f));
            }
        }
        if !unsynced.is_empty() && (owes || last_sync.elapsed() >= SYNC_EVERY) {
            let to_sync = std::mem::take(&mut unsynced);
            let started = Instant::now();
            let synced = tokio::task::spawn_blocking(move || to_sync.iter().try_for_each(|f| f.sync_data()))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            last_sync = Instant::now();
            metrics.journal_sync_seconds.observe(started.elapsed().as_secs_f64());
            if let Err(e) = &synced {
                durability.failed();
                metrics.journal_failures.inc();
                tracing::error!(error = %e, "compliance journal sync failed; reports are not acknowledged until a snapshot holds them");
            } else if audit_written > 0 {
                audit_durable.send_if_modified(|d| {
                    let newer = audit_written > *d;
                    *d = (*d).max(audit_written);
                    newer
                });
            }
        }
        let acks = batch.drain(..).flat_map(|w| w.acks);
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
        let task = tokio::spawn(run(Some(client), connection, Arc::default(), rx, outbox().0));
        let dir = tempfile::tempdir().unwrap();
        let mut writer = journal::Writer::create(dir.path(), 0).unwrap();
        let sent = async {
            for pkid in 1..=(QUEUE as u16 * 4) {
                let acks =
                    (0..8).map(|i| Ack::Client { connection: 1, pkid: pkid.wrapping_mul(8).wrapping_add(i) }).collect();
                tx.send(Commit {
                    records: writer.take(),
                    audit: None,
                    acks,
                    changes: Vec::new(),
                    restated: Vec::new(),
                })
                .await
                .unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), sent).await.expect("commits keep flowing");
        drop(tx);
        task.await.unwrap();
    }

    fn outbox() -> (Outbox, broadcast::Receiver<Arc<Change>>) {
        let (changes, rx) = broadcast::channel(16);
        let audit_durable = Arc::new(tokio::sync::watch::channel(0).0);
        (Outbox { changes, status: Arc::default(), metrics: Arc::new(Metrics::new()), audit_durable }, rx)
    }

    fn quarantined(device: &str) -> Arc<Change> {
        Arc::new(Change {
            device: device.into(),
            old: crate::compliance::Verdict::Compliant,
            new: crate::compliance::Verdict::Noncompliant,
            failures: Vec::new(),
            enforce: crate::compliance::Enforce { quarantine: true, deny_admission: true },
            cause: crate::compliance::Cause::Telemetry,
            at: Instant::now(),
            wall: 0,
            groups: 0,
            group_set: Arc::default(),
        })
    }

    /// The planes act on a change (a CoA, a narrowed peer, a retained
    /// status) only once its journal record is in the file: a `kill -9`
    /// right after the NAS saw the quarantine cannot bring the device back
    /// with its older verdict. Here the record's bytes must be in the
    /// segment by the time the change arrives, every time.
    #[tokio::test]
    async fn a_change_is_told_only_after_its_record_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, mut rx) = outbox();
        let status = Arc::clone(&outbox.status);
        let (tx, commits) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(None, Arc::default(), Arc::default(), commits, outbox));
        std::fs::write(dir.path().join("journal"), b"").unwrap();
        let shared = Arc::new(std::fs::OpenOptions::new().append(true).open(dir.path().join("journal")).unwrap());
        for round in 0..200u32 {
            let record = format!("record {round}\n").into_bytes();
            let records = journal::Batch { file: Arc::clone(&shared), bytes: record.clone() };
            let change = quarantined(&format!("d{round}"));
            tx.send(Commit { records, audit: None, acks: Vec::new(), changes: vec![change], restated: Vec::new() })
                .await
                .unwrap();
            let told = rx.recv().await.unwrap();
            assert_eq!(&*told.device, format!("d{round}"));
            let text = std::fs::read_to_string(dir.path().join("journal")).unwrap();
            assert!(text.ends_with(std::str::from_utf8(&record).unwrap()), "round {round}: told before written");
        }
        assert_eq!(status.len(), 200, "every change offered to the status topic too");
        drop(tx);
        task.await.unwrap();
    }

    /// A journal that cannot be written must not stop enforcement: the
    /// change still reaches the planes (narrowing access is always safe);
    /// only the acknowledgement is withheld.
    #[tokio::test]
    async fn a_failed_write_still_tells_the_planes_and_withholds_the_ack() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("journal"), b"").unwrap();
        // Opened read-only: every write fails.
        let file = Arc::new(std::fs::File::open(dir.path().join("journal")).unwrap());
        let (outbox, mut rx) = outbox();
        let durability = Arc::new(Durability::default());
        let (tx, commits) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(None, Arc::default(), Arc::clone(&durability), commits, outbox));
        let (ack, acked) = tokio::sync::oneshot::channel();
        let records = journal::Batch { file, bytes: b"record\n".to_vec() };
        let changes = vec![quarantined("d")];
        tx.send(Commit { records, audit: None, acks: vec![Ack::Hook(ack)], changes, restated: Vec::new() })
            .await
            .unwrap();
        assert_eq!(&*rx.recv().await.unwrap().device, "d");
        assert!(acked.await.is_err(), "nothing durable, nothing acknowledged");
        assert!(durability.degraded());
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
