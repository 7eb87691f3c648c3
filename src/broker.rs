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
    // The broker binds on its own thread: wait (bounded) until it listens,
    // so warden's own clients do not start with a refused connection. The
    // kernel's socket table tells without opening a connection (which
    // rumqttd would log as an error) or binding the port (which could race
    // the broker's own bind).
    for _ in 0..200 {
        if listening(listen.port()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::info!(%listen, "embedded MQTT broker started");
    Ok(())
}

/// Is some socket listening on TCP `port` (Linux: /proc/net/tcp{,6})?
#[cfg(feature = "embedded-broker")]
fn listening(port: u16) -> bool {
    let local = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            // Columns: sl local_address rem_address st ...; st 0A is LISTEN.
            t.lines().any(|l| {
                let mut cols = l.split_whitespace().skip(1);
                let (Some(addr), Some(_), Some(st)) = (cols.next(), cols.next(), cols.next()) else { return false };
                st == "0A" && format!("{addr} ").ends_with(&local)
            })
        })
    })
}

/// Without the feature, asking for the embedded broker is a start-up error.
#[cfg(not(feature = "embedded-broker"))]
pub fn start(_listen: SocketAddr) -> anyhow::Result<()> {
    anyhow::bail!("this warden was built without the embedded-broker feature; set mqtt.broker to an external broker")
}

#[cfg(all(test, feature = "embedded-broker"))]
mod tests {
    #[test]
    fn a_listening_port_is_seen_and_a_closed_one_is_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(super::listening(port));
        drop(l);
        assert!(!super::listening(port));
    }
}
