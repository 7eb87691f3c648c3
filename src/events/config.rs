//! The `[events]` section: where the event stream is delivered.
//!
//! ```toml
//! [events]
//! retry_for = "24h"          # an event is given up after this long
//! max_backlog = 1000000      # trail entries a sink may fall behind
//! [[events.webhooks]]
//! name = "siem"
//! url = "https://siem.example/hook"
//! types = ["warden.verdict.changed"]   # absent: every type
//! secret_file = "webhook.secret"       # whsec_<base64>
//! ```

use crate::diag::{Located, Source};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Every event type warden emits (the audit trail's kinds).
pub const KINDS: &[&str] = &[
    "warden.verdict.changed",
    "warden.enforcement.applied",
    "warden.remediation.command",
    "warden.remediation.completed",
    "warden.remediation.escalated",
    "warden.override.set",
    "warden.override.cleared",
    "warden.override.expired",
    "warden.policy.reloaded",
    "warden.changes.held",
    "warden.changes.confirmed",
    "warden.device.forgotten",
    "warden.identity.conflict",
    "warden.audit.pruned",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Events {
    /// The CloudEvents `source` of every event.
    #[serde(default = "default_source")]
    pub source: String,
    #[serde(default = "default_retry_for", with = "crate::diag::duration")]
    pub retry_for: Duration,
    #[serde(default = "default_max_backlog")]
    pub max_backlog: u64,
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            source: default_source(),
            retry_for: default_retry_for(),
            max_backlog: default_max_backlog(),
            webhooks: Vec::new(),
        }
    }
}

fn default_source() -> String {
    "warden".into()
}

fn default_retry_for() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_max_backlog() -> u64 {
    1_000_000
}

fn default_batch() -> usize {
    1
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// One `[[events.webhooks]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: toml::Spanned<String>,
    pub url: toml::Spanned<String>,
    /// Event types delivered (absent: all).
    pub types: Option<toml::Spanned<Vec<String>>>,
    /// The Standard Webhooks secret (`whsec_<base64>`, 24 to 64 bytes).
    pub secret_file: PathBuf,
    /// Events per request (1: one CloudEvent per request; more: batched
    /// mode, JSON arrays).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// One attempt's time limit (connect, send, answer).
    #[serde(default = "default_timeout", with = "crate::diag::duration")]
    pub timeout: Duration,
    /// For `https`: CA certificates (PEM) trusted besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// A checked webhook sink.
#[derive(Clone)]
pub struct Webhook {
    pub name: String,
    pub scheme_https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, as sent in the request line.
    pub target: String,
    /// The URL, for logs (it holds no secret: a URL with user info is refused).
    pub url: String,
    pub types: Option<Vec<String>>,
    pub key: std::sync::Arc<zeroize::Zeroizing<Vec<u8>>>,
    pub batch: usize,
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Webhook").field("name", &self.name).field("url", &self.url).finish_non_exhaustive()
    }
}

impl Webhook {
    /// True when this sink takes events of `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.types.as_ref().is_none_or(|t| t.iter().any(|k| k == kind))
    }
}

/// The most events one request may carry.
const MAX_BATCH: usize = 1000;

impl Events {
    pub fn rebase(&mut self, rebase: &impl Fn(&mut PathBuf)) {
        for w in &mut self.webhooks {
            rebase(&mut w.secret_file);
            if let Some(p) = &mut w.ca_file {
                rebase(p);
            }
        }
    }

    /// Checks the section into its sinks. `audit` says whether the audit
    /// trail (the outbox) is kept.
    pub fn check(&self, src: &Source, audit: bool, errors: &mut Vec<Located>) -> Vec<Webhook> {
        let mut sinks = Vec::new();
        if !self.webhooks.is_empty() && !audit {
            errors.push(src.error(
                &["events", "webhooks", "0"],
                "webhooks are delivered from the audit trail: audit.enabled must be true",
            ));
        }
        if self.retry_for.is_zero() {
            errors.push(src.error(&["events", "retry_for"], "events.retry_for must be more than 0s"));
        }
        if self.max_backlog == 0 {
            errors.push(src.error(&["events", "max_backlog"], "events.max_backlog must be at least 1"));
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            let name = w.name.get_ref();
            let index = i.to_string();
            let key_at = |key: &str| src.offset(&["events", "webhooks", &index, key]);
            let mut fail = |at: usize, msg: String| errors.push(src.error_at(at, msg));
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                fail(
                    w.name.span().start,
                    format!("webhook name {name:?}: letters, digits, - and _ only (it names the sink's cursor file)"),
                );
            }
            if self.webhooks[..i].iter().any(|o| o.name.get_ref() == name) {
                fail(w.name.span().start, format!("duplicate webhook name {name:?}"));
            }
            if let Some(types) = &w.types {
                for t in types.get_ref() {
                    if !KINDS.contains(&t.as_str()) {
                        fail(
                            types.span().start,
                            format!("webhook {name:?}: unknown event type {t:?} (one of {})", KINDS.join(", ")),
                        );
                    }
                }
            }
            if !(1..=MAX_BATCH).contains(&w.batch) {
                fail(key_at("batch"), format!("webhook {name:?}: batch must be 1 to {MAX_BATCH}"));
            }
            if w.timeout.is_zero() {
                fail(key_at("timeout"), format!("webhook {name:?}: timeout must be more than 0s"));
            }
            let url = match parse_url(w.url.get_ref()) {
                Ok(u) => Some(u),
                Err(e) => {
                    fail(w.url.span().start, format!("webhook {name:?}: {e}"));
                    None
                }
            };
            let key = match std::fs::read_to_string(&w.secret_file) {
                Ok(t) => crate::events::parse_secret(&t).map_err(|e| format!("{}: {e}", w.secret_file.display())),
                Err(e) => Err(format!("webhook {name:?}: reading {}: {e}", w.secret_file.display())),
            };
            let key = match key {
                Ok(k) => Some(k),
                Err(e) => {
                    fail(w.name.span().start, e);
                    None
                }
            };
            if let Some(p) = &w.ca_file
                && let Err(e) = std::fs::metadata(p)
            {
                fail(w.name.span().start, format!("webhook {name:?}: ca_file {}: {e}", p.display()));
            }
            if let (Some((https, host, port, target)), Some(key)) = (url, key) {
                sinks.push(Webhook {
                    name: name.clone(),
                    scheme_https: https,
                    host,
                    port,
                    target,
                    url: w.url.get_ref().clone(),
                    types: w.types.as_ref().map(|t| t.get_ref().clone()),
                    key: std::sync::Arc::new(zeroize::Zeroizing::new(key)),
                    batch: w.batch,
                    timeout: w.timeout,
                    ca_file: w.ca_file.clone(),
                });
            }
        }
        sinks
    }

    /// The delivery settings every sink shares.
    pub fn settings(&self, batch: usize) -> crate::events::Settings {
        crate::events::Settings {
            batch,
            retry_for: i64::try_from(self.retry_for.as_millis()).unwrap_or(i64::MAX),
            max_backlog: self.max_backlog,
            ..crate::events::Settings::default()
        }
    }
}

/// `http(s)://host[:port][/path]` into (https, host, port, path and query).
fn parse_url(text: &str) -> Result<(bool, String, u16, String), String> {
    let uri: hyper::Uri = text.parse().map_err(|e| format!("invalid url {text:?}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("url {text:?}: http:// or https:// only")),
    };
    let authority = uri.authority().ok_or_else(|| format!("url {text:?}: no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("url {text:?}: no user info in webhook URLs (the secret signs the requests)"));
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let target = uri.path_and_query().map_or("/".to_string(), |p| p.as_str().to_string());
    Ok((https, host, port, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/hook?x=1").unwrap(),
            (false, "127.0.0.1".into(), 8080, "/hook?x=1".into())
        );
        assert_eq!(parse_url("https://siem.example").unwrap(), (true, "siem.example".into(), 443, "/".into()));
        assert_eq!(parse_url("https://[::1]:9/h").unwrap(), (true, "::1".into(), 9, "/h".into()));
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("http://user:pw@x/").is_err());
        assert!(parse_url("/relative").is_err());
    }
}
