//! Prometheus metrics. Every handle is created once here and cached, so the
//! hot paths pay an atomic add, never a lookup by name or label.
//!
//! Long because it is one list: every metric warden exports, its help text
//! and its label values, registered in one place so a name is never
//! registered twice and the whole set can be read at a glance.

use crate::compliance::Verdict;
use crate::telemetry::Refusal;
use crate::wireguard::router::Fate;
use crate::wireguard::tunnel::Discard;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets from 50 µs to 5 s: enforcement is meant to take milliseconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Every metric warden exports.
pub struct Metrics {
    registry: Registry,
    devices: [IntGauge; 3],
    telemetry_accepted: IntCounter,
    telemetry_refused: [IntCounter; Refusal::LABELS.len()],
    verdict_changes: [[IntCounter; 3]; 3],
    /// Telemetry arrival → verdict change published to the planes.
    pub verdict_seconds: Histogram,
    pub policy_reloads_ok: IntCounter,
    pub policy_reloads_failed: IntCounter,
    pub policy_rules: IntGauge,
    pub mqtt_connected: IntGauge,
    pub mqtt_connects: IntCounter,
    pub mqtt_disconnects: IntCounter,
    pub status_published: IntCounter,
    pub status_dropped: IntCounter,
    pub status_coalesced: IntCounter,
    pub snapshot_devices: IntGauge,
    pub snapshot_failures: IntCounter,
    pub snapshot_bad_lines: IntCounter,
    pub journal_sync_seconds: Histogram,
    pub journal_failures: IntCounter,
    pub journal_bad_lines: IntCounter,
    pub telemetry_acks_withheld: IntCounter,
    /// Embedded broker refusals, by [`BROKER_REFUSALS`] reason.
    broker_refusals: [IntCounter; BROKER_REFUSALS.len()],
    /// Messages the embedded broker dropped (a full queue, an expiry).
    pub broker_dropped: IntCounter,
    pub events_lagged: IntCounter,
    radius_requests: Vec<IntCounter>,
    radius_discarded: Vec<IntCounter>,
    pub radius_duration: Histogram,
    coa_requests: Vec<IntCounter>,
    pub radius_sessions: IntGauge,
    /// Sessions by the access their NAS applied ([`crate::compliance::Access`] order).
    pub radius_session_access: [IntGauge; 3],
    pub enforcement_radius: Histogram,
    pub enforcement_wireguard: Histogram,
    /// Per direction (from_peer, to_peer), per [`Fate`].
    wireguard_packets: [[IntCounter; Fate::ALL.len()]; 2],
    wireguard_discarded: [IntCounter; Discard::ALL.len()],
    /// connected (a session younger than 3 minutes) / idle.
    pub wireguard_peers: [IntGauge; 2],
    /// EAP conversations in flight.
    pub eap_sessions: IntGauge,
    eap_refusals: [IntCounter; crate::eap::server::Refusal::ALL.len()],
    /// Per plane (radius, wireguard): sessions or peers a reconciliation
    /// found with other access than their verdict implies, and corrected.
    pub reconcile_corrections: [IntCounter; 2],
    /// Per identity kind ([`IDENTITY_KINDS`]): claims refused because the
    /// identity is bound to another live device.
    identity_conflicts: [IntCounter; 3],
    /// 1 while warden hears its telemetry source.
    pub telemetry_source_up: IntGauge,
    /// Devices whose verdict is held (stale, but the source is down).
    pub verdicts_held: IntGauge,
    /// Batches of restrictions held by the circuit breaker.
    pub changes_pending: IntGauge,
    /// Devices removed after `forget_after` of silence.
    pub devices_forgotten: IntCounter,
    /// Jumps in a device's report numbers: reports lost before warden.
    pub telemetry_seq_gaps: IntCounter,
    /// Users in the users file in force.
    pub radius_users: IntGauge,
    /// Users-file reloads (SIGHUP), by result.
    pub users_reloads_ok: IntCounter,
    pub users_reloads_failed: IntCounter,
    /// Remediation commands by action and [`crate::remediation::State`] (or
    /// `dropped`: the publisher's queue was full; the plan sends it again).
    remediation_commands: IntCounterVec,
    /// Command acknowledgements by [`REMEDIATION_ACKS`] result.
    remediation_acks: [IntCounter; REMEDIATION_ACKS.len()],
    /// Devices with a remediation plan running.
    pub remediation_plans: IntGauge,
    /// From the violation's start to the report that passed.
    pub remediation_seconds: Histogram,
    pub remediation_escalations: IntCounter,
    /// HTTP connections and requests refused, by [`HTTP_REFUSALS`] reason.
    http_refusals: [IntCounter; HTTP_REFUSALS.len()],
    /// Entries appended to the audit trail.
    pub audit_entries: IntCounter,
    /// Enforcement entries that found the trail's queue full.
    pub audit_dropped: IntCounter,
    /// Webhook deliveries by [`WebhookResult`].
    webhook_deliveries: [IntCounter; WebhookResult::ALL.len()],
    /// Trail entries each webhook sink has yet to take.
    pub webhook_backlog: IntGaugeVec,
    /// Scheduled reports written, and not written (`result` ok / failed).
    reports: [IntCounter; 2],
}

/// `result` label values of `warden_webhook_deliveries_total`: events
/// taken by a sink, attempts that failed, events given up after
/// `events.retry_for`, trail entries skipped past `events.max_backlog`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookResult {
    Delivered,
    Failed,
    Expired,
    Skipped,
}

impl WebhookResult {
    pub const ALL: [Self; 4] = [Self::Delivered, Self::Failed, Self::Expired, Self::Skipped];

    pub fn label(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Skipped => "skipped",
        }
    }
}

/// `reason` label values of `warden_http_refusals_total`, in [`HttpRefusal`] order.
pub const HTTP_REFUSALS: [&str; 4] = ["too_many_connections", "header_timeout", "request_timeout", "body_too_large"];

/// Why the API server closed a connection or refused a request (a typed
/// label: a misspelling is a compile error, not a count lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpRefusal {
    TooManyConnections,
    HeaderTimeout,
    RequestTimeout,
    BodyTooLarge,
}

/// Why the embedded broker refused a client: at login (its
/// [`crate::telemetry::access::Refused`]), or a publish or subscribe its ACL
/// does not allow. In [`BROKER_REFUSALS`] order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerRefusal {
    Login(crate::telemetry::access::Refused),
    Publish,
    Subscribe,
}

/// `result` label values of `warden_remediation_acks_total`.
pub const REMEDIATION_ACKS: [&str; 3] = ["accepted", "ack_malformed", "ack_unknown"];

/// `plane` label values of `warden_reconcile_corrections_total`.
pub const PLANES: [&str; 2] = ["radius", "wireguard"];
/// `kind` label values of `warden_identity_conflicts_total`.
pub const IDENTITY_KINDS: [&str; 3] = ["mac", "wg_key", "cert"];

/// `direction` label values of `warden_wireguard_packets_total`.
pub const WIREGUARD_DIRECTIONS: [&str; 2] = ["from_peer", "to_peer"];

/// `result` label values of `warden_coa_requests_total` (its `kind` is
/// [`crate::radius::coa::Kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoaResult {
    Ack,
    Nak,
    Timeout,
    Dropped,
}

impl CoaResult {
    pub const ALL: [Self; 4] = [Self::Ack, Self::Nak, Self::Timeout, Self::Dropped];

    pub fn label(self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Nak => "nak",
            Self::Timeout => "timeout",
            Self::Dropped => "dropped",
        }
    }
}

/// `kind` label values of `warden_radius_requests_total`: labels are enums,
/// so a misspelled one is a compile error, not a count silently dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RadiusKind {
    Mab,
    Pap,
    /// An EAP conversation before its method is chosen.
    Eap,
    EapTls,
    Peap,
    Chap,
    Accounting,
    Status,
}

impl RadiusKind {
    pub const ALL: [Self; 8] =
        [Self::Mab, Self::Pap, Self::Eap, Self::EapTls, Self::Peap, Self::Chap, Self::Accounting, Self::Status];

    pub fn label(self) -> &'static str {
        match self {
            Self::Mab => "mab",
            Self::Pap => "pap",
            Self::Eap => "eap",
            Self::EapTls => "eap-tls",
            Self::Peap => "peap",
            Self::Chap => "chap",
            Self::Accounting => "accounting",
            Self::Status => "status",
        }
    }
}

/// `result` label values of `warden_radius_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RadiusResult {
    Accept,
    Quarantine,
    Reject,
    Challenge,
    Stored,
}

impl RadiusResult {
    pub const ALL: [Self; 5] = [Self::Accept, Self::Quarantine, Self::Reject, Self::Challenge, Self::Stored];

    pub fn label(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Quarantine => "quarantine",
            Self::Reject => "reject",
            Self::Challenge => "challenge",
            Self::Stored => "stored",
        }
    }
}

/// `reason` label values of `warden_radius_discarded_total`: the server
/// core's [`Discard`](crate::radius::server::Discard) reasons and the
/// shell's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RadiusDiscard {
    Server(crate::radius::server::Discard),
    DuplicateAnsweredFromCache,
    SlowCheckBusy,
    EapPoolBusy,
    CoaAnswerIgnored,
}

impl RadiusDiscard {
    /// Its position in [`RADIUS_DISCARDS`]: a flood of garbage costs an
    /// index, not a search of the labels (checked in the tests).
    fn index(self) -> usize {
        use crate::radius::server::Discard;
        match self {
            Self::Server(Discard::UnknownClient) => 0,
            Self::Server(Discard::Malformed(_)) => 1,
            Self::Server(Discard::UnexpectedCode) => 2,
            Self::Server(Discard::MissingMessageAuthenticator) => 3,
            Self::Server(Discard::BadMessageAuthenticator) => 4,
            Self::Server(Discard::BadRequestAuthenticator) => 5,
            Self::Server(Discard::InProgress) => 6,
            Self::Server(Discard::Overloaded) => 7,
            Self::DuplicateAnsweredFromCache => 8,
            Self::SlowCheckBusy => 9,
            Self::EapPoolBusy => 10,
            Self::CoaAnswerIgnored => 11,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Server(d) => d.label(),
            Self::DuplicateAnsweredFromCache => "duplicate_answered_from_cache",
            Self::SlowCheckBusy => "slow_check_busy",
            Self::EapPoolBusy => "eap_pool_busy",
            Self::CoaAnswerIgnored => "coa_answer_ignored",
        }
    }
}

/// Every `reason` label of `warden_broker_refusals_total`: connections
/// (anonymous, bad credentials, a bad certificate name, a forbidden will)
/// and publishes or subscriptions outside the client's own topics.
pub const BROKER_REFUSALS: [&str; 6] = ["anonymous", "credentials", "certificate", "will", "publish", "subscribe"];

/// Every `reason` label of `warden_radius_discarded_total`, exported from
/// zero, so a flood of garbage costs an index, not a label lookup.
pub const RADIUS_DISCARDS: [&str; 12] = [
    "unknown_client",
    "malformed",
    "unexpected_code",
    "missing_message_authenticator",
    "bad_message_authenticator",
    "bad_request_authenticator",
    "in_progress",
    "overloaded",
    "duplicate_answered_from_cache",
    "slow_check_busy",
    "eap_pool_busy",
    "coa_answer_ignored",
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // Registration can only fail on a duplicate name, which this
        // constructor, the only place metrics are registered, rules out.
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone())).unwrap_or_else(|e| panic!("metric registration: {e}"));
            m
        }
        // Metric names and labels are constants: construction cannot fail.
        let counters = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{e}")))
        };
        let histogram = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            reg(&registry, Histogram::with_opts(opts).unwrap_or_else(|e| panic!("{e}")))
        };
        let gauge =
            |name: &str, help: &str| reg(&registry, IntGauge::new(name, help).unwrap_or_else(|e| panic!("{e}")));
        let counter =
            |name: &str, help: &str| reg(&registry, IntCounter::new(name, help).unwrap_or_else(|e| panic!("{e}")));
        let devices = reg(
            &registry,
            IntGaugeVec::new(Opts::new("warden_devices", "Devices in the compliance table, by verdict"), &["verdict"])
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let telemetry =
            counters("warden_telemetry_messages_total", "Telemetry messages received, by result", &["result"]);
        let changes =
            counters("warden_verdict_changes_total", "Verdict changes, by old and new verdict", &["from", "to"]);
        let verdict_seconds = histogram(
            "warden_verdict_seconds",
            "From telemetry arrival to the verdict change published to the enforcement planes",
        );
        let enforcement_seconds = reg(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "warden_enforcement_seconds",
                    "From telemetry arrival to the enforcement action, by plane",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["plane"],
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let reloads = counters("warden_policy_reloads_total", "Policy reloads, by result", &["result"]);
        let users_reloads =
            counters("warden_users_reloads_total", "Users-file reloads (SIGHUP), by result", &["result"]);
        let mqtt_connects = counters("warden_mqtt_connections_total", "MQTT connection events, by event", &["event"]);
        let radius = counters(
            "warden_radius_requests_total",
            "RADIUS requests answered, by kind and result",
            &["kind", "result"],
        );
        let radius_discarded = counters(
            "warden_radius_discarded_total",
            "RADIUS datagrams discarded without an answer, by reason",
            &["reason"],
        );
        let radius_duration = histogram(
            "warden_radius_request_duration_seconds",
            "From a RADIUS request's arrival to its answer being sent",
        );
        let coa = counters(
            "warden_coa_requests_total",
            "CoA and Disconnect requests to NASes, by kind and result",
            &["kind", "result"],
        );
        let status = counters(
            "warden_status_messages_total",
            "Retained verdict messages to status_topic, by result",
            &["result"],
        );
        let enforcement_radius = enforcement_seconds.with_label_values(&["radius"]);
        let enforcement_wireguard = enforcement_seconds.with_label_values(&["wireguard"]);
        let wg_packets = counters(
            "warden_wireguard_packets_total",
            "Inner packets through the WireGuard plane, by direction and what the ACL made of them",
            &["direction", "verdict"],
        );
        let wg_discarded = counters(
            "warden_wireguard_discarded_total",
            "WireGuard datagrams refused without an answer (or with a cookie reply), by reason",
            &["reason"],
        );
        let eap_refusals = counters(
            "warden_eap_refusals_total",
            "EAP conversations refused or ended without success, by reason (limits included)",
            &["reason"],
        );
        let wg_peers = reg(
            &registry,
            IntGaugeVec::new(Opts::new("warden_wireguard_peers", "WireGuard peers, by state"), &["state"])
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let session_access = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new("warden_radius_session_access", "Active RADIUS sessions, by the access their NAS applied"),
                &["access"],
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let corrections = counters(
            "warden_reconcile_corrections_total",
            "Sessions or peers found by reconciliation with other access than their verdict implies, by plane",
            &["plane"],
        );
        let conflicts = counters(
            "warden_identity_conflicts_total",
            "Identity claims refused because another live device holds the identity, by kind",
            &["kind"],
        );
        Self {
            reconcile_corrections: PLANES.map(|p| corrections.with_label_values(&[p])),
            identity_conflicts: IDENTITY_KINDS.map(|k| conflicts.with_label_values(&[k])),
            telemetry_source_up: gauge(
                "warden_telemetry_source_up",
                "1 while the telemetry source is heard (connected, subscribed, the fleet reporting)",
            ),
            verdicts_held: gauge(
                "warden_verdicts_held",
                "Devices whose verdict is held while the telemetry source is out",
            ),
            changes_pending: gauge("warden_changes_pending", "Restriction batches held by the circuit breaker"),
            telemetry_seq_gaps: counter(
                "warden_telemetry_seq_gaps_total",
                "Reports whose seq jumped past the next number: reports lost before they reached warden",
            ),
            radius_users: gauge("warden_radius_users", "Users in the users file in force"),
            users_reloads_ok: users_reloads.with_label_values(&["ok"]),
            users_reloads_failed: users_reloads.with_label_values(&["error"]),
            devices_forgotten: counter(
                "warden_devices_forgotten_total",
                "Devices removed from the table after policy.forget_after without a report",
            ),
            devices: Verdict::ALL.map(|v| devices.with_label_values(&[v.label()])),
            telemetry_accepted: telemetry.with_label_values(&["accepted"]),
            telemetry_refused: Refusal::LABELS.map(|l| telemetry.with_label_values(&[l])),
            verdict_changes: Verdict::ALL
                .map(|from| Verdict::ALL.map(|to| changes.with_label_values(&[from.label(), to.label()]))),
            verdict_seconds,
            policy_reloads_ok: reloads.with_label_values(&["ok"]),
            policy_reloads_failed: reloads.with_label_values(&["error"]),
            policy_rules: gauge("warden_policy_rules", "Rules in force across all policies"),
            mqtt_connected: gauge("warden_mqtt_connected", "1 while the telemetry subscription is up"),
            mqtt_connects: mqtt_connects.with_label_values(&["connected"]),
            mqtt_disconnects: mqtt_connects.with_label_values(&["lost"]),
            status_published: status.with_label_values(&["published"]),
            status_dropped: status.with_label_values(&["dropped"]),
            status_coalesced: status.with_label_values(&["coalesced"]),
            snapshot_devices: gauge("warden_snapshot_devices", "Devices in the last snapshot written"),
            snapshot_failures: counter("warden_snapshot_failures_total", "Snapshots that could not be written"),
            snapshot_bad_lines: counter(
                "warden_snapshot_bad_lines_total",
                "Snapshot lines skipped at start because they did not parse",
            ),
            journal_sync_seconds: histogram(
                "warden_journal_sync_seconds",
                "One group commit of the compliance journal (fdatasync of every batch queued meanwhile)",
            ),
            journal_failures: counter(
                "warden_journal_failures_total",
                "Compliance journal writes or syncs that failed (acknowledgements withheld until a snapshot)",
            ),
            journal_bad_lines: counter(
                "warden_journal_bad_lines_total",
                "Compliance journal lines skipped at start because they did not parse",
            ),
            telemetry_acks_withheld: counter(
                "warden_telemetry_acks_withheld_total",
                "QoS 1 reports not acknowledged because the journal could not make them durable",
            ),
            broker_refusals: {
                let refusals = counters(
                    "warden_broker_refusals_total",
                    "Embedded broker: connections, publishes and subscriptions refused, by reason",
                    &["reason"],
                );
                BROKER_REFUSALS.map(|r| refusals.with_label_values(&[r]))
            },
            broker_dropped: counter(
                "warden_broker_dropped_total",
                "Embedded broker: messages dropped (a full client queue, an expired message)",
            ),
            events_lagged: counter("warden_events_lagged_total", "Verdict changes a slow subscriber missed"),
            radius_requests: RadiusKind::ALL
                .iter()
                .flat_map(|k| RadiusResult::ALL.iter().map(|r| radius.with_label_values(&[k.label(), r.label()])))
                .collect(),
            radius_discarded: RADIUS_DISCARDS.map(|r| radius_discarded.with_label_values(&[r])).to_vec(),
            radius_duration,
            coa_requests: crate::radius::coa::Kind::ALL
                .iter()
                .flat_map(|k| CoaResult::ALL.iter().map(|r| coa.with_label_values(&[k.label(), r.label()])))
                .collect(),
            radius_sessions: gauge("warden_radius_sessions", "Active RADIUS sessions known from accounting"),
            radius_session_access: crate::compliance::Access::ALL
                .map(|a| session_access.with_label_values(&[a.label()])),
            enforcement_radius,
            enforcement_wireguard,
            wireguard_packets: WIREGUARD_DIRECTIONS
                .map(|d| Fate::ALL.map(|f| wg_packets.with_label_values(&[d, f.label()]))),
            wireguard_discarded: Discard::ALL.map(|r| wg_discarded.with_label_values(&[r.label()])),
            wireguard_peers: ["connected", "idle"].map(|s| wg_peers.with_label_values(&[s])),
            eap_sessions: gauge("warden_eap_sessions", "EAP conversations in flight"),
            eap_refusals: crate::eap::server::Refusal::ALL.map(|r| eap_refusals.with_label_values(&[r.label()])),
            remediation_commands: counters(
                "warden_remediation_commands_total",
                "Remediation commands, by action and what became of them (sent, resent, accepted, done, failed, expired, unanswered, skipped, dropped)",
                &["action", "result"],
            ),
            remediation_acks: {
                let acks = counters(
                    "warden_remediation_acks_total",
                    "Command acknowledgements from devices, by result",
                    &["result"],
                );
                REMEDIATION_ACKS.map(|r| acks.with_label_values(&[r]))
            },
            remediation_plans: gauge("warden_remediation_plans", "Devices with a remediation plan running"),
            remediation_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "warden_remediation_seconds",
                        "From a rule's violation to the report that passed it (time to remediate)",
                    )
                    .buckets(vec![1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0, 604_800.0]),
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            remediation_escalations: counter(
                "warden_remediation_escalations_total",
                "Remediation plans whose steps ran out with the rule still failing",
            ),
            http_refusals: {
                let refusals = counters(
                    "warden_http_refusals_total",
                    "API connections closed and requests refused, by reason",
                    &["reason"],
                );
                HTTP_REFUSALS.map(|r| refusals.with_label_values(&[r]))
            },
            audit_entries: counter("warden_audit_entries_total", "Entries appended to the audit trail"),
            audit_dropped: counter(
                "warden_audit_dropped_total",
                "Enforcement outcomes not recorded in the audit trail: its queue was full",
            ),
            webhook_deliveries: {
                let d = counters(
                    "warden_webhook_deliveries_total",
                    "Webhook events delivered and given up, and failed attempts, by result",
                    &["result"],
                );
                WebhookResult::ALL.map(|r| d.with_label_values(&[r.label()]))
            },
            reports: {
                let r = counters("warden_reports_total", "Scheduled drift reports, by result", &["result"]);
                ["ok", "failed"].map(|l| r.with_label_values(&[l]))
            },
            webhook_backlog: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("warden_webhook_backlog", "Audit trail entries a webhook sink has yet to take, by sink"),
                    &["sink"],
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            registry,
        }
    }

    /// Counts a scheduled report written (`true`) or not.
    pub fn reports(&self, ok: bool) {
        self.reports[usize::from(!ok)].inc();
    }

    /// Counts webhook events (or attempts, for `Failed`) by result.
    pub fn webhook(&self, result: WebhookResult, n: u64) {
        self.webhook_deliveries[result as usize].inc_by(n);
    }

    /// Counts an HTTP refusal.
    pub fn http_refusal(&self, reason: HttpRefusal) {
        self.http_refusals[reason as usize].inc();
    }

    /// Counts a remediation command's outcome (`action` comes from the
    /// policies: a small set an operator wrote).
    pub fn remediation_command(&self, action: &str, result: &str) {
        self.remediation_commands.with_label_values(&[action, result]).inc();
    }

    /// Counts an acknowledgement: taken, or refused and why.
    pub fn remediation_ack(&self, result: Result<(), &crate::remediation::command::AckRefusal>) {
        use crate::remediation::command::AckRefusal;
        let i = match result {
            Ok(()) => 0,
            Err(AckRefusal::Malformed(_)) => 1,
            Err(AckRefusal::Unknown) => 2,
        };
        self.remediation_acks[i].inc();
    }

    /// Counts an embedded broker refusal.
    pub fn broker_refusal(&self, reason: BrokerRefusal) {
        let i = match reason {
            BrokerRefusal::Login(r) => r as usize,
            BrokerRefusal::Publish => 4,
            BrokerRefusal::Subscribe => 5,
        };
        self.broker_refusals[i].inc();
    }

    pub fn eap_refusal(&self, r: crate::eap::server::Refusal) {
        if let Some(i) = crate::eap::server::Refusal::ALL.iter().position(|x| *x == r) {
            self.eap_refusals[i].inc_by(1);
        }
    }

    /// Adds the tallies of a batch of WireGuard traffic.
    pub fn wireguard(&self, fates: &[[u64; Fate::ALL.len()]; 2], discards: &[u64; Discard::ALL.len()]) {
        for (counters, counts) in self.wireguard_packets.iter().zip(fates) {
            for (c, n) in counters.iter().zip(counts) {
                if *n > 0 {
                    c.inc_by(*n);
                }
            }
        }
        for (c, n) in self.wireguard_discarded.iter().zip(discards) {
            if *n > 0 {
                c.inc_by(*n);
            }
        }
    }

    pub fn telemetry(&self, result: Result<(), &Refusal>) {
        match result {
            Ok(()) => self.telemetry_accepted.inc(),
            Err(r) => {
                let i = Refusal::LABELS.iter().position(|l| *l == r.label()).unwrap_or(0);
                self.telemetry_refused[i].inc();
            }
        }
    }

    pub fn verdict_change(&self, from: Verdict, to: Verdict) {
        self.verdict_changes[from.index()][to.index()].inc();
    }

    pub fn set_devices(&self, counts: [usize; 3]) {
        for (g, n) in self.devices.iter().zip(counts) {
            g.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Counts one answered RADIUS request.
    pub fn radius_request(&self, kind: RadiusKind, result: RadiusResult) {
        // Declaration order is `ALL`'s order (checked in the tests).
        self.radius_requests[kind as usize * RadiusResult::ALL.len() + result as usize].inc();
    }

    /// Counts one CoA/Disconnect outcome.
    pub fn coa_request(&self, kind: crate::radius::coa::Kind, result: CoaResult) {
        self.coa_requests[kind as usize * CoaResult::ALL.len() + result as usize].inc();
    }

    /// Sessions in total and by applied access.
    pub fn set_sessions(&self, total: usize, by_access: [usize; 3]) {
        self.radius_sessions.set(i64::try_from(total).unwrap_or(i64::MAX));
        for (g, n) in self.radius_session_access.iter().zip(by_access) {
            g.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Counts one refused identity claim.
    pub fn identity_conflict(&self, kind: crate::compliance::identity::Kind) {
        use crate::compliance::identity::Kind;
        let i = match kind {
            Kind::Mac => 0,
            Kind::WgKey => 1,
            Kind::Cert => 2,
        };
        self.identity_conflicts[i].inc();
    }

    /// Counts one discarded RADIUS datagram (a small fixed set of reasons).
    pub fn radius_discard(&self, reason: RadiusDiscard) {
        self.radius_discarded[reason.index()].inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::radius::server::Discard;

    #[test]
    fn every_discard_reason_has_a_cached_counter() {
        let m = Metrics::new();
        let reasons = [
            Discard::UnknownClient,
            Discard::Malformed("too_short"),
            Discard::UnexpectedCode,
            Discard::MissingMessageAuthenticator,
            Discard::BadMessageAuthenticator,
            Discard::BadRequestAuthenticator,
            Discard::InProgress,
            Discard::Overloaded,
        ];
        let shell = [
            RadiusDiscard::DuplicateAnsweredFromCache,
            RadiusDiscard::SlowCheckBusy,
            RadiusDiscard::EapPoolBusy,
            RadiusDiscard::CoaAnswerIgnored,
        ];
        for r in reasons.map(RadiusDiscard::Server).into_iter().chain(shell) {
            assert_eq!(RADIUS_DISCARDS[r.index()], r.label(), "{r:?} counts under another label");
            m.radius_discard(r);
        }
        let text = m.render();
        assert!(text.contains("warden_radius_discarded_total{reason=\"overloaded\"} 1"), "{text}");
        assert!(text.contains("warden_radius_discarded_total{reason=\"eap_pool_busy\"} 1"), "{text}");
    }

    /// Each typed label counts under its own name.
    #[test]
    fn typed_labels_count_under_their_names() {
        use crate::compliance::identity::Kind;
        use crate::remediation::command::AckRefusal;
        use crate::telemetry::access::Refused;
        let m = Metrics::new();
        for r in [
            HttpRefusal::TooManyConnections,
            HttpRefusal::HeaderTimeout,
            HttpRefusal::RequestTimeout,
            HttpRefusal::BodyTooLarge,
        ] {
            m.http_refusal(r);
        }
        m.http_refusal(HttpRefusal::BodyTooLarge);
        m.identity_conflict(Kind::WgKey);
        m.broker_refusal(BrokerRefusal::Login(Refused::Will));
        m.broker_refusal(BrokerRefusal::Subscribe);
        m.remediation_ack(Ok(()));
        m.remediation_ack(Err(&AckRefusal::Unknown));
        let text = m.render();
        for series in [
            "warden_http_refusals_total{reason=\"body_too_large\"} 2",
            "warden_http_refusals_total{reason=\"header_timeout\"} 1",
            "warden_identity_conflicts_total{kind=\"wg_key\"} 1",
            "warden_broker_refusals_total{reason=\"will\"} 1",
            "warden_broker_refusals_total{reason=\"subscribe\"} 1",
            "warden_remediation_acks_total{result=\"accepted\"} 1",
            "warden_remediation_acks_total{result=\"ack_unknown\"} 1",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
    }

    #[test]
    fn label_enums_index_their_counters_in_declaration_order() {
        for (i, k) in RadiusKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        for (i, r) in RadiusResult::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in CoaResult::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, k) in crate::radius::coa::Kind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        let m = Metrics::new();
        m.radius_request(RadiusKind::EapTls, RadiusResult::Challenge);
        m.coa_request(crate::radius::coa::Kind::Disconnect, CoaResult::Timeout);
        let text = m.render();
        assert!(text.contains("warden_radius_requests_total{kind=\"eap-tls\",result=\"challenge\"} 1"), "{text}");
        assert!(text.contains("warden_coa_requests_total{kind=\"disconnect\",result=\"timeout\"} 1"), "{text}");
    }
}
