//! EAP conversations off the request path. A TLS handshake round costs a
//! signature (about a millisecond); run on the auth shards, a storm of
//! EAP-TLS authentications would queue every MAB and PAP request behind
//! it. The pool runs them on threads of their own instead:
//!
//! - one [`EapServer`] per worker, each holding its own conversations; every
//!   State it hands out starts with its partition, so each later round goes
//!   back to the worker that holds the conversation, whichever shard
//!   received it;
//! - each worker's queue is bounded: a full queue answers nothing (the NAS
//!   retransmits) and is counted (`eap_pool_busy`);
//! - results go back to the shard that asked, which maps them to the
//!   verdict's decision exactly as before.

use crate::eap::server::{EapServer, MethodId, Outcome, partition_of};
use crate::metrics::{Metrics, RadiusKind};
use crate::radius::server::AccessRequest;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Rounds waiting per worker. A round takes up to about a millisecond, so
/// a full queue is well under a NAS's retransmission time.
const QUEUE: usize = 128;
/// How long an idle worker with no conversation waits before looking again
/// (only to notice that the pool is gone; jobs wake it at once).
const IDLE: Duration = Duration::from_secs(60);

/// One round of a conversation, and where its answer goes.
pub struct Job {
    pub req: AccessRequest,
    pub reply: UnboundedSender<Done>,
}

/// A round answered: the request it answers, the core's outcome, and the
/// conversation's method (a metric label).
pub struct Done {
    pub req: AccessRequest,
    pub outcome: Outcome,
    pub method: RadiusKind,
}

pub struct EapPool {
    workers: Vec<SyncSender<Job>>,
    /// Where the next new conversation goes.
    next: AtomicUsize,
}

impl EapPool {
    /// Starts `workers` threads, the i-th running `make(i)` (at most 256:
    /// a partition is one byte of the State).
    pub fn start(workers: usize, make: impl Fn(u8) -> EapServer, metrics: &Arc<Metrics>) -> std::io::Result<Self> {
        let workers = workers.clamp(1, 256);
        let mut senders = Vec::with_capacity(workers);
        for i in 0..workers {
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
            let server = make(i as u8).with_partition(i as u8);
            let metrics = Arc::clone(metrics);
            std::thread::Builder::new().name(format!("warden-eap-{i}")).spawn(move || work(server, &rx, &metrics))?;
            senders.push(tx);
        }
        Ok(Self { workers: senders, next: AtomicUsize::new(0) })
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Queues one round with the worker that holds its conversation (a new
    /// one: the next worker in turn). `Err`: that worker is full.
    pub fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        let i = match job.req.state.as_deref() {
            Some(state) => usize::from(partition_of(state)) % self.workers.len(),
            None => self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len(),
        };
        self.workers[i].try_send(job).map_err(|e| match e {
            TrySendError::Full(j) | TrySendError::Disconnected(j) => Box::new(j),
        })
    }
}

/// How much lower than the shards a worker runs (nice). MAB and PAP answers
/// are small and their latency is what a NAS waits on; a handshake round
/// can wait for a free core a few milliseconds longer.
const NICENESS: i32 = 10;

/// A worker: rounds in, outcomes out, idle conversations swept. Ends when
/// the pool is dropped.
fn work(mut server: EapServer, jobs: &Receiver<Job>, metrics: &Metrics) {
    // Linux's nice value is per thread: this lowers the worker only.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICENESS) {
        tracing::debug!(error = %e, "EAP worker keeps the shards' priority");
    }
    let mut held = 0usize;
    loop {
        // Until the next job, or the core's next deadline.
        let wait = server.poll_timeout().map_or(IDLE, |t| t.saturating_duration_since(Instant::now()));
        let job = match jobs.recv_timeout(wait) {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let now = Instant::now();
        server.handle_timeout(now);
        if let Some(Job { req, reply }) = job {
            let outcome = server.handle(
                req.eap_message.as_deref().unwrap_or_default(),
                req.state.as_deref(),
                req.framed_mtu,
                now,
            );
            let method = match server.last_method {
                None => RadiusKind::Eap,
                Some(MethodId::Tls) => RadiusKind::EapTls,
                Some(MethodId::Peap) => RadiusKind::Peap,
            };
            // The shard may be gone (shutting down): nothing to answer then.
            let _ = reply.send(Done { req, outcome, method });
        }
        while let Some(refusal) = server.poll_event() {
            metrics.eap_refusal(refusal);
        }
        // The gauge is the sum over workers: each adds its own change.
        metrics.eap_sessions.add(server.len() as i64 - held as i64);
        held = server.len();
    }
}
