//! The WireGuard shell: one UDP socket, one TUN device, and the router core
//! between them. Two packet loops (network → TUN and TUN → network) run as
//! separate tasks, so on a multi-thread runtime each direction has a core;
//! a control loop drives timers, applies verdict changes to peers and
//! reloads peers on SIGHUP.

use super::wireguard_io::{SLOT, TunBatch, Udp};
use crate::compliance::{Access, Change, Rules, Stage, Table, grant};
use crate::config::Loaded;
use crate::metrics::Metrics;
use crate::wireguard::config::Checked;
use crate::wireguard::peers::PeerSpec;
use crate::wireguard::pool::Pool;
use crate::wireguard::router::{Admission, Event, Grants, Router, SESSION_LIFETIME, Transmits, scratch};
use anyhow::Context;
use base64::Engine as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, watch};
use tun_rs::{AsyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// TUN reads per wake-up before the transmits go out.
const TUN_READS: usize = 8;
/// boringtun's timers want a call about every 250 ms.
const TICK: Duration = Duration::from_millis(250);
/// Ticks between two reconciliations of every peer (10 s).
const SWEEP_TICKS: u64 = 40;

pub struct WireGuardTask {
    router: Arc<Router>,
    socket: Arc<Udp>,
    tun: Arc<AsyncDevice>,
    /// Admissions on their way to [`Announce`]: unbounded, as each key is
    /// admitted once (the pool's size bounds them), so the packet path never
    /// waits and no announcement is dropped.
    announce: mpsc::UnboundedSender<Event>,
    announcer: Option<(Announce, mpsc::UnboundedReceiver<Event>)>,
    verdicts: Verdicts,
    metrics: Arc<Metrics>,
    changes: broadcast::Receiver<Arc<Change>>,
    /// Bumped when every peer should be reconciled (a policy reload).
    reconcile: watch::Receiver<u64>,
    config_file: Option<PathBuf>,
    /// Public keys of the configured peers (the others came from telemetry).
    configured: std::collections::HashSet<[u8; 32]>,
    pool: Option<Arc<std::sync::Mutex<Pool>>>,
    pool_file: PathBuf,
    /// The pool write in progress, if any.
    saving: Option<tokio::task::JoinHandle<()>>,
    /// Where access flips are recorded (none: the audit trail is off).
    pub audit: Option<crate::gateway::audit_trail::AuditSender>,
}

/// Lets in a device that reported its WireGuard key in telemetry: it gets
/// the pool address it already had, or the lowest free one, and the access
/// its verdict gives. The router then emits [`Event::Admitted`], which
/// [`Announce`] publishes.
struct TelemetryPeers {
    verdicts: Verdicts,
    configured: std::collections::HashSet<[u8; 32]>,
    pool: Arc<std::sync::Mutex<Pool>>,
}

/// Tells a device admitted from telemetry its tunnel address: published,
/// retained, on its command topic, for its agent to configure the tunnel.
struct Announce {
    commands: rumqttc::AsyncClient,
    command_topic: String,
    server_key: String,
}

impl Announce {
    /// Publishes every admission until shutdown. A publish waits for room
    /// in the MQTT client's queue (a broker outage delays announcements,
    /// never loses them); a device is admitted only once, so a lost
    /// announcement would not come again.
    async fn run(self, mut events: mpsc::UnboundedReceiver<Event>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = shutdown.changed() => None,
            };
            let Some(Event::Admitted { device_id, address, .. }) = event else { return };
            let payload = serde_json::json!({
                "command": "wireguard_config",
                "address": address.to_string(),
                "server_public_key": self.server_key,
            });
            let topic = self.command_topic.replace("{device_id}", &device_id);
            if self.commands.publish(topic, rumqttc::QoS::AtLeastOnce, true, payload.to_string()).await.is_err() {
                tracing::warn!(device = %device_id, "the MQTT client is gone: the WireGuard address was not published");
                return;
            }
        }
    }
}

impl Admission for TelemetryPeers {
    fn admit(&self, key: &[u8; 32]) -> Option<(PeerSpec, Access)> {
        if self.configured.contains(key) {
            return None;
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        let device = self.verdicts.table.by_wg_key(&b64)?;
        let address = self.pool.lock().unwrap_or_else(|p| p.into_inner()).assign(&device.id);
        let Some(address) = address else {
            tracing::warn!(device = %device.id, "WireGuard peer pool is full; handshake dropped");
            return None;
        };
        let access = grant(Some(&device), Stage::Admission, &self.verdicts.rules).access;
        tracing::info!(device = %device.id, %address, access = access.label(), "WireGuard peer admitted from telemetry");
        let spec = PeerSpec {
            device_id: Arc::clone(&device.id),
            public_key: *key,
            allowed_ips: vec![ipnet::IpNet::from(address)],
            persistent_keepalive: None,
        };
        Some((spec, access))
    }
}

/// A peer's device and the access its verdict implies: the one access
/// model, with the WireGuard plane's rules (an enforced failure reaches the
/// remediation destinations only).
#[derive(Clone)]
struct Verdicts {
    table: Table,
    rules: Rules,
}

impl Verdicts {
    /// The configured (or admitted) device first; the device that holds the
    /// key's binding only when that id is not in the table.
    fn device(&self, spec: &PeerSpec) -> Option<Arc<crate::compliance::Device>> {
        self.table.get(&spec.device_id).or_else(|| {
            let key = base64::engine::general_purpose::STANDARD.encode(spec.public_key);
            self.table.by_wg_key(&key)
        })
    }

    /// What a running tunnel, last given `applied`, should have.
    fn running(&self, spec: &PeerSpec, applied: Access) -> Access {
        grant(self.device(spec).as_deref(), Stage::Running { applied }, &self.rules).access
    }
}

impl Grants for Verdicts {
    fn at_admission(&self, spec: &PeerSpec) -> Access {
        let device = self.device(spec);
        let g = grant(device.as_deref(), Stage::Admission, &self.rules);
        tracing::debug!(device = %spec.device_id, access = g.access.label(), why = ?g.why, "WireGuard tunnel admitted");
        g.access
    }
}

impl WireGuardTask {
    /// The router, for the API's view of a device's peers.
    pub fn router(&self) -> Arc<Router> {
        Arc::clone(&self.router)
    }

    /// Binds the socket, creates the TUN and installs the configured peers
    /// with the access their devices' verdicts give them now.
    pub async fn new(
        checked: &Checked,
        loaded: &Loaded,
        table: &Table,
        metrics: &Arc<Metrics>,
        changes: broadcast::Receiver<Arc<Change>>,
        reconcile: watch::Receiver<u64>,
        commands: rumqttc::AsyncClient,
    ) -> anyhow::Result<Self> {
        let Some(cfg) = &loaded.config.wireguard else { anyhow::bail!("no [wireguard] section") };
        let socket =
            UdpSocket::bind(cfg.listen).await.with_context(|| format!("WireGuard cannot listen on {}", cfg.listen))?;
        let build = |offload: bool| {
            let builder = tun_rs::DeviceBuilder::new().name(&cfg.interface).mtu(cfg.mtu).offload(offload);
            match checked.address {
                ipnet::IpNet::V4(n) => builder.ipv4(n.addr(), n.prefix_len(), None),
                ipnet::IpNet::V6(n) => builder.ipv6(n.addr(), n.prefix_len()),
            }
            .build_async()
        };
        // Offloads let the kernel hand us TCP super-packets (split here, one
        // read for up to 64 KiB) and take coalesced ones (GRO, one write for
        // many segments): far fewer syscalls and stack traversals per byte.
        // A kernel without them still gets a working, slower plane.
        let tun = build(true)
            .or_else(|e| {
                tracing::warn!(error = %e, "TUN offloads unavailable; one packet per read and write");
                build(false)
            })
            .with_context(|| {
                format!("creating TUN interface {} (it needs CAP_NET_ADMIN and /dev/net/tun)", cfg.interface)
            })?;
        let verdicts = Verdicts { table: table.clone(), rules: Rules::new(loaded.config.policy.unknown_device) };
        let configured: std::collections::HashSet<[u8; 32]> = checked.peers.iter().map(|p| p.public_key).collect();
        let pool_file = loaded.config.node.state_dir.join("wireguard-pool.txt");
        let mut router =
            Router::new(checked.private_key, checked.remediation.clone(), Instant::now(), fastrand::u32(..))
                .with_grants(Box::new(verdicts.clone()));
        let pool = checked.peer_pool.map(|net| {
            // Never hand out the gateway's own address or a configured peer's.
            let reserved = std::iter::once(checked.address.addr())
                .chain(checked.peers.iter().flat_map(|p| p.allowed_ips.iter().map(|n| n.addr())));
            let mut pool = Pool::new(net, reserved);
            if let Ok(text) = std::fs::read_to_string(&pool_file) {
                let skipped = pool.load(&text);
                if skipped > 0 {
                    tracing::warn!(skipped, file = %pool_file.display(), "WireGuard pool lines skipped");
                }
            }
            Arc::new(std::sync::Mutex::new(pool))
        });
        let (announce, events) = mpsc::unbounded_channel();
        let announcer = Announce {
            commands,
            command_topic: loaded.config.mqtt.command_topic.clone(),
            server_key: base64::engine::general_purpose::STANDARD.encode(router.public_key()),
        };
        if let Some(pool) = &pool {
            router = router.with_admission(Box::new(TelemetryPeers {
                verdicts: verdicts.clone(),
                configured: configured.clone(),
                pool: Arc::clone(pool),
            }));
        }
        let router = Arc::new(router);
        // Until a peer's first handshake (an admission), what admission would give.
        router.set_peers(&checked.peers, checked.remediation.clone(), |s| verdicts.at_admission(s));
        let public = base64::engine::general_purpose::STANDARD.encode(router.public_key());
        tracing::info!(listen = %socket.local_addr()?, interface = %cfg.interface, address = %checked.address, peers = checked.peers.len(), public_key = %public, "WireGuard listening");
        Ok(Self {
            router,
            socket: Arc::new(Udp::new(socket).context("setting up the WireGuard socket")?),
            tun: Arc::new(tun),
            announce,
            announcer: Some((announcer, events)),
            verdicts,
            metrics: Arc::clone(metrics),
            changes,
            reconcile,
            config_file: loaded.file.clone(),
            configured,
            pool,
            pool_file,
            saving: None,
            audit: None,
        })
    }

    pub async fn run(mut self, shutdown: watch::Receiver<bool>, ready: Option<Arc<std::sync::atomic::AtomicBool>>) {
        if let Some((announcer, events)) = self.announcer.take() {
            tokio::spawn(announcer.run(events, shutdown.clone()));
        }
        let from_network = tokio::spawn(network_to_tun(Arc::clone(&self.router), self.output(), shutdown.clone()));
        let from_tun = tokio::spawn(tun_to_network(Arc::clone(&self.router), self.output(), shutdown.clone()));
        if let Some(ready) = &ready {
            ready.store(true, std::sync::atomic::Ordering::Release);
        }
        self.control(shutdown).await;
        let _ = from_network.await;
        let _ = from_tun.await;
    }

    async fn control(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hup = super::reload::Hangups::new();
        let mut buf = scratch();
        let mut out = Transmits::default();
        let mut ticks = 0u64;
        let mut to_tun = TunBatch::new();
        let output = self.output();
        loop {
            let hup_recv = hup.recv();
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    ticks += 1;
                    self.router.update_timers(Instant::now(), &mut buf, &mut out);
                    if ticks.is_multiple_of(SWEEP_TICKS) {
                        self.reconcile_all(true);
                    }
                    self.save_pool();
                    output.send(&mut to_tun, &mut out).await;
                    self.gauge_peers();
                }
                change = self.changes.recv() => match change {
                    Ok(change) => self.apply(&change),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // Missed changes: every peer is reconciled instead.
                        self.metrics.events_lagged.inc_by(n);
                        self.reconcile_all(true);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                r = self.reconcile.changed() => match r {
                    Ok(()) => self.reconcile_all(false),
                    Err(_) => return,
                },
                Some(()) = hup_recv => self.reload(),
            }
        }
    }

    /// A verdict changed: every peer of that device (by config, or by the
    /// WireGuard key it reported) gets its new access before the next packet.
    fn apply(&self, change: &Change) {
        let device = self.verdicts.table.get(&change.device);
        let mut peers = self.router.peers_of_device(&change.device);
        if let Some(key) = device.as_ref().and_then(|d| d.report.wg_public_key.as_deref())
            && let Ok(key) = crate::wireguard::config::parse_key(key)
            && let Some(p) = self.router.peer_by_key(&key)
            && !peers.iter().any(|q| Arc::ptr_eq(q, &p))
        {
            peers.push(p);
        }
        for peer in peers {
            if let Some((old, new)) = self.reconcile_peer(&peer) {
                self.metrics.enforcement_wireguard.observe(change.at.elapsed().as_secs_f64());
                tracing::info!(device = %change.device, from = old.label(), to = new.label(), "WireGuard peer access changed");
            }
        }
    }

    /// Sets a peer's access to what its verdict implies; the change, if any.
    fn reconcile_peer(&self, peer: &crate::wireguard::peers::Peer) -> Option<(Access, Access)> {
        let applied = peer.access();
        let desired = self.verdicts.running(&peer.spec, applied);
        // A concurrent handshake may have set it meanwhile: only replace
        // what was read, so an admission's decision is not overwritten.
        let flipped = desired != applied && peer.replace_access(applied, desired);
        if flipped && let Some(a) = &self.audit {
            use base64::Engine as _;
            let key = base64::engine::general_purpose::STANDARD.encode(peer.spec.public_key);
            let data =
                serde_json::json!({"plane": "wireguard", "from": applied.label(), "to": desired.label(), "peer": key});
            a.record("warden.enforcement.applied", &peer.spec.device_id, data);
        }
        flipped.then_some((applied, desired))
    }

    /// Reconciles every peer (after lag, a reload, and every 10 s): a
    /// difference found here is something the event path missed.
    fn reconcile_all(&self, corrections: bool) {
        let mut corrected = 0usize;
        for peer in self.router.peers() {
            if let Some((old, new)) = self.reconcile_peer(&peer) {
                corrected += 1;
                tracing::info!(device = %peer.spec.device_id, from = old.label(), to = new.label(), "WireGuard peer access reconciled");
            }
        }
        if corrections && corrected > 0 {
            self.metrics.reconcile_corrections[1].inc_by(corrected as u64);
        }
    }

    /// SIGHUP: re-read the config file's peers and remediation rules. An
    /// invalid file changes nothing.
    fn reload(&self) {
        let Some(file) = &self.config_file else { return };
        let checked = match Loaded::from_file(file) {
            Ok(l) => l.wireguard,
            Err(errors) => {
                for e in errors {
                    tracing::warn!("WireGuard peers not reloaded: {e}");
                }
                return;
            }
        };
        let Some(checked) = checked else {
            tracing::warn!("the [wireguard] section is gone; a restart stops the plane, peers are kept until then");
            return;
        };
        // Peers that came from telemetry stay; configured ones follow the file.
        let mut specs = checked.peers.clone();
        let new_keys: std::collections::HashSet<[u8; 32]> = specs.iter().map(|p| p.public_key).collect();
        specs.extend(
            self.router
                .peers()
                .iter()
                .filter(|p| !self.configured.contains(&p.spec.public_key) && !new_keys.contains(&p.spec.public_key))
                .map(|p| p.spec.clone()),
        );
        let removed = self.router.set_peers(&specs, checked.remediation, |s| self.verdicts.at_admission(s));
        tracing::info!(peers = checked.peers.len(), removed = removed.len(), "WireGuard peers reloaded");
    }

    /// Writes the pool's assignments when they changed: whole and synced
    /// (`durable::replace`) on a blocking thread, one write at a time, and
    /// without the control loop waiting for it (verdict changes go on
    /// meanwhile). A failed write marks the pool dirty again, for the next
    /// tick.
    fn save_pool(&mut self) {
        let Some(pool) = &self.pool else { return };
        if self.saving.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let text = {
            let mut p = pool.lock().unwrap_or_else(|p| p.into_inner());
            if !p.dirty {
                return;
            }
            p.dirty = false;
            p.save()
        };
        let (file, pool) = (self.pool_file.clone(), Arc::clone(pool));
        self.saving = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::durable::replace(&file, text.as_bytes()) {
                tracing::warn!(error = %e, file = %file.display(), "cannot save the WireGuard pool");
                pool.lock().unwrap_or_else(|p| p.into_inner()).dirty = true;
            }
        }));
    }

    /// What the packet loops and the control loop send through.
    fn output(&self) -> Output {
        Output {
            socket: Arc::clone(&self.socket),
            tun: Arc::clone(&self.tun),
            metrics: Arc::clone(&self.metrics),
            announce: self.announce.clone(),
        }
    }

    fn gauge_peers(&self) {
        let peers = self.router.peers();
        let now = Instant::now();
        let connected = peers
            .iter()
            .filter(|p| p.session().tunnel.since_handshake(now).is_some_and(|d| d < SESSION_LIFETIME))
            .count();
        self.metrics.wireguard_peers[0].set(connected as i64);
        self.metrics.wireguard_peers[1].set((peers.len() - connected) as i64);
    }
}

/// Where the router's output goes: the socket, the TUN, the tallies and the
/// events.
struct Output {
    socket: Arc<Udp>,
    tun: Arc<AsyncDevice>,
    metrics: Arc<Metrics>,
    announce: mpsc::UnboundedSender<Event>,
}

impl Output {
    /// Sends what the router produced; a failed send is a lost datagram, as
    /// UDP allows, and is logged at debug only (the peer retransmits).
    async fn send(&self, to_tun: &mut TunBatch, out: &mut Transmits) {
        for event in out.take_events() {
            // Fails only once the announcer stopped (shutdown).
            let _ = self.announce.send(event);
        }
        for (to, bytes, segment_size) in out.network_batches(self.socket.state.max_gso_segments()) {
            if let Err(e) = self.socket.send(to, bytes, segment_size).await {
                tracing::debug!(error = %e, %to, "WireGuard send failed");
            }
        }
        for packet in out.tun_packets() {
            to_tun.push(packet);
        }
        to_tun.flush(&self.tun).await;
        self.metrics.wireguard(&out.fates, &out.discards);
        out.clear();
    }
}

async fn network_to_tun(router: Arc<Router>, output: Output, mut shutdown: watch::Receiver<bool>) {
    let socket = Arc::clone(&output.socket);
    let mut storage = vec![0u8; SLOT * quinn_udp::BATCH_SIZE];
    let mut meta = vec![quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE];
    let mut buf = scratch();
    let mut out = Transmits::default();
    let mut to_tun = TunBatch::new();
    loop {
        let first = tokio::select! {
            r = socket.recv(&mut storage, &mut meta) => r,
            _ = shutdown.changed() => return,
        };
        let mut next = Some(first);
        let (mut taken, mut failed) = (0, 0);
        while let Some(r) = next.take() {
            match r {
                Ok(n) => {
                    let now = Instant::now();
                    for (m, slot) in meta.iter().zip(storage.chunks(SLOT)).take(n) {
                        // One slot may hold several datagrams (GRO), `stride` apart.
                        for datagram in slot[..m.len.min(slot.len())].chunks(m.stride.max(1)) {
                            router.handle_datagram(now, m.addr, datagram, &mut buf, &mut out);
                            // A GRO slot can hold dozens of datagrams: send before
                            // the batch (and its 64 KiB GRO buffers) grows past a
                            // bound, whatever the peer sends.
                            if out.len() >= IDEAL_BATCH_SIZE {
                                output.send(&mut to_tun, &mut out).await;
                            }
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    tracing::debug!(error = %e, "WireGuard receive failed");
                }
            }
            taken += 1;
            if taken < 4 {
                next = match socket.try_recv(&mut storage, &mut meta) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                    r => Some(r),
                };
            }
        }
        output.send(&mut to_tun, &mut out).await;
        if failed == taken {
            // Nothing but errors: do not spin on a broken socket or device.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn tun_to_network(router: Arc<Router>, output: Output, mut shutdown: watch::Receiver<bool>) {
    let tun = Arc::clone(&output.tun);
    // One read is one packet, or with offloads a super-packet split here
    // into up to IDEAL_BATCH_SIZE segments of at most the MTU.
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
    // Segments never exceed the MTU (at most 9000, checked at load).
    let mut packets = vec![vec![0u8; 9216]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut buf = scratch();
    let mut out = Transmits::default();
    let mut unused = TunBatch::new();
    loop {
        let first = tokio::select! {
            r = tun.recv_multiple(&mut original, &mut packets, &mut sizes, 0) => r,
            _ = shutdown.changed() => return,
        };
        let mut next = Some(first);
        let (mut taken, mut failed) = (0, 0);
        while let Some(r) = next.take() {
            match r {
                Ok(n) => {
                    let now = Instant::now();
                    for (p, len) in packets.iter().zip(&sizes).take(n) {
                        router.handle_tun_packet(now, &p[..*len], &mut buf, &mut out);
                    }
                }
                Err(e) => {
                    failed += 1;
                    tracing::debug!(error = %e, "TUN receive failed");
                }
            }
            taken += 1;
            if taken < TUN_READS {
                next = match tun.try_recv_multiple(&mut original, &mut packets, &mut sizes, 0) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                    r => Some(r),
                };
            }
        }
        output.send(&mut unused, &mut out).await;
        if failed == taken {
            // Nothing but errors: do not spin on a broken socket or device.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
