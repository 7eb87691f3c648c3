//! rmqtt hooks: authentication, topic ACL, and telemetry ingest.
//!
//! rmqtt awaits the publish ACL hook before it sends the PUBACK (its
//! `session.rs`, QoS 1 branch), so a report is taken here, after the ACL
//! allowed it: handed to the compliance task, and the hook returns only when
//! the report is applied and durable. The device's PUBACK then means
//! "stored": no subscriber queue sits between the device and warden, and a
//! crash before the PUBACK makes the device send again. If the report cannot
//! be made durable, the device is disconnected instead of acknowledged.

// A shell: it stamps arrival times for the cores.
#![allow(clippy::disallowed_methods)]

use crate::gateway::mqtt::{Ack, Inbound, wall_now};
use crate::metrics::Metrics;
use crate::telemetry::access::{self, Identity, Refused, Topics};
use crate::users::Users;
use rmqtt::acl::AuthInfo;
use rmqtt::codec::types::QoS;
use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::session::Session;
use rmqtt::types::{AuthResult, ConnectInfo, PublishAclResult, SubscribeAclResult};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Everything the hooks decide with.
pub struct Hooks {
    pub users: Option<Arc<Users>>,
    pub allow_anonymous: bool,
    pub topics: Topics,
    /// The password of warden's own clients (user name [`super::INTERNAL_USER`]).
    pub internal_password: zeroize::Zeroizing<String>,
    pub ingest: mpsc::Sender<Inbound>,
    pub metrics: Arc<Metrics>,
    /// Argon2 checks at once: each costs tens of ms of CPU on purpose, so
    /// a flood of logins waits here instead of taking every core.
    pub slow_checks: tokio::sync::Semaphore,
    /// Refusals are logged at most 20 per 10 s (all are counted): a client
    /// repeating a refused request must not fill the log.
    pub log: std::sync::Mutex<crate::gateway::log_limit::LogLimiter>,
}

/// Argon2 password checks allowed at once.
pub const SLOW_CHECKS: usize = 2;

/// What an authenticated device carries through its session: rmqtt keeps
/// the `AuthInfo` it was admitted with, and its absence means anonymous.
fn device_info() -> AuthInfo {
    AuthInfo { superuser: false, expire_at: None, rules: Vec::new() }
}

impl Hooks {
    /// Whether a refusal may be logged now, and how many were not since.
    fn may_log(&self) -> Option<u64> {
        let mut log = self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        log.allow(Instant::now()).then(|| log.take_suppressed())
    }

    async fn authenticate(&self, ci: &ConnectInfo) -> ReturnType {
        let username = ci.username().map(|u| u.as_ref());
        let password = ci.password().cloned().unwrap_or_default();
        if username == Some(super::INTERNAL_USER) {
            let ok = crate::radius::crypto::ct_eq(self.internal_password.as_bytes(), &password);
            if !ok {
                self.metrics.broker_refusal(crate::metrics::BrokerRefusal::Login(Refused::BadCredentials));
                if let Some(suppressed) = self.may_log() {
                    tracing::warn!(suppressed, client = %escape(ci.client_id()), "embedded broker refused warden's own user name with a wrong password");
                }
            }
            let result = if ok { AuthResult::Allow(true, None) } else { AuthResult::BadUsernameOrPassword };
            return (false, Some(HookResult::AuthResult(result)));
        }
        let cn = ci.cert().and_then(|c| c.common_name.as_deref());
        let verified = match (cn, username, &self.users) {
            (None, Some(name), Some(users)) => verify(users, name, password, &self.slow_checks).await,
            _ => None,
        };
        let decided = access::authenticate(cn, username, self.allow_anonymous, |_| verified);
        let decided = decided.and_then(|who| match ci.last_will() {
            // A will is a publish made for the client later: same ACL.
            Some(will) if !self.topics.may_publish(&who, will_topic(&will)) => Err(Refused::Will),
            _ => Ok(who),
        });
        let result = match decided {
            Ok(Identity::Anonymous) => AuthResult::Allow(false, None),
            Ok(Identity::Device(_)) => AuthResult::Allow(false, Some(device_info())),
            Err(why) => {
                self.metrics.broker_refusal(crate::metrics::BrokerRefusal::Login(why));
                if let Some(suppressed) = self.may_log() {
                    tracing::warn!(suppressed, client = %escape(ci.client_id()), reason = why.label(), "embedded broker refused a connection");
                }
                match why {
                    Refused::BadCredentials => AuthResult::BadUsernameOrPassword,
                    Refused::Anonymous | Refused::BadCertificateName | Refused::Will => AuthResult::NotAuthorized,
                }
            }
        };
        (false, Some(HookResult::AuthResult(result)))
    }

    /// Who a session's client is, from how it was admitted.
    async fn identity(&self, s: &Session) -> Identity {
        if s.auth_info.is_none() {
            return Identity::Anonymous;
        }
        let ci = s.connect_info().await.ok();
        if let Some(cn) = ci.as_ref().and_then(|c| c.cert()).and_then(|c| c.common_name.clone()) {
            return Identity::Device(cn.into());
        }
        let name = s.id.username.as_deref().unwrap_or_default();
        let device = self.users.as_deref().and_then(|u| access::device_of(u, name)).unwrap_or(name);
        Identity::Device(device.into())
    }

    async fn publish(&self, s: &Session, p: &rmqtt::types::Publish) -> ReturnType {
        if p.topic.contains(['+', '#']) {
            // A topic name with a wildcard is a protocol error (MQTT 3.1.1
            // §3.3.2-2, 5.0 §3.3.2.1) that rmqtt lets through: the
            // connection closes, unacknowledged.
            self.metrics.broker_refusal(crate::metrics::BrokerRefusal::Publish);
            if let Some(suppressed) = self.may_log() {
                tracing::warn!(suppressed, client = %escape(&s.id.client_id), topic = %escape(&p.topic), "embedded broker refused a PUBLISH to a wildcard topic; closing the connection");
            }
            let refused = PublishAclResult::rejected(true, Some("wildcard in a topic name".into()));
            return (false, Some(HookResult::PublishAclResult(refused)));
        }
        let who = self.identity(s).await;
        if !self.topics.may_publish(&who, &p.topic) {
            self.metrics.broker_refusal(crate::metrics::BrokerRefusal::Publish);
            if let Some(suppressed) = self.may_log() {
                tracing::warn!(suppressed, client = %escape(&s.id.client_id), topic = %escape(&p.topic), "embedded broker refused a publish outside the client's own topics");
            }
            let refused = PublishAclResult::rejected(false, Some("not this client's topic".into()));
            return (false, Some(HookResult::PublishAclResult(refused)));
        }
        // Telemetry and command acknowledgements go to the compliance task.
        if !self.topics.telemetry.matches(&p.topic) && !self.topics.acks.matches(&p.topic) {
            return (false, Some(HookResult::PublishAclResult(PublishAclResult::allow())));
        }
        let (tx, rx) = oneshot::channel();
        let durable = p.qos != QoS::AtMostOnce;
        let msg = Inbound {
            topic: p.topic.to_string(),
            payload: p.payload.clone(),
            arrived: Instant::now(),
            wall: wall_now(),
            ack: durable.then_some(Ack::Hook(tx)),
        };
        // Awaiting a full queue is the backpressure: the device waits for
        // its PUBACK, as it would on a busy broker.
        let taken = self.ingest.send(msg).await.is_ok();
        let stored = taken && (!durable || rx.await.is_ok());
        let result = if stored {
            PublishAclResult::allow()
        } else {
            // Not durable (a journal failure, or warden stopping): no PUBACK;
            // the connection closes and the device sends the report again.
            PublishAclResult::rejected(true, Some("not stored; send again".into()))
        };
        (false, Some(HookResult::PublishAclResult(result)))
    }

    async fn subscribe(&self, s: &Session, sub: &rmqtt::types::Subscribe) -> ReturnType {
        let who = self.identity(s).await;
        let result = if self.topics.may_subscribe(&who, &sub.topic_filter) {
            SubscribeAclResult::new_success(sub.opts.qos(), None)
        } else {
            self.metrics.broker_refusal(crate::metrics::BrokerRefusal::Subscribe);
            if let Some(suppressed) = self.may_log() {
                tracing::warn!(suppressed, client = %escape(&s.id.client_id), filter = %escape(&sub.topic_filter), "embedded broker refused a subscription outside the client's own topics");
            }
            SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized)
        };
        (false, Some(HookResult::SubscribeAclResult(result)))
    }
}

/// One registration per hook type, all sharing the same [`Hooks`].
pub struct Shared(pub Arc<Hooks>);

#[async_trait::async_trait]
impl Handler for Shared {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(ci) => self.0.authenticate(ci).await,
            Parameter::MessagePublishCheckAcl(s, p) => self.0.publish(s, p).await,
            Parameter::ClientSubscribeCheckAcl(s, sub) => self.0.subscribe(s, sub).await,
            Parameter::MessageDropped(_, _, _, reason) => {
                self.0.metrics.broker_dropped.inc();
                tracing::debug!(%reason, "embedded broker dropped a message");
                (true, acc)
            }
            _ => (true, acc),
        }
    }
}

/// Checks a password from the credentials file; argon2 is slow on
/// purpose, so it runs off the broker's threads.
async fn verify(
    users: &Arc<Users>,
    name: &str,
    password: bytes::Bytes,
    slow_checks: &tokio::sync::Semaphore,
) -> Option<Box<str>> {
    let user = users.get(name)?;
    let ok = match user.slow_hash() {
        Some(phc) => {
            let Ok(_turn) = slow_checks.acquire().await else { return None };
            tokio::task::spawn_blocking(move || crate::users::verify_argon2(&phc, &password)).await.unwrap_or(false)
        }
        None => user.verify(&password),
    };
    ok.then(|| access::device_of(users, name).unwrap_or(name).into())
}

fn will_topic<'a>(will: &'a rmqtt::types::LastWill<'a>) -> &'a str {
    match will {
        rmqtt::types::LastWill::V3(w) => &w.topic,
        rmqtt::types::LastWill::V5(w) => &w.topic,
    }
}

/// Client-chosen text, escaped and cut short for a log line.
fn escape(s: &str) -> String {
    s.chars().take(128).flat_map(char::escape_debug).collect()
}
