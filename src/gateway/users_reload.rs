//! The users file, reloaded on SIGHUP: read and checked on a blocking
//! thread while the shards keep answering with the users in force; a file
//! that does not load is refused (logged, counted) and the old users stay.

use super::reload::Hangups;
use crate::metrics::Metrics;
use crate::users::Users;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

pub async fn run(
    path: PathBuf,
    users: watch::Sender<Arc<Users>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut hup = Hangups::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = hup.recv() => {}
        }
        let load = path.clone();
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || Users::load(&load)).await {
            Ok(Ok(loaded)) => {
                metrics.users_reloads_ok.inc();
                metrics.radius_users.set(loaded.len() as i64);
                tracing::info!(
                    users = loaded.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "SIGHUP: users file reloaded"
                );
                users.send_replace(Arc::new(loaded));
            }
            Ok(Err(e)) => {
                metrics.users_reloads_failed.inc();
                tracing::error!("{e}");
                tracing::error!("users file reload refused; the previous users stay in force");
            }
            Err(e) => {
                metrics.users_reloads_failed.inc();
                tracing::error!(error = %e, "users file load task failed; the previous users stay in force");
            }
        }
    }
}
