//! The `[mqtt]` section: where telemetry comes from (the embedded broker or
//! an external one), the topics, and how devices log in to the embedded
//! broker. Checked here; `config` assembles the sections.

use crate::diag::read_secret;
use crate::diag::{Located, Source};
use crate::telemetry::TopicPattern;
use serde::{Deserialize, Deserializer, de::Error as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where telemetry comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    #[serde(default = "default_broker")]
    pub broker: toml::Spanned<Broker>,
    /// The embedded broker's address.
    #[serde(default = "default_mqtt_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_telemetry_topic")]
    pub telemetry_topic: TopicPattern,
    #[serde(default = "default_command_topic")]
    pub command_topic: String,
    #[serde(default = "default_status_topic")]
    pub status_topic: String,
    /// The MQTT client id (a persistent session is kept under it).
    pub client_id: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// How far in the future a report's `ts` may be.
    #[serde(default = "default_skew", with = "crate::diag::duration")]
    pub max_clock_skew: Duration,
    /// Where devices acknowledge commands (`+` is the device id).
    #[serde(default = "default_ack_topic")]
    pub ack_topic: TopicPattern,
    /// Embedded broker: clients without credentials may connect (and use
    /// any topic). Off unless set; the no-config default turns it on, on
    /// loopback only.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Embedded broker: device user names and passwords, in the format of
    /// `radius.users_file` (`password` or `argon2`; `device_id` defaults
    /// to the name).
    pub credentials_file: Option<PathBuf>,
    /// Embedded broker: an mqtts listener where devices log in with a
    /// client certificate (CN = device id) from `client_ca`.
    pub tls_listen: Option<SocketAddr>,
    pub server_cert: Option<PathBuf>,
    pub server_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

impl Default for Mqtt {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("every Mqtt field has a default"))
    }
}

fn default_broker() -> toml::Spanned<Broker> {
    toml::Spanned::new(0..0, Broker::Embedded)
}
fn default_mqtt_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}
fn default_telemetry_topic() -> TopicPattern {
    TopicPattern::new("devices/+/telemetry").unwrap_or_else(|_| unreachable!("valid pattern"))
}
fn default_ack_topic() -> TopicPattern {
    TopicPattern::new("devices/+/acks").unwrap_or_else(|_| unreachable!("valid pattern"))
}
fn default_command_topic() -> String {
    "devices/{device_id}/commands".into()
}
fn default_status_topic() -> String {
    "warden/compliance/{device_id}".into()
}
fn default_skew() -> Duration {
    Duration::from_secs(300)
}

impl<'de> Deserialize<'de> for TopicPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TopicPattern::new(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// The MQTT broker warden reads telemetry from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Broker {
    /// A broker inside the warden process, on `mqtt.listen`.
    #[default]
    Embedded,
    /// An external broker.
    External { host: String, port: u16, tls: bool },
}

impl<'de> Deserialize<'de> for Broker {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Broker::parse(&text).map_err(D::Error::custom)
    }
}

impl Broker {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "embedded" {
            return Ok(Broker::Embedded);
        }
        let (tls, rest) = if let Some(r) = text.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = text.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(format!("broker {text:?}: write \"embedded\", \"mqtt://host:port\" or \"mqtts://host:port\""));
        };
        let rest = rest.trim_end_matches('/');
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || !p.is_empty() => {
                let port = p.parse::<u16>().map_err(|_| format!("broker {text:?}: bad port {p:?}"))?;
                (h, port)
            }
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("broker {text:?}: no host"));
        }
        Ok(Broker::External { host: host.into(), port, tls })
    }
}

impl Mqtt {
    /// Checks the section (paths already rebased), reads its secret files
    /// (the client's password, which it returns), and loads the credentials
    /// file to locate its errors.
    pub fn check(&self, src: &Source, errors: &mut Vec<Located>, warnings: &mut Vec<String>) -> Option<String> {
        let file = src.file;
        let locate = |key: &str| src.offset(&["mqtt", key]);
        let m = self;
        let broker_at = m.broker.span().start;
        if m.password.is_some() && m.password_file.is_some() {
            errors.push(src.error_at(locate("password"), "give password or password_file, not both"));
        }
        if m.cert_file.is_some() != m.key_file.is_some() {
            let present = if m.cert_file.is_some() { "cert_file" } else { "key_file" };
            errors.push(src.error_at(locate(present), "cert_file and key_file go together"));
        }
        match m.broker.get_ref() {
            Broker::External { tls: true, .. } if m.ca_file.is_none() => {
                errors.push(
                    src.error_at(broker_at, "mqtts:// needs ca_file (the CA that signed the broker's certificate)"),
                );
            }
            Broker::External { tls: false, .. } if m.password.is_some() || m.password_file.is_some() => {
                warnings.push(format!(
                    "{}: the MQTT password crosses the network in clear over mqtt://; use mqtts://",
                    file.display()
                ));
            }
            Broker::Embedded if m.ca_file.is_some() || m.username.is_some() => {
                errors.push(src.error_at(broker_at, "ca_file/username apply to an external broker, not \"embedded\""));
            }
            _ => {}
        }
        if m.password.is_some() {
            warnings.push(format!("{}: mqtt.password is inline; prefer password_file", file.display()));
        }
        let embedded_only = m.allow_anonymous
            || m.credentials_file.is_some()
            || m.tls_listen.is_some()
            || m.server_cert.is_some()
            || m.server_key.is_some()
            || m.client_ca.is_some();
        if *m.broker.get_ref() != Broker::Embedded && embedded_only {
            errors.push(src.error_at(broker_at,
                "allow_anonymous, credentials_file, tls_listen, server_cert, server_key and client_ca apply to the embedded broker",
            ));
        }
        if m.tls_listen.is_some() && (m.server_cert.is_none() || m.server_key.is_none() || m.client_ca.is_none()) {
            errors.push(src.error_at(
                locate("tls_listen"),
                "tls_listen needs server_cert, server_key and client_ca (the CA of the device certificates)",
            ));
        }
        if *m.broker.get_ref() == Broker::Embedded {
            if let Some(c) = &m.credentials_file {
                match crate::users::Users::load(c) {
                    Ok(users) => warnings.extend(users.warnings()),
                    Err(e) => errors.push(e),
                }
            }
            if !m.allow_anonymous && m.credentials_file.is_none() && m.tls_listen.is_none() {
                warnings.push(format!(
                    "{}: the embedded broker has no way for devices to log in: set credentials_file, tls_listen, or allow_anonymous = true",
                    file.display()
                ));
            }
            if m.allow_anonymous && !m.listen.ip().is_loopback() {
                warnings.push(format!(
                    "{}: allow_anonymous on {}: any host that reaches it may publish for any device",
                    file.display(),
                    m.listen
                ));
            }
        }
        let mut password = m.password.clone();
        if let Some(p) = &m.password_file {
            match read_secret(p) {
                Ok(s) => password = Some(s),
                Err(e) => errors.push(src.error_at(locate("password_file"), e)),
            }
        }
        for (key, path) in [
            ("ca_file", &m.ca_file),
            ("cert_file", &m.cert_file),
            ("key_file", &m.key_file),
            ("server_cert", &m.server_cert),
            ("server_key", &m.server_key),
            ("client_ca", &m.client_ca),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                errors.push(src.error_at(locate(key), format!("{key} {} does not exist", p.display())));
            }
        }
        for (key, template) in [("command_topic", &m.command_topic), ("status_topic", &m.status_topic)] {
            if !template.contains("{device_id}") || template.contains(['+', '#']) {
                errors.push(src.error_at(locate(key), format!("{key} must contain {{device_id}} and no wildcards")));
            }
        }
        password
    }
}
