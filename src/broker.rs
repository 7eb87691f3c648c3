//! The embedded MQTT broker (cargo feature `embedded-broker`, on by default):
//! rumqttd in the warden process, so `warden run` needs no external service.
//!
//! warden's own telemetry client reaches it over loopback TCP like any other
//! client: rumqttd's in-process link stalled in testing (see
//! ../shared/DEPENDENCIES.md), the TCP path did not, and it keeps one client
//! code path for the embedded and the external broker.

use std::net::SocketAddr;

/// Largest MQTT payload the embedded broker accepts. Above warden's own
/// 64 KiB telemetry limit, so an oversized report reaches warden and is
/// counted as `oversize` rather than cutting the publisher off unseen.
#[cfg(feature = "embedded-broker")]
const MAX_PAYLOAD: usize = 256 * 1024;

/// Starts the broker on `listen` in its own threads.
///
/// rumqttd only logs a failed bind, so the address is bound (and released)
/// here first to turn "port in use" into a clear start-up error.
#[cfg(feature = "embedded-broker")]
pub fn start(listen: SocketAddr) -> anyhow::Result<()> {
    use anyhow::Context;
    drop(
        std::net::TcpListener::bind(listen)
            .with_context(|| format!("embedded MQTT broker cannot listen on {listen}"))?,
    );
    let server = rumqttd::ServerSettings {
        name: "warden-embedded".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: MAX_PAYLOAD,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 100_000,
            max_outgoing_packet_count: 10_000,
            max_segment_size: 64 * 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(std::collections::HashMap::from([("warden-embedded".to_string(), server)])),
        ..Default::default()
    };
    std::thread::Builder::new().name("mqtt-broker".into()).spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        if let Err(e) = broker.start() {
            tracing::error!(error = %e, "embedded MQTT broker stopped");
        }
    })?;
    // The broker binds on its own thread: wait (bounded) until it accepts,
    // so warden's own clients do not start with a refused connection.
    let probe =
        if listen.ip().is_unspecified() { SocketAddr::new([127, 0, 0, 1].into(), listen.port()) } else { listen };
    for _ in 0..200 {
        if std::net::TcpStream::connect_timeout(&probe, std::time::Duration::from_millis(50)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::info!(%listen, "embedded MQTT broker started");
    Ok(())
}

/// Without the feature, asking for the embedded broker is a start-up error.
#[cfg(not(feature = "embedded-broker"))]
pub fn start(_listen: SocketAddr) -> anyhow::Result<()> {
    anyhow::bail!("this warden was built without the embedded-broker feature; set mqtt.broker to an external broker")
}
