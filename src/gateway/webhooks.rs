//! The webhook sinks' shell: one task per `[[events.webhooks]]` that reads
//! the audit trail after the sink's cursor (never past the last durable
//! entry), drives the delivery core ([`crate::events::Delivery`]) and
//! makes its HTTP requests, signed per Standard Webhooks.
//!
//! The cursor is kept in `state_dir/events/NAME.cursor`, replaced
//! atomically at most once a second and at a stop: a crash delivers again
//! at most what was delivered since (at-least-once, same `webhook-id`). A
//! new sink starts at the trail's end: it gets what happens from then on,
//! not the trail's history (which `GET /api/v1/audit` pages through).
//!
//! Nothing here is on the enforcement path: the compliance task writes the
//! trail whatever the sinks do, and a sink that is down costs a file
//! position and a bounded read-ahead.

// A shell: it owns sockets, files and the clock.
#![allow(clippy::disallowed_methods)]

use crate::audit::reader::Reader;
use crate::events::config::Webhook;
use crate::events::{Attempt, Delivery, Outcome, Settings};
use crate::metrics::{Metrics, WebhookResult};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// How often a changed cursor is saved.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// How much of an answer's body is read (then the connection is dropped).
const MAX_ANSWER: usize = 64 << 10;

/// One sink's task.
pub struct Sink {
    pub hook: Webhook,
    pub settings: Settings,
    /// The CloudEvents `source`.
    pub source: String,
    /// The audit trail's directory.
    pub trail: PathBuf,
    /// Where the cursors are kept.
    pub cursors: PathBuf,
    /// The last durable entry of the trail.
    pub durable: watch::Receiver<u64>,
    pub metrics: Arc<Metrics>,
}

impl Sink {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let name = self.hook.name.clone();
        let cursor_path = self.cursors.join(format!("{name}.cursor"));
        let head = *self.durable.borrow();
        let start = match start_cursor(&cursor_path, head) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(sink = %name, error = %e, "webhook: cannot keep its cursor; the sink is not started");
                return;
            }
        };
        tracing::info!(sink = %name, url = %self.hook.url, after = start, "webhook sink started");
        let mut delivery = Delivery::new(self.settings.clone(), start, fastrand::u64(..));
        let mut client = match Client::new(&self.hook) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(sink = %name, error = %e, "webhook: no TLS configuration; the sink is not started");
                return;
            }
        };
        let mut reader: Option<Reader> = None;
        let (mut saved, mut last_save) = (start, Instant::now());
        let backlog = self.metrics.webhook_backlog.with_label_values(&[&name]);
        loop {
            let head = *self.durable.borrow_and_update();
            if delivery.behind(head).is_some() {
                reader = None; // read on from where the core skipped to
            }
            // Read ahead while there is room and the trail has more.
            let mut caught_up = delivery.read_to() >= head;
            if !caught_up && delivery.room() > 0 {
                let progressed = self.read(&mut reader, &mut delivery, head).await;
                caught_up = !progressed;
            }
            self.outcomes(&mut delivery);
            backlog.set(i64::try_from(head.saturating_sub(delivery.cursor())).unwrap_or(i64::MAX));
            if let Some(attempt) = delivery.poll_transmit(crate::gateway::mqtt::wall_now()) {
                let ok = tokio::select! {
                    ok = client.post(&attempt) => ok,
                    _ = shutdown.changed() => break,
                };
                delivery.on_result(crate::gateway::mqtt::wall_now(), ok);
                self.outcomes(&mut delivery);
                continue;
            }
            if delivery.cursor() != saved && last_save.elapsed() >= SAVE_EVERY {
                save_cursor(&cursor_path, delivery.cursor());
                (saved, last_save) = (delivery.cursor(), Instant::now());
            }
            if !caught_up && delivery.room() > 0 {
                continue;
            }
            let wake = delivery.poll_timeout().map(|at| {
                let wait = at.saturating_sub(crate::gateway::mqtt::wall_now()).max(0);
                tokio::time::Instant::now() + Duration::from_millis(wait as u64)
            });
            let unsaved = delivery.cursor() != saved;
            tokio::select! {
                // More in the trail (only waited for once this has read it all).
                r = self.durable.changed(), if caught_up => if r.is_err() { break },
                _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {}
                _ = tokio::time::sleep(SAVE_EVERY), if unsaved || (!caught_up && wake.is_none()) => {}
                _ = shutdown.changed() => break,
            }
        }
        save_cursor(&cursor_path, delivery.cursor());
    }

    /// Reads trail entries after the core's position into it; false when
    /// nothing new could be read.
    async fn read(&self, reader: &mut Option<Reader>, delivery: &mut Delivery, head: u64) -> bool {
        let from = delivery.read_to();
        let room = delivery.room();
        let dir = self.trail.clone();
        let r = reader.take();
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<(Reader, Vec<serde_json::Value>)> {
            let mut r = match r {
                Some(r) if r.after() == from => r,
                _ => Reader::seek(&dir, from)?,
            };
            let mut out = Vec::new();
            r.read(head, room, &mut out)?;
            Ok((r, out))
        })
        .await;
        let (r, entries) = match read {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                tracing::error!(sink = %self.hook.name, error = %e, "webhook: the audit trail could not be read");
                return false;
            }
            Err(_) => return false,
        };
        for entry in &entries {
            match crate::events::from_entry(entry, &self.source) {
                Some(ev) if self.hook.wants(&ev.kind) => delivery.push(ev),
                Some(ev) => delivery.pass(ev.seq),
                None => {}
            }
        }
        delivery.pass(r.after());
        let progressed = r.after() > from;
        *reader = Some(r);
        progressed
    }

    fn outcomes(&self, delivery: &mut Delivery) {
        let name = &self.hook.name;
        while let Some(o) = delivery.poll_outcome() {
            match o {
                Outcome::Delivered { events, .. } => self.metrics.webhook(WebhookResult::Delivered, events as u64),
                Outcome::Failed { attempt, retry_in } => {
                    self.metrics.webhook(WebhookResult::Failed, 1);
                    // The first failure and then each tenth: a dead sink is
                    // not a log flood.
                    if attempt == 1 || attempt % 10 == 0 {
                        tracing::warn!(sink = %name, attempt, retry_in_ms = retry_in, "webhook delivery failed; trying again");
                    }
                }
                Outcome::Expired { events, first_seq } => {
                    self.metrics.webhook(WebhookResult::Expired, events as u64);
                    tracing::error!(sink = %name, events, first_seq, "webhook: events given up after events.retry_for");
                }
                Outcome::Skipped { entries } => {
                    self.metrics.webhook(WebhookResult::Skipped, entries);
                    tracing::error!(sink = %name, entries, "webhook: sink more than events.max_backlog behind; its oldest entries skipped");
                }
            }
        }
    }
}

/// The cursor to start from: the saved one, or for a new sink the trail's
/// end, saved at once (a crash before the first delivery must not move a
/// new sink's start to a later end).
fn start_cursor(path: &Path, head: u64) -> std::io::Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(text) => match text.trim().parse() {
            Ok(c) => Ok(c),
            Err(_) => {
                // Damaged: everything kept is a candidate again; the core
                // gives up what is older than retry_for, counted.
                tracing::error!(file = %path.display(), "webhook cursor unreadable; delivering from the oldest entry within events.retry_for");
                Ok(0)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            write_cursor(path, head)?;
            Ok(head)
        }
        Err(e) => Err(e),
    }
}

fn save_cursor(path: &Path, cursor: u64) {
    if let Err(e) = write_cursor(path, cursor) {
        tracing::error!(file = %path.display(), error = %e, "webhook cursor not saved; a restart delivers again from the last one saved");
    }
}

/// Replaces the cursor file whole.
fn write_cursor(path: &Path, cursor: u64) -> std::io::Result<()> {
    crate::durable::replace(path, format!("{cursor}\n").as_bytes())
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An HTTP/1.1 client for one sink: one kept-alive connection, made again
/// after any failure.
struct Client {
    hook: Webhook,
    tls: Option<tokio_rustls::TlsConnector>,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    fn new(hook: &Webhook) -> Result<Self, rustls::Error> {
        let tls = if hook.scheme_https { Some(tls_connector(hook)?) } else { None };
        Ok(Self { hook: hook.clone(), tls, sender: None })
    }

    /// One attempt, bounded by the sink's timeout: true on a 2xx answer.
    async fn post(&mut self, attempt: &Attempt) -> bool {
        match tokio::time::timeout(self.hook.timeout, self.try_post(attempt)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => true,
            Ok(Ok(status)) => {
                tracing::debug!(sink = %self.hook.name, status, "webhook answered with a failure");
                false
            }
            Ok(Err(e)) => {
                self.sender = None;
                tracing::debug!(sink = %self.hook.name, error = %e, "webhook request failed");
                false
            }
            Err(_) => {
                self.sender = None;
                tracing::debug!(sink = %self.hook.name, "webhook request timed out");
                false
            }
        }
    }

    async fn try_post(&mut self, attempt: &Attempt) -> anyhow::Result<u16> {
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        sender.ready().await?;
        let timestamp = crate::gateway::mqtt::wall_now() / 1000;
        let signature = crate::events::sign(&self.hook.key, &attempt.id, timestamp, &attempt.body);
        let host = if self.hook.host.contains(':') { format!("[{}]", self.hook.host) } else { self.hook.host.clone() };
        let request = hyper::Request::post(&self.hook.target)
            .header(hyper::header::HOST, format!("{host}:{}", self.hook.port))
            .header(hyper::header::CONTENT_TYPE, attempt.content_type)
            .header(hyper::header::USER_AGENT, concat!("warden/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", &attempt.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::copy_from_slice(&attempt.body)))?;
        let answer = sender.send_request(request).await?;
        let status = answer.status().as_u16();
        // Read the answer through (bounded) so the connection can carry
        // the next request.
        Limited::new(answer.into_body(), MAX_ANSWER).collect().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        self.sender = Some(sender);
        Ok(status)
    }

    async fn connect(&self) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let tcp = tokio::net::TcpStream::connect((self.hook.host.as_str(), self.hook.port)).await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(self.hook.host.clone())?;
                Box::new(tls.connect(name, tcp).await?)
            }
        };
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// TLS for an `https` sink: the system's CAs and the sink's `ca_file`.
fn tls_connector(hook: &Webhook) -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if let Some(p) = &hook.ca_file {
        match std::fs::read(p) {
            Ok(pem) => {
                use rustls_pki_types::pem::PemObject as _;
                let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
                let (ok, bad) = roots.add_parsable_certificates(certs);
                if ok == 0 || bad > 0 {
                    tracing::warn!(sink = %hook.name, file = %p.display(), ok, bad, "webhook ca_file: not every certificate was usable");
                }
            }
            Err(e) => tracing::error!(sink = %hook.name, file = %p.display(), error = %e, "webhook ca_file unreadable"),
        }
    }
    if roots.is_empty() {
        tracing::warn!(sink = %hook.name, system = added, "webhook: no trusted CA; https requests will fail");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_sink_starts_at_the_end_and_keeps_it_a_damaged_cursor_replays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events/siem.cursor");
        // New: the trail's end, written at once (a crash before the first
        // delivery must not move the start).
        assert_eq!(start_cursor(&path, 42).unwrap(), 42);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), "42");
        assert_eq!(start_cursor(&path, 99).unwrap(), 42, "kept, not moved to the new end");
        save_cursor(&path, 77);
        assert_eq!(start_cursor(&path, 99).unwrap(), 77);
        // Damaged: from the oldest entry (the core gives up what is older
        // than retry_for, counted), never from the end.
        std::fs::write(&path, "\u{0}garbage").unwrap();
        assert_eq!(start_cursor(&path, 99).unwrap(), 0);
    }
}
