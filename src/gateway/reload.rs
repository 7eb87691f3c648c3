//! Policy hot reload: on a change in the policy directory or on SIGHUP, the
//! whole set is loaded and compiled off the async threads; a valid set goes
//! to the compliance task, an invalid one is refused and the old set stays.

use crate::metrics::Metrics;
use crate::policy::PolicySet;
use notify::Watcher;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Editors write files in several steps: wait this long after the last event.
const SETTLE: Duration = Duration::from_millis(200);

pub async fn run(
    dir: PathBuf,
    to_engine: mpsc::Sender<PolicySet>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (kick_tx, mut kick) = mpsc::channel::<()>(16);
    let watcher_tx = kick_tx.clone();
    // The watcher calls back on its own thread; a full channel already
    // holds a pending reload, so dropping the extra kick is right.
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| !e.kind.is_access()) {
            let _ = watcher_tx.try_send(());
        }
    });
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(&dir, notify::RecursiveMode::Recursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the policy directory; reload with SIGHUP");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; reload policies with SIGHUP");
            None
        }
    };
    let mut hup = Hangups::new();
    loop {
        let hup_recv = hup.recv();
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(()) = kick.recv() => {}
            _ = hup_recv => tracing::info!("SIGHUP: reloading policies"),
        }
        // Let a burst of file events settle into one reload.
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SETTLE) => break,
                Some(()) = kick.recv() => {}
            }
        }
        let load_dir = dir.clone();
        let loaded = match tokio::task::spawn_blocking(move || PolicySet::load_dir(&load_dir)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "policy load task failed");
                continue;
            }
        };
        match loaded {
            Ok(set) => {
                metrics.policy_reloads_ok.inc();
                metrics.policy_rules.set(set.rule_count() as i64);
                tracing::info!(policies = set.policies.len(), rules = set.rule_count(), "policies reloaded");
                if to_engine.send(set).await.is_err() {
                    return;
                }
            }
            Err(errors) => {
                metrics.policy_reloads_failed.inc();
                for e in &errors {
                    tracing::error!("{e}");
                }
                tracing::error!(errors = errors.len(), "policy reload refused; the previous policies stay in force");
            }
        }
    }
}

/// SIGHUP as a stream; without a handler (it could not be installed) it
/// never fires, and that was logged once.
pub struct Hangups(Option<tokio::signal::unix::Signal>);

impl Hangups {
    pub fn new() -> Self {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Self(Some(s)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                Self(None)
            }
        }
    }

    /// The next SIGHUP.
    pub async fn recv(&mut self) -> Option<()> {
        match self.0.as_mut() {
            Some(s) => s.recv().await,
            None => std::future::pending().await,
        }
    }
}
