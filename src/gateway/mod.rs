//! `warden run`: builds the cores, starts one task per connection or job,
//! routes events between them, and stops them all on SIGINT/SIGTERM.

// A shell: it reads the clock and randomness for the cores it drives.
#![allow(clippy::disallowed_methods)]

mod admissions;
mod audit_trail;
mod authorize;
pub mod broker;
mod commit;
mod compliance_task;
pub mod reports;
pub mod webhooks;
pub use compliance_task::{Confirm, OverrideRequest};
pub use radius_task::SessionQuery;
pub use remediation::Views as RemediationViews;
mod current;
mod eap_pool;
mod http_server;
pub(crate) mod log_limit;
pub(crate) mod mqtt;
mod radius_auth;
mod radius_enforce;
mod radius_task;
mod reload;
mod remediation;
pub mod restore;
mod status;
mod timer;
mod udp_batch;
mod users_reload;
mod wireguard_io;
mod wireguard_task;

use crate::compliance::{Engine, Table};
use crate::config::{Broker, Loaded};
use crate::http::{ApiState, Readiness};
use crate::metrics::Metrics;
use crate::policy::PolicySet;
use crate::telemetry::parse::Freshness;
use anyhow::Context;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, watch};

/// Verdict changes a slow subscriber may fall behind by before it misses some.
const CHANGES_CAPACITY: usize = 65_536;
/// Telemetry messages queued between the MQTT task and the compliance task.
const TELEMETRY_QUEUE: usize = 8192;

/// Runs the gateway until a termination signal.
pub async fn run(loaded: Loaded) -> anyhow::Result<()> {
    let cfg = &loaded.config;
    let metrics = Arc::new(Metrics::new());

    // Everything that can fail on bad input is done before any port is bound.
    let policies = PolicySet::load_dir(&cfg.policy.dir).map_err(|errors| {
        anyhow::anyhow!(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
            .context("invalid policies")
    })?;
    metrics.policy_rules.set(policies.rule_count() as i64);
    tracing::info!(dir = %cfg.policy.dir.display(), policies = policies.policies.len(), rules = policies.rule_count(), "policies loaded");
    let mut mqtt_options = mqtt::options(&cfg.mqtt, &loaded.secrets, &cfg.node.name)?;
    let embedded = *cfg.mqtt.broker.get_ref() == Broker::Embedded;
    std::fs::create_dir_all(&cfg.node.state_dir)
        .with_context(|| format!("creating state_dir {}", cfg.node.state_dir.display()))?;

    // Restore the table before anything can ask it a question, so there is
    // no moment where a known device looks unknown, or an unknown one compliant.
    // Sized for the snapshot: a table grown device by device while
    // restoring 1,000,000 spent a third of the restart rehashing.
    let table = Table::with_capacity(
        crate::compliance::snapshot::estimate(&cfg.node.state_dir)
            + crate::compliance::journal::estimate(&cfg.node.state_dir),
    );
    let mut engine = Engine::new(table.clone(), policies, cfg.policy.stale_after)
        .with_outage(cfg.policy.outage())
        .with_breaker(cfg.policy.max_restrict_fraction)
        .with_forget_after(cfg.policy.forget_after);
    let restored = restore::table(&mut engine, &cfg.node.state_dir, cfg.policy.forget_after, &metrics, embedded)?;
    // The status topic's retained verdicts: the embedded broker lost them
    // all with the last process; an external broker may miss the changes
    // warden made before it stopped and had not yet published (the
    // journaled ones). Published again, a chunk at a time.
    let republish = if embedded { restored.all } else { restored.journaled };

    let http_listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("HTTP cannot listen on {}", cfg.http.listen))?;
    tracing::info!(listen = %http_listener.local_addr()?, "HTTP API and metrics listening");
    let (changes_tx, _) = broadcast::channel(CHANGES_CAPACITY);
    // Bumped by the compliance task when every session and peer should be
    // reconciled against the table (a policy reload).
    let (reconcile_tx, reconcile_rx) = watch::channel(0u64);
    let mut change_sources = crate::http::Changes::default();
    let mut session_queries = None;
    let radius = match &cfg.radius {
        Some(r) => {
            let mut plane =
                radius_plane(r, &loaded, &table, &metrics, changes_tx.subscribe(), reconcile_rx.clone()).await?;
            let (confirm_tx, confirm_rx) = mpsc::channel(16);
            let (held_tx, held_rx) = watch::channel(Vec::new());
            plane.task.held = held_tx;
            plane.task.confirms = confirm_rx;
            let (query_tx, query_rx) = mpsc::channel(64);
            plane.task.session_queries = query_rx;
            session_queries = Some(query_tx);
            change_sources.sources.push(crate::http::ChangeSource { held: held_rx, confirm: confirm_tx });
            Some(plane)
        }
        None => None,
    };
    // Status messages get their own connection. rumqttc does not read while
    // it flushes, so on one shared connection a burst of status publishes
    // and a broker pushing telemetry at full speed blocked each other until
    // the flush timed out and the session dropped (seen at 1M devices:
    // "Flush timeout", then ~100k QoS 1 redeliveries). The telemetry
    // connection now writes nothing but acks.
    // The embedded broker takes reports in its publish hook, straight into
    // the compliance task; warden's own clients log in as its superuser.
    let (telemetry_tx, telemetry_rx) = mpsc::channel(TELEMETRY_QUEUE);
    if embedded {
        let password = broker::start(broker_settings(&loaded)?, telemetry_tx.clone(), Arc::clone(&metrics)).await?;
        mqtt_options.set_credentials(broker::INTERNAL_USER, password.as_str());
    }
    let mut status_options = mqtt_options.clone();
    status_options.set_client_id(format!("{}-status", mqtt_options.client_id())).set_clean_session(true);
    let (status_client, status_eventloop) = mqtt::connect(status_options);
    let wireguard = match &loaded.wireguard {
        Some(checked) => Some(
            wireguard_task::WireGuardTask::new(
                checked,
                &loaded,
                &table,
                &metrics,
                changes_tx.subscribe(),
                reconcile_rx.clone(),
                status_client.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let wireguard_router = wireguard.as_ref().map(|w| w.router());
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (source_tx, source_rx) = watch::channel(false);
    let (confirm_tx, confirm_rx) = mpsc::channel(16);
    let (held_tx, held_rx) = watch::channel(Vec::new());
    let (policy_tx, policy_rx) = mpsc::channel(4);
    let (groups_tx, groups_rx) = watch::channel(Arc::clone(&engine.policies().groups));
    let (override_tx, override_rx) = mpsc::channel(16);
    let ready = Arc::new(Readiness {
        radius: radius.as_ref().map(|_| Arc::new(std::sync::atomic::AtomicBool::new(false))),
        wireguard: wireguard.as_ref().map(|_| Arc::new(std::sync::atomic::AtomicBool::new(false))),
        ..Readiness::default()
    });
    let mut tasks = tokio::task::JoinSet::new();

    tasks.spawn(mqtt::run_publisher(status_client.clone(), status_eventloop, shutdown.clone()));
    let connection = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (commit_tx, commit_rx) = mpsc::channel(commit::QUEUE);
    let durability = Arc::new(commit::Durability::default());
    // Kept until warden stops: a dropped sender would read as "source gone".
    let mut source_up = None;
    let client = if embedded {
        // Listening, hooks registered: the source is up for good.
        drop(telemetry_tx);
        ready.telemetry.store(true, std::sync::atomic::Ordering::Release);
        source_tx.send_replace(true);
        metrics.mqtt_connected.set(1);
        source_up = Some(source_tx);
        None
    } else {
        let (client, eventloop) = mqtt::connect(mqtt_options);
        tasks.spawn(mqtt::run(
            client.clone(),
            eventloop,
            vec![cfg.mqtt.telemetry_topic.filter(), cfg.mqtt.ack_topic.filter()],
            telemetry_tx,
            Arc::clone(&metrics),
            Arc::clone(&ready.telemetry),
            source_tx,
            Arc::clone(&connection),
            shutdown.clone(),
        ));
        Some(client)
    };
    let audit = if cfg.audit.enabled {
        let key = match &cfg.audit.signing_key_file {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                Some(crate::audit::read_key(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?.0)
            }
            None => None,
        };
        Some(audit_trail::AuditTrail::open(
            &cfg.node.state_dir.join("audit"),
            key,
            cfg.audit.checkpoint_every,
            cfg.audit.retain,
            metrics.audit_entries.clone(),
        )?)
    } else {
        None
    };
    // Entries from the enforcement planes, recorded by the compliance task.
    let (foreign_tx, foreign_rx) = mpsc::channel(audit_trail::FOREIGN_QUEUE);
    let audit_sender =
        audit.is_some().then(|| audit_trail::AuditSender::new(foreign_tx, metrics.audit_dropped.clone()));
    // The trail's last durable entry: the event stream reads up to it.
    let (audit_durable, audit_durable_rx) = watch::channel(audit.as_ref().map_or(0, audit_trail::AuditTrail::seq));
    for hook in &loaded.webhooks {
        let sink = webhooks::Sink {
            hook: hook.clone(),
            settings: cfg.events.settings(hook.batch),
            source: cfg.events.source.clone(),
            trail: cfg.node.state_dir.join("audit"),
            cursors: cfg.node.state_dir.join("events"),
            durable: audit_durable_rx.clone(),
            metrics: Arc::clone(&metrics),
        };
        tasks.spawn(sink.run(shutdown.clone()));
    }
    let (command_tx, command_rx) = mpsc::channel(remediation::QUEUE);
    tasks.spawn(remediation::publish(
        status_client.clone(),
        cfg.mqtt.command_topic.clone(),
        command_rx,
        shutdown.clone(),
    ));
    let remediation_views = Arc::new(remediation::Views::default());
    let status_pending = Arc::new(status::Pending::default());
    let outbox = commit::Outbox {
        changes: changes_tx.clone(),
        status: Arc::clone(&status_pending),
        metrics: Arc::clone(&metrics),
        audit_durable: Arc::new(audit_durable),
    };
    tasks.spawn(commit::run(client, connection, Arc::clone(&durability), commit_rx, outbox));
    tasks.spawn(status::run(
        status_client,
        cfg.mqtt.status_topic.clone(),
        Arc::clone(&status_pending),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    tasks.spawn(
        compliance_task::ComplianceTask {
            engine,
            telemetry: telemetry_rx,
            policies: policy_rx,
            source: source_rx,
            confirms: confirm_rx,
            overrides: override_rx,
            held: held_tx,
            pattern: cfg.mqtt.telemetry_topic.clone(),
            freshness: Freshness {
                max_age_ms: i64::try_from(cfg.policy.stale_after.as_millis()).unwrap_or(i64::MAX),
                max_skew_ms: i64::try_from(cfg.mqtt.max_clock_skew.as_millis()).unwrap_or(i64::MAX),
                not_before: None,
            },
            outgoing: Vec::new(),
            restated: Vec::new(),
            remediation: crate::remediation::Remediation::new(fastrand::u32(..)),
            acks: cfg.mqtt.ack_topic.clone(),
            commands: command_tx,
            remediation_views: Arc::clone(&remediation_views),
            groups: groups_tx,
            remediation_log: log_limit::LogLimiter::new(),
            audit,
            foreign: foreign_rx,
            confirmed_by: None,
            reconcile: reconcile_tx,
            metrics: Arc::clone(&metrics),
            state_dir: cfg.node.state_dir.clone(),
            snapshot_every: cfg.node.snapshot_every,
            journal: restored.journal,
            republish,
            status: status_pending,
            commits: commit_tx,
            durability,
            outage_grace: cfg.policy.outage_grace,
            shutdown: shutdown.clone(),
        }
        .run(),
    );
    if let Some(plane) = radius {
        let mut task = plane.task;
        task.shutdown = shutdown.clone();
        task.enforce.audit = audit_sender.clone();
        task.ready = ready.radius.clone();
        tasks.spawn(task.run());
        for mut shard in plane.shards {
            shard.shutdown = shutdown.clone();
            tasks.spawn(shard.run());
        }
        if let Some((path, users)) = plane.users {
            tasks.spawn(users_reload::run(path, users, Arc::clone(&metrics), shutdown.clone()));
        }
    }
    if let Some(mut task) = wireguard {
        task.audit = audit_sender.clone();
        tasks.spawn(task.run(shutdown.clone(), ready.wireguard.clone()));
    }
    tasks.spawn(reload::run(cfg.policy.dir.clone(), policy_tx, Arc::clone(&metrics), shutdown.clone()));
    tasks.spawn(reports::run(
        loaded.reports.clone(),
        cfg.node.state_dir.join("audit"),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    let api = crate::http::router(ApiState {
        table,
        remediation: remediation_views,
        sessions: session_queries,
        audit_dir: cfg.audit.enabled.then(|| cfg.node.state_dir.join("audit")),
        audit_durable: audit_durable_rx,
        events_source: cfg.events.source.clone(),
        console: Arc::default(),
        report_dirs: Arc::new(loaded.reports.iter().map(|r| (r.name.clone(), r.out_dir.clone())).collect()),
        long_poll: cfg
            .http
            .request_timeout
            .saturating_sub(std::time::Duration::from_secs(1))
            .min(std::time::Duration::from_secs(25)),
        wireguard: wireguard_router,
        groups: groups_rx,
        metrics: Arc::clone(&metrics),
        ready: Arc::clone(&ready),
        tokens: Arc::new(loaded.secrets.api_tokens.clone()),
        overrides: override_tx,
        stale_after: cfg.policy.stale_after,
        changes: {
            change_sources.sources.insert(0, crate::http::ChangeSource { held: held_rx, confirm: confirm_tx });
            change_sources
        },
    });
    let limits = http_server::Limits {
        header_timeout: cfg.http.header_timeout,
        request_timeout: cfg.http.request_timeout,
        max_connections: cfg.http.max_connections,
    };
    tasks.spawn(http_server::serve(http_listener, api, limits, Arc::clone(&metrics), shutdown.clone()));

    wait_for_signal().await;
    tracing::info!("shutting down");
    drop(source_up);
    let _ = shutdown_tx.send(true);
    drop(changes_tx);
    // Give every task (the final snapshot above all) a bounded time to finish.
    let deadline = tokio::time::sleep(std::time::Duration::from_secs(30));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            _ = &mut deadline => {
                tracing::warn!("tasks did not stop within 30 s");
                break;
            }
        }
    }
    Ok(())
}

/// The embedded broker's settings from `[mqtt]` (checked by `config`).
fn broker_settings(loaded: &Loaded) -> anyhow::Result<broker::Settings> {
    let m = &loaded.config.mqtt;
    let users = match &m.credentials_file {
        Some(path) => Some(Arc::new(crate::users::Users::load(path).map_err(|e| anyhow::anyhow!("{e}"))?)),
        None => None,
    };
    let tls = match (m.tls_listen, &m.server_cert, &m.server_key, &m.client_ca) {
        (Some(listen), Some(cert), Some(key), Some(ca)) => {
            Some(broker::Tls { listen, server_cert: cert.clone(), server_key: key.clone(), client_ca: ca.clone() })
        }
        _ => None,
    };
    Ok(broker::Settings {
        listen: m.listen,
        tls,
        allow_anonymous: m.allow_anonymous,
        users,
        topics: crate::telemetry::access::Topics {
            telemetry: m.telemetry_topic.clone(),
            acks: m.ack_topic.clone(),
            command: m.command_topic.clone(),
            status: m.status_topic.clone(),
        },
    })
}

/// The RADIUS plane: the accounting task (sessions, CoA, journal), the auth
/// shards, and the users file they share, with what reloads it.
struct RadiusPlane {
    task: radius_task::RadiusTask,
    shards: Vec<radius_auth::AuthShard>,
    users: Option<(std::path::PathBuf, watch::Sender<Arc<crate::users::Users>>)>,
}

/// Binds the RADIUS sockets and builds the servers from `[radius]`.
async fn radius_plane(
    r: &crate::config::Radius,
    loaded: &Loaded,
    table: &Table,
    metrics: &Arc<Metrics>,
    changes: broadcast::Receiver<Arc<crate::compliance::Change>>,
    reconcile: watch::Receiver<u64>,
) -> anyhow::Result<RadiusPlane> {
    use crate::radius::server::{Client, Server};
    let mut clients = Vec::new();
    let mut nas = std::collections::HashMap::new();
    for c in &loaded.radius_clients {
        nas.insert(
            c.name.as_str().into(),
            radius_enforce::NasConfig { secret: c.secret.clone(), coa_port: c.coa_port, coa_mode: c.coa_mode },
        );
        clients.push(Client {
            name: c.name.as_str().into(),
            net: c.net,
            secret: c.secret.clone(),
            require_message_authenticator: c.require_message_authenticator,
        });
    }
    let users = Arc::new(match &r.users_file {
        Some(path) => crate::users::Users::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => crate::users::Users::default(),
    });
    metrics.radius_users.set(users.len() as i64);
    let (users_tx, users_rx) = watch::channel(Arc::clone(&users));
    let shards = r.shards();
    let auth = bind_shards(r.auth_listen, shards)
        .with_context(|| format!("RADIUS auth cannot listen on {}", r.auth_listen))?;
    let acct = tokio::net::UdpSocket::bind(r.acct_listen)
        .await
        .with_context(|| format!("RADIUS acct cannot listen on {}", r.acct_listen))?;
    // CoA requests leave from an ephemeral port of the auth address's family.
    let coa_bind = std::net::SocketAddr::new(
        if r.auth_listen.is_ipv4() { [0, 0, 0, 0].into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() },
        0,
    );
    let coa_socket = tokio::net::UdpSocket::bind(coa_bind).await.context("binding the CoA socket")?;
    let state_dir = &loaded.config.node.state_dir;
    let mut sessions = crate::radius::sessions::Sessions::default();
    // Replayed, then rewritten with only the live sessions, so the journal
    // does not grow without end across restarts.
    let (replayed, compacted) = crate::radius::journal::replay_and_compact(state_dir, &mut sessions);
    match compacted {
        Ok(kept) => tracing::debug!(kept, "accounting journal compacted"),
        Err(e) => tracing::warn!(error = %e, "accounting journal not compacted; it is kept as it was"),
    }
    if replayed.skipped > 0 {
        tracing::warn!(skipped = replayed.skipped, "unreadable accounting journal lines skipped");
    }
    metrics.set_sessions(sessions.len(), sessions.counts());
    tracing::info!(auth = %auth[0].local_addr()?, acct = %acct.local_addr()?, shards, clients = clients.len(), users = users.len(), sessions = sessions.len(), replayed = replayed.applied, "RADIUS listening");
    let policy = Arc::new(authorize::AccessPolicy::new(
        r.compliant_vlan.clone(),
        r.quarantine_vlan.clone(),
        r.noncompliant,
        loaded.config.policy.unknown_device,
    ));
    let admissions = Arc::new(admissions::Admissions::new(shards));
    let journal = crate::radius::journal::Journal::open(state_dir).context("opening the accounting journal")?;
    let journal_sync = Arc::new(journal.syncer().context("opening the accounting journal")?);
    let enforce = radius_enforce::Enforcer::new(
        sessions,
        journal,
        nas,
        Arc::clone(&policy),
        table.clone(),
        current::Current::new(users_rx.clone()),
        Arc::clone(metrics),
        loaded.config.policy.max_restrict_fraction,
        Arc::clone(&admissions),
    );
    let eap = match loaded.eap.as_ref() {
        Some(e) => Some(eap_pool(e, r, &users_rx, metrics, shards)?),
        None => None,
    };
    let shutdown = watch::channel(false).1;
    let shards = auth
        .into_iter()
        .enumerate()
        .map(|(index, socket)| radius_auth::AuthShard {
            index,
            server: Server::new(clients.clone()),
            socket,
            table: table.clone(),
            users: current::Current::new(users_rx.clone()),
            policy: Arc::clone(&policy),
            metrics: Arc::clone(metrics),
            admissions: Arc::clone(&admissions),
            slow: radius_auth::SlowChecks::new(),
            eap: eap.as_ref().map(|(pool, from)| radius_auth::EapLink::new(Arc::clone(pool), *from)),
            shutdown: shutdown.clone(),
            outbox: Vec::new(),
        })
        .collect();
    let task = radius_task::RadiusTask {
        server: Server::new(clients),
        acct,
        metrics: Arc::clone(metrics),
        enforce,
        coa_socket,
        changes,
        reconcile,
        held: watch::channel(Vec::new()).0,
        confirms: mpsc::channel(1).1,
        session_queries: mpsc::channel(1).1,
        ready: None,
        shutdown,
        journal_sync,
    };
    Ok(RadiusPlane { task, shards, users: r.users_file.clone().map(|p| (p, users_tx)) })
}

/// The EAP pool: as many workers as shards (EAP-TLS handshakes are CPU
/// work), each with its share of the conversation limit.
fn eap_pool(
    e: &crate::eap::config::Checked,
    r: &crate::config::Radius,
    users: &watch::Receiver<Arc<crate::users::Users>>,
    metrics: &Arc<Metrics>,
    workers: usize,
) -> anyhow::Result<(Arc<eap_pool::EapPool>, crate::eap::tls::IdentityFrom)> {
    let mut limits = e.limits.clone();
    limits.max_sessions = limits.max_sessions.div_ceil(workers.max(1));
    // PEAP-MSCHAPv2 needs passwords: offered when there is a users file.
    let peap = r.users_file.is_some();
    let credentials: Arc<dyn crate::eap::peap::Credentials> = Arc::new(users.clone());
    // One State seed per worker: without OS randomness, State could be guessed.
    let mut seeds = vec![[0u8; 32]; workers.max(1)];
    for seed in &mut seeds {
        getrandom::getrandom(seed).map_err(|e| anyhow::anyhow!("no OS randomness for the EAP State seed: {e}"))?;
    }
    let pool = eap_pool::EapPool::start(
        workers,
        |i| {
            let seed = seeds[usize::from(i) % seeds.len()];
            let server = crate::eap::server::EapServer::new(Some(Arc::clone(&e.tls)), limits.clone(), seed);
            if peap { server.with_peap(Arc::clone(&e.peap), Arc::clone(&credentials)) } else { server }
        },
        metrics,
    )
    .context("starting the EAP workers")?;
    tracing::info!(
        methods = if peap { "EAP-TLS, PEAP-MSCHAPv2" } else { "EAP-TLS" },
        workers = pool.workers(),
        "802.1X enabled"
    );
    Ok((Arc::new(pool), e.identity_from))
}

/// `n` sockets on `addr` in one SO_REUSEPORT group: the kernel spreads NAS
/// source addresses over them, each source always to the same one.
fn bind_shards(addr: std::net::SocketAddr, n: usize) -> std::io::Result<Vec<tokio::net::UdpSocket>> {
    // SO_REUSEPORT would let a second warden (same user) share the port
    // silently instead of failing: first make sure it is free.
    let probe = std::net::UdpSocket::bind(addr)?;
    let addr = probe.local_addr()?;
    drop(probe);
    (0..n.max(1))
        .map(|_| {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            tokio::net::UdpSocket::from_std(s.into())
        })
        .collect()
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
