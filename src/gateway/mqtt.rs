//! The MQTT shell: one rumqttc connection subscribed to the telemetry topic,
//! handing each message (stamped with its arrival time) to the compliance
//! task. It parses nothing itself.
//!
//! rumqttc reconnects at once and forever with no backoff, and only restores
//! subscriptions when the broker kept the session (../shared/DEPENDENCIES.md),
//! so this loop adds jittered exponential backoff and re-subscribes on every
//! CONNACK.

// A shell: it reads the clock and randomness for the cores it drives.
#![allow(clippy::disallowed_methods)]

use crate::config::{Broker, Mqtt, Secrets};
use crate::metrics::Metrics;
use crate::telemetry::UnixMillis;
use anyhow::Context;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, Transport};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// One telemetry message as it arrived.
#[derive(Debug)]
pub struct Inbound {
    pub topic: String,
    pub payload: bytes::Bytes,
    /// Monotonic arrival time: enforcement latency is measured from here.
    pub arrived: Instant,
    pub wall: UnixMillis,
    /// How to acknowledge it once it is durable (`None`: QoS 0, nothing to ack).
    pub ack: Option<Ack>,
}

/// A QoS 1 message's acknowledgement, owed once what it changed is durable.
#[derive(Debug)]
pub enum Ack {
    /// A PUBACK warden's own client owes an external broker. A packet id
    /// means something only on the connection it arrived on: an ack for an
    /// earlier connection is dropped (the broker redelivers that message on
    /// the new one, where it is refused as a replay and acked), so it can
    /// never acknowledge another message that reused the id.
    Client { connection: u64, pkid: u16 },
    /// A device waiting in the embedded broker's publish hook: sending on
    /// it releases the device's PUBACK. Dropping it (the report could not
    /// be made durable) closes the device's connection, and the device
    /// sends the report again.
    Hook(tokio::sync::oneshot::Sender<()>),
}

impl Ack {
    /// The PUBLISH rumqttc needs to build the PUBACK from (only its packet
    /// id and QoS are read).
    pub fn publish(pkid: u16) -> rumqttc::Publish {
        let mut p = rumqttc::Publish::new("", QoS::AtLeastOnce, Vec::new());
        p.pkid = pkid;
        p
    }
}

pub use crate::clock::wall_now;

/// Builds the client options: persistent session (clean_session = false)
/// under a stable client id, so QoS 1 telemetry published while warden was
/// away is delivered when it returns; and manual acknowledgements, so the
/// broker keeps a report until warden has stored it (see `gateway::commit`).
pub fn options(cfg: &Mqtt, secrets: &Secrets, node: &str) -> anyhow::Result<MqttOptions> {
    let (host, port, tls) = match cfg.broker.get_ref() {
        Broker::Embedded => (cfg.listen.ip().to_string(), cfg.listen.port(), false),
        Broker::External { host, port, tls } => (host.clone(), *port, *tls),
    };
    let client_id = cfg.client_id.clone().unwrap_or_else(|| format!("warden-{node}"));
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        // Larger than the 64 KiB telemetry limit, so an oversized report is
        // counted and dropped by warden instead of tearing the connection down.
        .set_max_packet_size(1024 * 1024, 1024 * 1024)
        .set_inflight(1000)
        // An external broker keeps a report until warden acknowledges it,
        // so warden does that once the report is on disk. The embedded
        // broker already acknowledged the device when it read the report
        // and its queues die with warden: holding back warden's own ack
        // would protect nothing and only stall delivery on rumqttd's fixed
        // window of 100 messages in flight (67,000 → 20,000 reports/s).
        .set_manual_acks(*cfg.broker.get_ref() != Broker::Embedded)
        .set_request_channel_capacity(4096);
    if let Some(user) = &cfg.username {
        opts.set_credentials(user.clone(), secrets.mqtt_password.clone().unwrap_or_default());
    }
    if tls {
        opts.set_transport(Transport::Tls(rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config(cfg)?))));
    }
    Ok(opts)
}

/// The client and its event loop, with TCP_NODELAY: telemetry and status
/// messages are small, and Nagle's algorithm meeting delayed ACKs added
/// 40 ms to every verdict round trip on loopback (bench/RESULTS.md).
pub fn connect(opts: MqttOptions) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(opts, 4096);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    (client, eventloop)
}

/// A rustls client config with the ring provider given explicitly, so no
/// second crypto provider is ever linked or picked at run time.
fn tls_config(cfg: &Mqtt) -> anyhow::Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let ca = cfg.ca_file.as_ref().context("mqtts:// needs ca_file")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))? {
        roots.add(cert.with_context(|| format!("parsing {}", ca.display()))?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading key {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    })
}

/// Exponential backoff with jitter: 100 ms doubling, each wait drawn from
/// [half, full] so a fleet of wardens does not reconnect in lockstep. A
/// broker that refused the connection (a CONNACK refusal: credentials,
/// "server unavailable") is retried up to every 30 s; a broker that cannot
/// be reached at all is probed at least every second, so warden is
/// subscribed again within about a second of it accepting connections: the
/// verdicts held meanwhile depend on it.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);
    /// The cap while the broker is unreachable (no CONNACK at all).
    const MAX_UNREACHABLE: Duration = Duration::from_secs(1);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn wait(&mut self) -> Duration {
        self.wait_capped(Self::MAX)
    }

    fn wait_capped(&mut self, cap: Duration) -> Duration {
        let full = self.next.min(cap);
        self.next = (self.next * 2).min(Self::MAX);
        full.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// The wait after `error`: refusals back off fully, unreachable brokers
    /// are probed every second at most.
    fn wait_after(&mut self, error: &rumqttc::ConnectionError) -> Duration {
        match error {
            rumqttc::ConnectionError::ConnectionRefused(_) => self.wait(),
            _ => self.wait_capped(Self::MAX_UNREACHABLE),
        }
    }

    /// Logs a lost connection and sleeps the next backoff; `false` if
    /// shutdown came first.
    async fn pause(
        &mut self,
        error: &rumqttc::ConnectionError,
        what: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let wait = self.wait_after(error);
        tracing::warn!(error = %error, retry_in_ms = wait.as_millis() as u64, "{what}");
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = shutdown.changed() => false,
        }
    }
}

/// Runs the connection until `shutdown` turns true. `ready` is true, and
/// `source` says so to the compliance task, while the telemetry
/// subscription is acknowledged. `connection` counts CONNACKs: it tells
/// which connection an [`Ack`] belongs to.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: AsyncClient,
    mut eventloop: EventLoop,
    filters: Vec<String>,
    tx: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    source: watch::Sender<bool>,
    connection: Arc<AtomicU64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new();
    loop {
        let event = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = shutdown.changed() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let ack = (p.qos != QoS::AtMostOnce && eventloop.mqtt_options.manual_acks())
                    .then(|| Ack::Client { connection: connection.load(Ordering::Acquire), pkid: p.pkid });
                let msg =
                    Inbound { topic: p.topic, payload: p.payload, arrived: Instant::now(), wall: wall_now(), ack };
                // Awaiting here is the backpressure: a busy compliance task
                // slows reading from the broker, which holds QoS 1 messages.
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connection.fetch_add(1, Ordering::AcqRel);
                backoff.reset();
                metrics.mqtt_connects.inc();
                tracing::info!(session_present = ack.session_present, ?filters, "MQTT connected; subscribing");
                let subscriptions = filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(subscriptions) {
                    tracing::warn!(error = %e, "MQTT subscribe request failed");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = ack.return_codes.iter().all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if granted {
                    ready.store(true, Ordering::Release);
                    source.send_replace(true);
                    metrics.mqtt_connected.set(1);
                    tracing::info!("telemetry subscription active");
                } else {
                    tracing::warn!(?filters, "broker refused the telemetry or acknowledgement subscription");
                }
            }
            Ok(_) => {}
            Err(e) => {
                if ready.swap(false, Ordering::AcqRel) {
                    metrics.mqtt_disconnects.inc();
                }
                source.send_replace(false);
                metrics.mqtt_connected.set(0);
                if !backoff.pause(&e, "MQTT connection lost", &mut shutdown).await {
                    break;
                }
            }
        }
    }
    let _ = client.try_disconnect();
}

/// Drives a publish-only connection (the status publisher's) until
/// `shutdown`: it carries no subscription, so all it needs is to be polled
/// and to come back after a failure, with the same backoff.
pub async fn run_publisher(client: AsyncClient, mut eventloop: EventLoop, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::new();
    loop {
        let event = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = shutdown.changed() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => backoff.reset(),
            Ok(_) => {}
            Err(e) => {
                if !backoff.pause(&e, "MQTT status connection lost", &mut shutdown).await {
                    break;
                }
            }
        }
    }
    let _ = client.try_disconnect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..12).map(|_| b.wait()).collect();
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] <= Duration::from_millis(100));
        assert!(waits[3] >= Duration::from_millis(400) && waits[3] <= Duration::from_millis(800));
        assert!(waits.iter().all(|w| *w <= Backoff::MAX));
        assert!(waits[11] >= Backoff::MAX / 2);
        b.reset();
        assert!(b.wait() <= Duration::from_millis(100));
    }

    #[test]
    fn an_unreachable_broker_is_probed_every_second_and_a_refusal_backs_off() {
        let mut b = Backoff::new();
        let io = || rumqttc::ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let waits: Vec<Duration> = (0..20).map(|_| b.wait_after(&io())).collect();
        assert!(waits.iter().all(|w| *w <= Backoff::MAX_UNREACHABLE), "{waits:?}");
        let refused = rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized);
        assert!(b.wait_after(&refused) >= Backoff::MAX / 2, "a refusal waits the full backoff");
    }
}
