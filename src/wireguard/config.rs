//! The `[wireguard]` section: what it says, checked and located before
//! anything is bound or created.

use super::acl::Rule;
use crate::diag::{Located, Source};
use base64::Engine as _;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuard {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `wg genkey` output (base64). Inline only for tests; prefer the file.
    pub private_key: Option<String>,
    pub private_key_file: Option<PathBuf>,
    #[serde(default = "default_interface")]
    pub interface: String,
    /// The TUN interface's own address and the tunnel network, e.g. `10.99.0.1/24`.
    pub address: Spanned<String>,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// What a quarantined peer may still reach: `CIDR` or `CIDR:port`.
    #[serde(default)]
    pub remediation: Vec<Spanned<String>>,
    /// Admit devices that reported `wg_public_key` in telemetry, each with
    /// an address from this network (inside `address`'s). Absent: config
    /// peers only.
    pub peer_pool: Option<Spanned<String>>,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub device_id: String,
    pub public_key: Spanned<String>,
    pub allowed_ips: Vec<Spanned<String>>,
    /// Seconds between keepalives we send (0 or absent: none).
    pub persistent_keepalive: Option<u16>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 51820))
}
fn default_interface() -> String {
    "warden0".into()
}
fn default_mtu() -> u16 {
    1420
}

/// A WireGuard key: 32 bytes, written in base64 as `wg` does.
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "a WireGuard key is 44 characters of base64 (as `wg genkey` / `wg pubkey` print)".to_string())?;
    raw.try_into().map_err(|_| "a WireGuard key is 32 bytes (44 characters of base64)".to_string())
}

pub use crate::diag::parse_net;

/// Everything the data plane needs, validated.
pub struct Checked {
    pub private_key: [u8; 32],
    pub address: IpNet,
    pub remediation: Vec<Rule>,
    pub peers: Vec<super::peers::PeerSpec>,
    pub peer_pool: Option<IpNet>,
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked").field("address", &self.address).field("peers", &self.peers.len()).finish()
    }
}

impl WireGuard {
    /// Paths relative to the config file's directory.
    pub fn rebase(&mut self, base: &Path) {
        if let Some(p) = &mut self.private_key_file
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
    }

    /// Checks every value; errors are located at their keys.
    pub fn check(&self, src: &Source, warnings: &mut Vec<String>) -> Result<Checked, Vec<Located>> {
        let mut errors = Vec::new();
        let at = |span: std::ops::Range<usize>, msg: String| src.error_at(span.start, msg);
        let private_key = match (&self.private_key, &self.private_key_file) {
            (Some(_), Some(_)) => {
                errors.push(src.error(&["wireguard", "private_key"], "give private_key or private_key_file, not both"));
                None
            }
            (None, None) => {
                errors.push(src.error(&["wireguard"], "[wireguard] needs private_key_file (`wg genkey > wg.key`)"));
                None
            }
            (Some(k), None) => {
                warnings
                    .push(format!("{}: wireguard.private_key is inline; prefer private_key_file", src.file.display()));
                parse_key(k)
                    .map_err(|e| errors.push(src.error(&["wireguard", "private_key"], format!("private_key: {e}"))))
                    .ok()
            }
            (None, Some(p)) => std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))
                .and_then(|k| parse_key(&k).map_err(|e| format!("{}: {e}", p.display())))
                .map_err(|e| errors.push(src.error(&["wireguard", "private_key_file"], e)))
                .ok(),
        };
        let address = parse_net(self.address.get_ref())
            .map_err(|e| errors.push(at(self.address.span(), format!("address: {e}"))))
            .ok();
        if !(1280..=9000).contains(&self.mtu) {
            errors.push(src.error(&["wireguard", "mtu"], format!("mtu {} is outside 1280..=9000", self.mtu)));
        }
        let remediation: Vec<Rule> = self
            .remediation
            .iter()
            .filter_map(|r| Rule::parse(r.get_ref()).map_err(|e| errors.push(at(r.span(), e))).ok())
            .collect();
        let mut peers = Vec::new();
        let mut keys = std::collections::HashSet::new();
        for p in &self.peers {
            let key = match parse_key(p.public_key.get_ref()) {
                Ok(k) => k,
                Err(e) => {
                    errors.push(at(p.public_key.span(), e));
                    continue;
                }
            };
            if !keys.insert(key) {
                errors.push(at(p.public_key.span(), "this public key is already another peer's".into()));
            }
            let allowed: Vec<IpNet> = p
                .allowed_ips
                .iter()
                .filter_map(|a| parse_net(a.get_ref()).map_err(|e| errors.push(at(a.span(), e))).ok())
                .map(|n| n.trunc())
                .collect();
            if p.device_id.is_empty() {
                errors.push(at(p.public_key.span(), "a peer needs a device_id".into()));
            }
            peers.push(super::peers::PeerSpec {
                device_id: p.device_id.as_str().into(),
                public_key: key,
                allowed_ips: allowed,
                persistent_keepalive: p.persistent_keepalive.filter(|k| *k > 0),
            });
        }
        let peer_pool = self.peer_pool.as_ref().and_then(|p| {
            let pool = parse_net(p.get_ref()).map_err(|e| errors.push(at(p.span(), format!("peer_pool: {e}")))).ok()?;
            if address.is_some_and(|a| !a.trunc().contains(&pool.trunc())) {
                errors.push(at(p.span(), format!("peer_pool {pool} is not inside address {}", self.address.get_ref())));
            }
            Some(pool.trunc())
        });
        match (errors.is_empty(), private_key, address) {
            (true, Some(private_key), Some(address)) => {
                Ok(Checked { private_key, address, remediation, peers, peer_pool })
            }
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "YNqHwpcAmVj0lVzPSt3oUnQvqBAbbnjiKt8sSj6Ijmg=";

    fn check(text: &str) -> Result<Checked, String> {
        #[derive(Deserialize)]
        struct Doc {
            wireguard: WireGuard,
        }
        let doc: Doc = toml::from_str(text).map_err(|e| e.to_string())?;
        doc.wireguard
            .check(&Source::new(Path::new("/etc/warden/warden.toml"), text), &mut Vec::new())
            .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    }

    #[test]
    fn a_full_section_checks() {
        let c = check(&format!(
            "[wireguard]\nprivate_key = \"{KEY}\"\naddress = \"10.99.0.1/24\"\nremediation = [\"10.99.0.1/32\", \"203.0.113.10/32:443\"]\n[[wireguard.peers]]\ndevice_id = \"pos-1\"\npublic_key = \"{KEY}\"\nallowed_ips = [\"10.99.0.2\"]\n"
        ))
        .unwrap();
        assert_eq!(c.remediation.len(), 2);
        assert_eq!(c.peers[0].allowed_ips, vec!["10.99.0.2/32".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn bad_values_are_located() {
        let cases = [
            (
                "[wireguard]\nprivate_key = \"nope\"\naddress = \"10.99.0.1/24\"\n".to_string(),
                "2:15: private_key: a WireGuard key",
            ),
            (format!("[wireguard]\nprivate_key = \"{KEY}\"\naddress = \"10.99.0.300/24\"\n"), "3:11: address:"),
            (
                format!(
                    "[wireguard]\nprivate_key = \"{KEY}\"\naddress = \"10.99.0.1/24\"\npeer_pool = \"10.98.0.0/25\"\n"
                ),
                "4:13: peer_pool 10.98.0.0/25 is not inside address 10.99.0.1/24",
            ),
            (
                format!(
                    "[wireguard]\nprivate_key = \"{KEY}\"\naddress = \"10.0.0.1/8\"\nremediation = [\"10.0.0.1/32:http\"]\n"
                ),
                "4:16: ",
            ),
            (
                format!(
                    "[wireguard]\nprivate_key = \"{KEY}\"\naddress = \"10.0.0.1/8\"\n[[wireguard.peers]]\ndevice_id = \"a\"\npublic_key = \"AAAA\"\nallowed_ips = []\n"
                ),
                "6:14: a WireGuard key",
            ),
            ("[wireguard]\naddress = \"10.0.0.1/8\"\n".to_string(), "1:2: [wireguard] needs private_key_file"),
        ];
        for (text, want) in cases {
            let err = check(&text).err().unwrap_or_default();
            assert!(err.contains(want), "want {want:?}\n got {err:?}");
        }
    }
}
