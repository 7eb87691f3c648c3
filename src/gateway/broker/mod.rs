//! The embedded MQTT broker (cargo feature `embedded-broker`, on by
//! default): rmqtt in library mode, so `warden run` needs no external
//! service. docs/design.md has the evaluation that chose it over rumqttd.
//!
//! Telemetry does not pass through a subscriber queue: the publish hook
//! hands each report to the compliance task and answers the device's PUBACK
//! only once the report is durable (`hooks`). Devices authenticate with a
//! password from `mqtt.credentials_file` or, on the mqtts listener, a client
//! certificate whose CN is the device id, and use only their own topics
//! (`telemetry::access`). warden's own clients (status, commands, WireGuard address
//! hand-out) connect over loopback as a superuser with a password made at
//! start.

#[cfg(feature = "embedded-broker")]
mod hooks;
#[cfg(feature = "embedded-broker")]
mod retain;

use crate::gateway::mqtt::Inbound;
use crate::metrics::Metrics;
use crate::users::Users;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

/// The user name of warden's own clients: `$` is no device id's first
/// character, so no credentials-file user can take it.
pub const INTERNAL_USER: &str = "$warden";

/// What the broker is started with.
pub struct Settings {
    pub listen: SocketAddr,
    pub tls: Option<Tls>,
    pub allow_anonymous: bool,
    pub users: Option<Arc<Users>>,
    pub topics: crate::telemetry::access::Topics,
}

/// The mqtts listener: devices present a certificate from `client_ca`.
pub struct Tls {
    pub listen: SocketAddr,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_ca: PathBuf,
}

/// Largest MQTT packet the embedded broker accepts. Above warden's own
/// 64 KiB telemetry limit, so an oversized report reaches warden and is
/// counted as `oversize` rather than cutting the publisher off unseen.
#[cfg(feature = "embedded-broker")]
const MAX_PACKET: u32 = 256 * 1024;

/// Messages one client's queue holds while it is slow or offline (rmqtt's
/// default is 1,000, and it drops above that). Telemetry does not queue
/// here (see `hooks`); this is for consumers of the status topic and for
/// command topics. Drops are counted (`warden_broker_dropped_total`).
#[cfg(feature = "embedded-broker")]
const MAX_QUEUE: usize = 1_000_000;

/// Binds the listeners (a port in use is a start-up error) and runs the
/// broker on the current runtime. Reports go to `ingest`. Returns the
/// password of [`INTERNAL_USER`].
#[cfg(feature = "embedded-broker")]
pub async fn start(
    settings: Settings,
    ingest: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Zeroizing<String>> {
    use anyhow::Context;
    use rmqtt::hook::Type;
    use std::num::NonZeroU16;
    use std::time::Duration;

    let listener = |name: &str, addr: SocketAddr| {
        rmqtt::net::Builder::new()
            .name(name)
            .laddr(addr)
            // Reports and verdicts are small: Nagle's algorithm meeting
            // delayed ACKs would add 40 ms to each.
            .nodelay(true)
            // A restart binds again at once, past the last run's TIME_WAIT
            // connections (Linux still refuses a second listener).
            .reuseaddr(Some(true))
            .max_packet_size(MAX_PACKET)
            .max_inflight(NonZeroU16::new(1000).unwrap_or(NonZeroU16::MIN))
            .max_mqueue_len(MAX_QUEUE)
            // rmqtt's default (5 minutes for MQTT 3.1.1) would expire
            // retained verdicts and commands queued for an offline device.
            .message_expiry_interval(Duration::from_secs(7 * 24 * 3600))
    };
    let plain = listener("mqtt", settings.listen)
        .allow_anonymous(settings.allow_anonymous)
        .bind()
        .and_then(|l| l.tcp())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("embedded MQTT broker cannot listen on {}", settings.listen))?;
    let tls = match &settings.tls {
        None => None,
        Some(t) => {
            let path = |p: &PathBuf| Some(p.display().to_string());
            let l = listener("mqtts", t.listen)
                .allow_anonymous(false)
                .tls_cert(path(&t.server_cert))
                .tls_key(path(&t.server_key))
                .tls_client_ca_certs(path(&t.client_ca))
                // A client certificate signed by client_ca is required;
                // its CN names the device.
                .tls_cross_certificate(true)
                .cert_cn_as_username(true)
                .collect_cert_info(true)
                .bind()
                .and_then(|l| l.tls())
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("embedded MQTT broker cannot listen (mqtts) on {}", t.listen))?;
            Some(l)
        }
    };

    let internal_password = Zeroizing::new(random_password()?);
    let scx = rmqtt::context::ServerContext::new()
        // rmqtt refuses connections while the machine looks busy (load,
        // memory); a gatekeeper's broker must not, and its handshakes are
        // already bounded per listener.
        .busy_check_enable(false)
        .build()
        .await;
    *scx.extends.retain_mut().await = Box::new(retain::Retained::new());
    let hooks = Arc::new(hooks::Hooks {
        users: settings.users,
        allow_anonymous: settings.allow_anonymous,
        topics: settings.topics,
        internal_password: internal_password.clone(),
        ingest,
        metrics,
        slow_checks: tokio::sync::Semaphore::new(hooks::SLOW_CHECKS),
        log: std::sync::Mutex::new(crate::gateway::log_limit::LogLimiter::new()),
    });
    let register = scx.extends.hook_mgr().register();
    for typ in
        [Type::ClientAuthenticate, Type::MessagePublishCheckAcl, Type::ClientSubscribeCheckAcl, Type::MessageDropped]
    {
        register.add(typ, Box::new(hooks::Shared(Arc::clone(&hooks)))).await;
    }
    register.start().await;

    let mut server = rmqtt::server::MqttServer::new(scx).listener(plain);
    if let Some(tls) = tls {
        server = server.listener(tls);
    }
    let server = server.build();
    tokio::spawn(async move {
        if let Err(e) = server.run().await {
            tracing::error!(error = %e, "embedded MQTT broker stopped");
        }
    });
    tracing::info!(listen = %settings.listen, tls = ?settings.tls.as_ref().map(|t| t.listen), anonymous = settings.allow_anonymous, "embedded MQTT broker started");
    Ok(internal_password)
}

#[cfg(feature = "embedded-broker")]
fn random_password() -> anyhow::Result<String> {
    use base64::Engine;
    let mut raw = [0u8; 24];
    getrandom::getrandom(&mut raw).map_err(|e| anyhow::anyhow!("no randomness for the broker's password: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw))
}

/// Without the feature, asking for the embedded broker is a start-up error.
#[cfg(not(feature = "embedded-broker"))]
pub async fn start(
    _settings: Settings,
    _ingest: mpsc::Sender<Inbound>,
    _metrics: Arc<Metrics>,
) -> anyhow::Result<Zeroizing<String>> {
    anyhow::bail!("this warden was built without the embedded-broker feature; set mqtt.broker to an external broker")
}
