//! The `[radius]` section: where RADIUS listens, the VLANs, the users file
//! and the NAS clients with their secrets. Checked here; `config`
//! assembles the sections.

use crate::diag::read_secret;
use crate::diag::{Located, Source};
use crate::radius::server::Secret;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// What to do with a noncompliant device whose violation is enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Noncompliant {
    #[default]
    Quarantine,
    Reject,
}

/// How a NAS is told about a verdict change (RFC 5176).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoaMode {
    Coa,
    #[default]
    Disconnect,
    CoaThenDisconnect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Radius {
    #[serde(default = "default_auth_listen")]
    pub auth_listen: SocketAddr,
    #[serde(default = "default_acct_listen")]
    pub acct_listen: SocketAddr,
    #[serde(default = "default_compliant_vlan")]
    pub compliant_vlan: String,
    #[serde(default = "default_quarantine_vlan")]
    pub quarantine_vlan: String,
    #[serde(default)]
    pub noncompliant: Noncompliant,
    /// Local credentials for PAP (and PEAP-MSCHAPv2).
    pub users_file: Option<PathBuf>,
    /// Auth shards (sockets on the auth port, one task each); 0: one per core.
    #[serde(default)]
    pub workers: usize,
    #[serde(default)]
    pub clients: Vec<RadiusClient>,
}

/// Auth shards at most: each is a socket, a task and a duplicate cache.
const MAX_WORKERS: usize = 256;

fn default_auth_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 1812))
}
fn default_acct_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 1813))
}
fn default_compliant_vlan() -> String {
    "100".into()
}
fn default_quarantine_vlan() -> String {
    "999".into()
}
fn default_true() -> bool {
    true
}
fn default_coa_port() -> u16 {
    3799
}

/// A NAS (switch, Wi-Fi controller) allowed to use warden.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RadiusClient {
    pub name: String,
    /// An IP or a CIDR.
    pub address: toml::Spanned<String>,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    #[serde(default = "default_true")]
    pub require_message_authenticator: bool,
    #[serde(default = "default_coa_port")]
    pub coa_port: u16,
    #[serde(default)]
    pub coa_mode: CoaMode,
}

/// A NAS client checked: its network and the secret it shares with us,
/// together (no list of secrets to match back by name).
#[derive(Debug)]
pub struct Nas {
    pub name: String,
    pub net: ipnet::IpNet,
    pub secret: Secret,
    pub require_message_authenticator: bool,
    pub coa_port: u16,
    pub coa_mode: CoaMode,
}

impl RadiusClient {
    /// The address as a network (a bare IP is a /32 or /128).
    pub fn net(&self) -> Result<ipnet::IpNet, String> {
        crate::diag::parse_net(self.address.get_ref()).map_err(|e| format!("client {:?}: address {e}", self.name))
    }
}

impl Radius {
    /// The number of auth shards: `workers`, or one per core.
    pub fn shards(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        }
    }

    /// RADIUS for a NAS on this machine only, with `secret` (the no-config
    /// default: for trying warden).
    pub fn loopback(secret: String) -> Self {
        Self {
            auth_listen: SocketAddr::from(([127, 0, 0, 1], 1812)),
            acct_listen: SocketAddr::from(([127, 0, 0, 1], 1813)),
            compliant_vlan: default_compliant_vlan(),
            quarantine_vlan: default_quarantine_vlan(),
            noncompliant: Noncompliant::default(),
            users_file: None,
            workers: 0,
            clients: vec![RadiusClient {
                name: "loopback".into(),
                address: toml::Spanned::new(0..0, "127.0.0.0/8".into()),
                secret: Some(secret),
                secret_file: None,
                require_message_authenticator: true,
                coa_port: default_coa_port(),
                coa_mode: CoaMode::default(),
            }],
        }
    }

    /// Makes relative paths relative to the config file's directory.
    pub fn rebase(&mut self, rebase: &impl Fn(&mut PathBuf)) {
        for p in self.users_file.iter_mut().chain(self.clients.iter_mut().filter_map(|c| c.secret_file.as_mut())) {
            rebase(p);
        }
    }

    /// Checks the section into its clients, each with its secret (read
    /// from `secret_file` where given).
    pub fn check(&self, src: &Source, errors: &mut Vec<Located>, warnings: &mut Vec<String>) -> Vec<Nas> {
        let file = src.file;
        let r = self;
        let mut checked = Vec::new();
        if r.workers > MAX_WORKERS {
            errors.push(src.error(
                &["radius", "workers"],
                format!("radius.workers must be at most {MAX_WORKERS} (0: one per core)"),
            ));
        }
        if r.clients.is_empty() {
            errors.push(src.error(&["radius"], "[radius] needs at least one [[radius.clients]]"));
        }
        for (i, c) in r.clients.iter().enumerate() {
            let index = i.to_string();
            let at = |key: &str| src.offset(&["radius", "clients", &index, key]);
            let net = c.net().map_err(|e| errors.push(src.error_at(c.address.span().start, e))).ok();
            if r.clients[..i].iter().any(|o| o.name == c.name) {
                errors.push(src.error_at(at("name"), format!("duplicate client name {:?}", c.name)));
            }
            let secret = match (&c.secret, &c.secret_file) {
                (Some(_), Some(_)) => Err(format!("client {:?}: give secret or secret_file, not both", c.name)),
                (None, None) => Err(format!("client {:?}: a secret or secret_file is required", c.name)),
                (Some(s), None) => Ok(s.clone()),
                (None, Some(p)) => read_secret(p),
            };
            match secret {
                Ok(s) if s.is_empty() => {
                    errors.push(src.error_at(at("secret"), format!("client {:?}: empty secret", c.name)));
                }
                Ok(s) => {
                    if s.len() < 12 {
                        warnings.push(format!("{}: RADIUS client {:?}: a secret shorter than 12 bytes is easy to brute-force from one captured packet", file.display(), c.name));
                    }
                    if !c.require_message_authenticator {
                        warnings.push(format!("{}: RADIUS client {:?}: require_message_authenticator = false leaves it open to BlastRADIUS (CVE-2024-3596)", file.display(), c.name));
                    }
                    if let Some(net) = net {
                        checked.push(Nas {
                            name: c.name.clone(),
                            net,
                            secret: Secret::new(s.into_bytes()),
                            require_message_authenticator: c.require_message_authenticator,
                            coa_port: c.coa_port,
                            coa_mode: c.coa_mode,
                        });
                    }
                }
                Err(e) => errors.push(src.error_at(at("secret_file"), e)),
            }
        }
        if r.compliant_vlan.is_empty()
            || r.quarantine_vlan.is_empty()
            || r.compliant_vlan.len() > 252
            || r.quarantine_vlan.len() > 252
        {
            let key = if r.compliant_vlan.is_empty() || r.compliant_vlan.len() > 252 {
                "compliant_vlan"
            } else {
                "quarantine_vlan"
            };
            errors.push(src.error(&["radius", key], "compliant_vlan and quarantine_vlan must be 1 to 252 characters"));
        }
        if let Some(u) = &r.users_file {
            match crate::users::Users::load(u) {
                Ok(users) => warnings.extend(users.warnings()),
                Err(e) => errors.push(e),
            }
        }
        checked
    }
}
