//! Who may connect to the embedded broker, and what each client may publish
//! and subscribe to. Pure decisions: the embedded broker's hooks (`gateway::broker::hooks`) ask them.
//!
//! A device acts only for itself: it publishes its own telemetry and its
//! own command acknowledgements, and subscribes to its own command and
//! status topics, with no wildcards. warden's own clients are superusers
//! (rmqtt skips the ACL for them). An anonymous client, allowed only with
//! `mqtt.allow_anonymous`, is unrestricted: it proved nothing about which
//! device it is, so no rule could tell its topics apart.

use crate::telemetry::parse::{TopicPattern, valid_device_id};
use crate::users::Users;

/// What a connected client proved about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// No credentials (only with `mqtt.allow_anonymous`).
    Anonymous,
    /// A device: by a password from the credentials file, or by a client
    /// certificate whose CN is the device id.
    Device(Box<str>),
}

/// Why a connection is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No credentials, and anonymous access is off.
    Anonymous,
    /// An unknown user name or a wrong password.
    BadCredentials,
    /// A certificate whose CN is not a valid device id.
    BadCertificateName,
    /// A will message for a topic the client may not publish to.
    Will,
}

impl Refused {
    pub const LABELS: [&'static str; 4] = ["anonymous", "credentials", "certificate", "will"];

    pub fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// The device a user of the credentials file acts for: its `device_id`,
/// or its name.
pub fn device_of<'u>(users: &'u Users, name: &'u str) -> Option<&'u str> {
    users.get(name).map(|u| u.device_id.as_deref().unwrap_or(&u.name))
}

/// Decides a connection from what the client presented. `verify` checks a
/// password against the credentials file (it may be slow: argon2).
pub fn authenticate(
    certificate_cn: Option<&str>,
    username: Option<&str>,
    allow_anonymous: bool,
    verify: impl FnOnce(&str) -> Option<Box<str>>,
) -> Result<Identity, Refused> {
    // The TLS listener only completes a handshake with a certificate the
    // CA signed; its CN names the device, whatever user name was sent.
    if let Some(cn) = certificate_cn {
        return if valid_device_id(cn) { Ok(Identity::Device(cn.into())) } else { Err(Refused::BadCertificateName) };
    }
    match username {
        None if allow_anonymous => Ok(Identity::Anonymous),
        None => Err(Refused::Anonymous),
        Some(name) => verify(name).map(Identity::Device).ok_or(Refused::BadCredentials),
    }
}

/// The topics a device may use, from `[mqtt]`.
#[derive(Clone, Debug)]
pub struct Topics {
    pub telemetry: TopicPattern,
    pub acks: TopicPattern,
    /// Templates with `{device_id}`.
    pub command: String,
    pub status: String,
}

impl Topics {
    /// May `who` publish to `topic`?
    pub fn may_publish(&self, who: &Identity, topic: &str) -> bool {
        match who {
            Identity::Anonymous => true,
            Identity::Device(id) => {
                self.telemetry.device_id(topic).is_ok_and(|t| t == &**id)
                    || self.acks.device_id(topic).is_ok_and(|t| t == &**id)
            }
        }
    }

    /// May `who` subscribe to `filter`? Devices get their own command and
    /// status topics, nothing with a wildcard.
    pub fn may_subscribe(&self, who: &Identity, filter: &str) -> bool {
        match who {
            Identity::Anonymous => true,
            Identity::Device(id) => {
                let own = |template: &str| template.replace("{device_id}", id) == filter;
                !filter.contains(['+', '#']) && (own(&self.command) || own(&self.status))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics {
            telemetry: TopicPattern::new("devices/+/telemetry").unwrap(),
            acks: TopicPattern::new("devices/+/acks").unwrap(),
            command: "devices/{device_id}/commands".into(),
            status: "warden/compliance/{device_id}".into(),
        }
    }

    fn device(id: &str) -> Identity {
        Identity::Device(id.into())
    }

    #[test]
    fn a_device_publishes_only_its_own_telemetry_and_acks() {
        let t = topics();
        let d = device("pos-1");
        assert!(t.may_publish(&d, "devices/pos-1/telemetry"));
        assert!(t.may_publish(&d, "devices/pos-1/acks"));
        assert!(!t.may_publish(&d, "devices/pos-2/telemetry"), "another device's topic");
        assert!(!t.may_publish(&d, "devices/pos-1/commands"), "warden's command topic");
        assert!(!t.may_publish(&d, "warden/compliance/pos-1"), "warden's verdicts");
        assert!(!t.may_publish(&d, "devices/+/telemetry"));
        assert!(!t.may_publish(&d, "devices/pos-1/telemetry/x"));
        assert!(t.may_publish(&Identity::Anonymous, "devices/pos-2/telemetry"));
    }

    #[test]
    fn a_device_subscribes_only_to_its_own_commands_and_status() {
        let t = topics();
        let d = device("pos-1");
        assert!(t.may_subscribe(&d, "devices/pos-1/commands"));
        assert!(t.may_subscribe(&d, "warden/compliance/pos-1"));
        assert!(!t.may_subscribe(&d, "devices/pos-2/commands"));
        assert!(!t.may_subscribe(&d, "devices/+/commands"));
        assert!(!t.may_subscribe(&d, "#"));
        assert!(!t.may_subscribe(&d, "devices/pos-1/telemetry"), "other devices' reports are not its business");
    }

    #[test]
    fn authentication_by_certificate_password_or_nothing() {
        let ok = |name: &str| (name == "pos-1").then(|| Box::<str>::from("pos-1"));
        assert_eq!(authenticate(Some("pos-9"), Some("pos-1"), false, ok), Ok(device("pos-9")), "the CN wins");
        assert_eq!(authenticate(Some("a/b"), None, true, ok), Err(Refused::BadCertificateName));
        assert_eq!(authenticate(None, Some("pos-1"), false, ok), Ok(device("pos-1")));
        assert_eq!(authenticate(None, Some("pos-2"), true, ok), Err(Refused::BadCredentials), "a name is checked");
        assert_eq!(authenticate(None, None, false, ok), Err(Refused::Anonymous));
        assert_eq!(authenticate(None, None, true, ok), Ok(Identity::Anonymous));
    }
}
