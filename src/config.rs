//! The configuration file: one TOML document, per-plane sections, unknown
//! keys refused, every error as `FILE:LINE:COL: message`. Everything is
//! validated (and every secret file read) before any port is bound.

pub use crate::compliance::access::UnknownDevice;
use crate::diag::Located;
use crate::diag::read_secret;
pub use crate::radius::config::{CoaMode, Noncompliant, Radius, RadiusClient};
pub use crate::telemetry::config::{Broker, Mqtt};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: Node,
    #[serde(default)]
    pub mqtt: Mqtt,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub http: Http,
    /// The RADIUS server; absent: not started.
    pub radius: Option<Radius>,
    /// The WireGuard endpoint; absent: not started.
    pub wireguard: Option<crate::wireguard::config::WireGuard>,
    /// 802.1X (EAP-TLS) for the RADIUS server; absent: EAP is refused.
    pub eap: Option<crate::eap::config::Eap>,
    /// The audit trail in `state_dir/audit`.
    #[serde(default)]
    pub audit: crate::audit::config::Audit,
    /// The event stream's webhooks.
    #[serde(default)]
    pub events: crate::events::config::Events,
    /// Drift reports written on a schedule.
    #[serde(default)]
    pub reports: Vec<crate::report::config::ReportConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How often the compliance table is written to `state_dir`.
    #[serde(default = "default_snapshot_every", with = "crate::diag::duration")]
    pub snapshot_every: Duration,
}

impl Default for Node {
    fn default() -> Self {
        Self { name: default_name(), state_dir: default_state_dir(), snapshot_every: default_snapshot_every() }
    }
}

fn default_name() -> String {
    "warden-1".into()
}
fn default_state_dir() -> PathBuf {
    "state".into()
}
/// At a million devices a snapshot is ~530 MiB and takes ~2 s to write
/// (bench/RESULTS.md): once a minute, and only when something changed.
fn default_snapshot_every() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default = "default_policy_dir")]
    pub dir: PathBuf,
    #[serde(default)]
    pub unknown_device: UnknownDevice,
    /// No report for this long: the device becomes unknown ("inactive").
    #[serde(default = "default_stale_after", with = "crate::diag::duration")]
    pub stale_after: Duration,
    /// Verdicts are held this long while the telemetry source is out.
    #[serde(default = "default_outage_grace", with = "crate::diag::duration")]
    pub outage_grace: Duration,
    /// What applies after `outage_grace`: `hold` or `unknown`.
    #[serde(default)]
    pub outage_fail_mode: crate::compliance::outage::FailMode,
    /// This share of the live fleet going silent within `outage_window` is
    /// a fleet-wide outage, not staleness.
    #[serde(default = "default_outage_silent_fraction")]
    pub outage_silent_fraction: f64,
    #[serde(default = "default_outage_window", with = "crate::diag::duration")]
    pub outage_window: Duration,
    /// The circuit breaker: one cause restricting more than this share of
    /// the devices with a current verdict waits for confirmation.
    #[serde(default = "default_max_restrict_fraction")]
    pub max_restrict_fraction: f64,
    /// Devices with no report this long are removed from the table.
    #[serde(default = "default_forget_after", with = "crate::diag::duration")]
    pub forget_after: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            dir: default_policy_dir(),
            unknown_device: UnknownDevice::default(),
            stale_after: default_stale_after(),
            outage_grace: default_outage_grace(),
            outage_fail_mode: Default::default(),
            outage_silent_fraction: default_outage_silent_fraction(),
            outage_window: default_outage_window(),
            max_restrict_fraction: default_max_restrict_fraction(),
            forget_after: default_forget_after(),
        }
    }
}

impl PolicyConfig {
    /// The outage settings of the compliance engine.
    pub fn outage(&self) -> crate::compliance::outage::Settings {
        crate::compliance::outage::Settings {
            grace: self.outage_grace,
            fail_mode: self.outage_fail_mode,
            silent_fraction: self.outage_silent_fraction,
            window: self.outage_window,
        }
    }
}

fn default_outage_grace() -> Duration {
    Duration::from_secs(3600)
}
fn default_outage_silent_fraction() -> f64 {
    0.1
}
fn default_outage_window() -> Duration {
    Duration::from_secs(120)
}
fn default_max_restrict_fraction() -> f64 {
    0.1
}
fn default_forget_after() -> Duration {
    Duration::from_secs(90 * 86_400)
}

fn default_policy_dir() -> PathBuf {
    "policies".into()
}
fn default_stale_after() -> Duration {
    Duration::from_secs(15 * 60)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// A file holding the bearer token required on `/api/v1` (an admin
    /// token named `admin`).
    pub token_file: Option<PathBuf>,
    /// API tokens with names and roles (`[[tokens]]` name, role, sha256).
    pub tokens_file: Option<PathBuf>,
    /// A request head must arrive within this (also the idle timeout of a
    /// kept-alive connection).
    #[serde(default = "default_header_timeout", with = "crate::diag::duration")]
    pub header_timeout: Duration,
    /// A whole request, body and answer, within this.
    #[serde(default = "default_request_timeout", with = "crate::diag::duration")]
    pub request_timeout: Duration,
    /// Connections open at once; more are closed as they arrive.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
            token_file: None,
            tokens_file: None,
            header_timeout: default_header_timeout(),
            request_timeout: default_request_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_connections() -> usize {
    4096
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// Secrets read from files at load time (never logged).
#[derive(Default)]
pub struct Secrets {
    pub mqtt_password: Option<String>,
    pub api_token: Option<String>,
    /// Every API token: `http.tokens_file`'s, and `token_file`'s as `admin`.
    pub api_tokens: crate::tokens::Tokens,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

/// A loaded, validated configuration.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub secrets: Secrets,
    /// The file it came from (`None`: the embedded default).
    pub file: Option<PathBuf>,
    /// Things that work but deserve a look (`warden check` prints them).
    pub warnings: Vec<String>,
    /// The `[radius]` section's NAS clients checked, each with its secret.
    pub radius_clients: Vec<crate::radius::config::Nas>,
    /// The `[wireguard]` section checked: its private key, peers and rules.
    pub wireguard: Option<crate::wireguard::config::Checked>,
    /// The `[eap]` section loaded: TLS config, identity field, limits.
    pub eap: Option<crate::eap::config::Checked>,
    /// `[[events.webhooks]]` checked, with their secrets.
    pub webhooks: Vec<crate::events::config::Webhook>,
    /// `[[reports]]` checked.
    pub reports: Vec<crate::report::config::Scheduled>,
}

impl Loaded {
    /// The embedded default: everything on loopback, paths relative to the
    /// working directory.
    pub fn embedded_default() -> Self {
        let mut config = Config::default();
        let secrets = Secrets::default();
        let mut warnings = Vec::new();
        // RADIUS for a loopback NAS, with a fresh random secret shown once.
        let mut raw = [0u8; 18];
        if getrandom::getrandom(&mut raw).is_ok() {
            const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
            let secret: String = raw.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect();
            warnings.push(format!(
                "RADIUS for trying warden only: clients 127.0.0.0/8 on 127.0.0.1:1812/1813 with shared secret {secret}"
            ));
            config.radius = Some(Radius::loopback(secret));
        }
        let src = crate::diag::Source::new(Path::new("the embedded default"), "");
        let radius_clients =
            config.radius.as_ref().map(|r| r.check(&src, &mut Vec::new(), &mut warnings)).unwrap_or_default();
        // Anyone on this machine may publish for any device: fine for
        // trying warden, said out loud.
        config.mqtt.allow_anonymous = true;
        warnings.push(format!(
            "embedded MQTT broker on {} allows anonymous clients (loopback only; set mqtt.credentials_file or tls_listen for devices)",
            config.mqtt.listen
        ));
        Self {
            config,
            secrets,
            file: None,
            warnings,
            radius_clients,
            wireguard: None,
            eap: None,
            webhooks: Vec::new(),
            reports: Vec::new(),
        }
    }

    /// Reads and validates `file`. Relative paths inside it are taken
    /// relative to the file's directory.
    pub fn from_file(file: &Path) -> Result<Self, Vec<Located>> {
        let text = std::fs::read_to_string(file).map_err(|e| vec![Located::file(file, format!("cannot read: {e}"))])?;
        Self::from_str(file, &text)
    }

    /// Validates `text` as if read from `file`.
    pub fn from_str(file: &Path, text: &str) -> Result<Self, Vec<Located>> {
        let mut config: Config = toml::from_str(text).map_err(|e| vec![Located::toml(file, text, &e)])?;
        let base = file.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        rebase(&mut config.node.state_dir);
        rebase(&mut config.policy.dir);
        for p in [
            &mut config.mqtt.ca_file,
            &mut config.mqtt.cert_file,
            &mut config.mqtt.key_file,
            &mut config.mqtt.password_file,
            &mut config.mqtt.credentials_file,
            &mut config.mqtt.server_cert,
            &mut config.mqtt.server_key,
            &mut config.mqtt.client_ca,
            &mut config.http.token_file,
            &mut config.http.tokens_file,
        ]
        .into_iter()
        .flatten()
        {
            rebase(p);
        }
        if let Some(w) = &mut config.wireguard {
            w.rebase(base);
        }
        if let Some(e) = &mut config.eap {
            e.rebase(base);
        }
        if let Some(r) = &mut config.radius {
            r.rebase(&rebase);
        }
        if let Some(p) = &mut config.audit.signing_key_file {
            rebase(p);
        }
        config.events.rebase(&rebase);
        crate::report::config::rebase(&mut config.reports, &rebase);
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let src = crate::diag::Source::new(file, text);
        let mqtt_password = config.mqtt.check(&src, &mut errors, &mut warnings);
        let mut secrets = Secrets { mqtt_password, ..Default::default() };
        if let Some(p) = &config.http.token_file {
            match read_secret(p) {
                Ok(s) if s.len() >= 16 => secrets.api_token = Some(s),
                Ok(_) => {
                    errors.push(src.error(&["http", "token_file"], "the API token must be at least 16 characters"))
                }
                Err(e) => errors.push(src.error(&["http", "token_file"], e)),
            }
        }
        if let Some(p) = &config.http.tokens_file {
            match crate::tokens::Tokens::load(p) {
                Ok(t) => secrets.api_tokens = t,
                Err(e) => errors.push(e),
            }
        }
        if let Some(t) = &secrets.api_token {
            secrets.api_tokens.add_clear("admin", crate::tokens::Role::Admin, t);
        }
        if config.policy.stale_after.is_zero() {
            errors.push(src.error(&["policy", "stale_after"], "stale_after must be more than 0s"));
        }
        for (key, v) in [
            ("outage_silent_fraction", config.policy.outage_silent_fraction),
            ("max_restrict_fraction", config.policy.max_restrict_fraction),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                errors.push(src.error(&["policy", key], format!("{key} must be more than 0 and at most 1")));
            }
        }
        if config.policy.forget_after <= config.policy.stale_after {
            errors.push(src.error(&["policy", "forget_after"], "forget_after must be longer than stale_after"));
        }
        if config.policy.outage_window.is_zero() {
            errors.push(src.error(&["policy", "outage_window"], "outage_window must be more than 0s"));
        }
        for (key, d) in
            [("header_timeout", config.http.header_timeout), ("request_timeout", config.http.request_timeout)]
        {
            if d < Duration::from_millis(100) {
                errors.push(src.error(&["http", key], format!("{key} must be at least 100ms")));
            }
        }
        if config.http.max_connections == 0 {
            errors.push(src.error(&["http", "max_connections"], "max_connections must be at least 1"));
        }
        if config.node.snapshot_every < Duration::from_secs(1) {
            errors.push(src.error(&["node", "snapshot_every"], "snapshot_every must be at least 1s"));
        }
        if !config.http.listen.ip().is_loopback()
            && config.http.token_file.is_none()
            && config.http.tokens_file.is_none()
        {
            warnings.push(format!(
                "{}: http.listen is not loopback and no token_file is set: the API is open",
                file.display()
            ));
        }
        let radius_clients =
            config.radius.as_ref().map(|r| r.check(&src, &mut errors, &mut warnings)).unwrap_or_default();
        if let Some(p) = &config.audit.signing_key_file
            && let Err(e) =
                std::fs::read_to_string(p).map_err(|e| e.to_string()).and_then(|t| crate::audit::read_key(&t))
        {
            errors.push(src.error(&["audit", "signing_key_file"], format!("{}: {e}", p.display())));
        }
        if config.audit.checkpoint_every.is_zero() {
            errors.push(src.error(&["audit", "checkpoint_every"], "checkpoint_every must be more than 0s"));
        }
        let webhooks = config.events.check(&src, config.audit.enabled, &mut errors);
        let reports = crate::report::config::check(&config.reports, &src, config.audit.enabled, &mut errors);
        let wireguard = match &config.wireguard {
            Some(w) => match w.check(&src, &mut warnings) {
                Ok(checked) => Some(checked),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            },
            None => None,
        };
        let eap = match &config.eap {
            Some(e) => match e.check(&src) {
                Ok(checked) => Some(checked),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            },
            None => None,
        };
        if eap.is_some() && config.radius.is_none() {
            errors.push(src.error(&["eap"], "[eap] needs a [radius] section"));
        }
        if errors.is_empty() {
            let file = Some(file.to_path_buf());
            Ok(Self { config, secrets, file, warnings, radius_clients, wireguard, eap, webhooks, reports })
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Loaded, String> {
        Loaded::from_str(Path::new("/etc/warden/warden.toml"), text)
            .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    }

    #[test]
    fn empty_file_is_the_embedded_default_with_paths_rebased() {
        let l = load("").unwrap();
        assert_eq!(l.config.mqtt.broker.get_ref(), &Broker::Embedded);
        assert_eq!(l.config.policy.dir, Path::new("/etc/warden/policies"));
        assert_eq!(l.config.policy.stale_after, Duration::from_secs(900));
        assert_eq!(l.config.mqtt.telemetry_topic.filter(), "devices/+/telemetry");
    }

    #[test]
    fn embedded_broker_logins_are_checked() {
        let err = |text: &str| load(text).err().unwrap_or_default();
        assert!(
            err("[mqtt]\nbroker = \"mqtt://b:1883\"\nallow_anonymous = true\n")
                .contains("apply to the embedded broker")
        );
        assert!(err("[mqtt]\ntls_listen = \"127.0.0.1:8883\"\n").contains("tls_listen needs server_cert"));
        assert!(
            err("[mqtt]\ntls_listen = \"127.0.0.1:8883\"\nserver_cert = \"s.pem\"\nserver_key = \"s.key\"\nclient_ca = \"ca.pem\"\n")
                .contains("server_cert /etc/warden/s.pem does not exist")
        );
        assert!(err("[mqtt]\ncredentials_file = \"nope.toml\"\n").contains("nope.toml"));
        let l = load("[mqtt]\nallow_anonymous = true\nlisten = \"0.0.0.0:1883\"\n").unwrap();
        assert!(l.warnings.iter().any(|w| w.contains("any host that reaches it")), "{:?}", l.warnings);
        let l = load("").unwrap();
        assert!(l.warnings.iter().any(|w| w.contains("no way for devices to log in")), "{:?}", l.warnings);
        assert!(Loaded::embedded_default().config.mqtt.allow_anonymous, "the no-config default, on loopback");
    }

    #[test]
    fn brokers() {
        assert_eq!(
            Broker::parse("mqtt://b.example:1884"),
            Ok(Broker::External { host: "b.example".into(), port: 1884, tls: false })
        );
        assert_eq!(
            Broker::parse("mqtts://b.example"),
            Ok(Broker::External { host: "b.example".into(), port: 8883, tls: true })
        );
        assert_eq!(
            Broker::parse("mqtt://[::1]:1883"),
            Ok(Broker::External { host: "::1".into(), port: 1883, tls: false })
        );
        for bad in ["tcp://x", "mqtt://", "mqtt://x:port", "mqtt://x:70000"] {
            assert!(Broker::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let cases = [
            ("[mqtt]\nbrokr = \"embedded\"\n", "/etc/warden/warden.toml:2:1: unknown field `brokr`"),
            ("[policy]\nstale_after = \"soon\"\n", "/etc/warden/warden.toml:2:15: invalid duration"),
            ("[mqtt]\ntelemetry_topic = \"devices/#\"\n", "/etc/warden/warden.toml:2:19: topic filter"),
            ("[mqtt]\nbroker = \"mqtts://b:8883\"\n", "/etc/warden/warden.toml:2:10: mqtts:// needs ca_file"),
            ("[http]\nlisten = \"localhost\"\n", "/etc/warden/warden.toml:2:10: invalid socket address"),
            ("[policy]\nunknown_device = \"maybe\"\n", "/etc/warden/warden.toml:2:18: unknown variant `maybe`"),
            ("[mqtt]\nstatus_topic = \"warden/+\"\n", "/etc/warden/warden.toml:2:16: status_topic must contain"),
            (
                "[radius]\nworkers = 1000\n[[radius.clients]]\nname = \"s\"\naddress = \"127.0.0.1\"\nsecret = \"x\"\n",
                "/etc/warden/warden.toml:2:11: radius.workers must be at most 256",
            ),
            // Located by the key's path, not by the first place the word
            // appears: a comment, or the same key in another table.
            (
                "# max_connections: see the docs\n[http]\nmax_connections = 0\n",
                "/etc/warden/warden.toml:3:19: max_connections must be at least 1",
            ),
            (
                "[[events.webhooks]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/\"\nsecret_file = \"/nonexistent\"\ntimeout = \"2s\"\n\
                 [policy]\nstale_after = \"0s\"\n",
                "/etc/warden/warden.toml:7:15: stale_after must be more than 0s",
            ),
        ];
        for (text, want) in cases {
            let err = load(text).unwrap_err();
            assert!(err.starts_with(want), "want {want}\n got {err}");
        }
    }

    #[test]
    fn every_shipped_example_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().ends_with("users.toml") {
                // A credentials file (users_file format), named by the example config.
                let users = crate::users::Users::load(&path);
                assert!(users.is_ok(), "{}: {:?}", path.display(), users.err());
            } else if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                // Secret files named by examples do not exist here; only syntax and types are checked.
                let parsed: Result<Config, _> = toml::from_str(&text);
                assert!(parsed.is_ok(), "{}: {:?}", path.display(), parsed.err());
                seen += 1;
            }
        }
        assert!(seen > 0, "no example configs in {}", dir.display());
    }
}
