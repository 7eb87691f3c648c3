//! The `[eap]` section: certificates and limits, loaded and checked before
//! anything is bound.

use super::server::Limits;
use super::tls::IdentityFrom;
use crate::diag::{Located, Source};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eap {
    /// The server certificate chain (PEM), leaf first.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The CA(s) device certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM), optional.
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    #[serde(default)]
    pub identity_from: IdentityFrom,
    #[serde(default = "default_max_rounds")]
    pub max_rounds: u32,
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    #[serde(default = "default_timeout", with = "crate::diag::duration")]
    pub session_timeout: Duration,
    /// The largest TLS message a peer may send, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message: usize,
}

fn default_max_rounds() -> u32 {
    Limits::default().max_rounds
}
fn default_max_sessions() -> usize {
    Limits::default().max_sessions
}
fn default_timeout() -> Duration {
    Limits::default().timeout
}
fn default_max_message() -> usize {
    Limits::default().max_message
}

/// The section, loaded.
#[derive(Debug)]
pub struct Checked {
    pub tls: Arc<rustls::ServerConfig>,
    /// PEAP's config (server certificate only, TLS 1.2).
    pub peap: Arc<rustls::ServerConfig>,
    pub identity_from: IdentityFrom,
    pub limits: Limits,
}

impl Eap {
    pub fn rebase(&mut self, base: &Path) {
        for p in
            [&mut self.server_cert, &mut self.server_key, &mut self.client_ca].into_iter().chain(self.crl.iter_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    pub fn check(&self, src: &Source) -> Result<Checked, Vec<Located>> {
        let err = |key: &str, m: String| vec![src.error(&["eap", key], m)];
        let certs = |key: &str, p: &Path| -> Result<Vec<CertificateDer<'static>>, Vec<Located>> {
            let certs: Vec<_> = CertificateDer::pem_file_iter(p)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| err(key, format!("{}: {e}", p.display())))?;
            if certs.is_empty() {
                return Err(err(key, format!("{}: no certificate in it", p.display())));
            }
            Ok(certs)
        };
        let chain = certs("server_cert", &self.server_cert)?;
        let cas = certs("client_ca", &self.client_ca)?;
        let key = PrivateKeyDer::from_pem_file(&self.server_key)
            .map_err(|e| err("server_key", format!("{}: {e}", self.server_key.display())))?;
        let mut crls = Vec::new();
        for p in &self.crl {
            let list: Vec<_> = CertificateRevocationListDer::pem_file_iter(p)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| err("crl", format!("{}: {e}", p.display())))?;
            crls.extend(list);
        }
        for (key, bad) in [
            ("max_rounds", self.max_rounds == 0),
            ("max_sessions", self.max_sessions == 0),
            ("max_message", self.max_message < 4096),
            ("session_timeout", self.session_timeout.is_zero()),
        ] {
            if bad {
                return Err(err(
                    key,
                    "max_rounds and max_sessions must be positive, max_message at least 4096, session_timeout above 0s"
                        .into(),
                ));
            }
        }
        let peap = super::peap::server_config(chain.clone(), key.clone_key()).map_err(|e| err("server_cert", e))?;
        let tls = super::tls::server_config(chain, key, cas, crls).map_err(|e| err("client_ca", e))?;
        let limits = Limits {
            max_rounds: self.max_rounds,
            max_sessions: self.max_sessions,
            timeout: self.session_timeout,
            max_message: self.max_message,
            ..Limits::default()
        };
        Ok(Checked { tls, peap, identity_from: self.identity_from, limits })
    }
}
