//! The command line: `warden run | check | certs init | policy test | changes | device`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "warden",
    version,
    about = "Network access control gateway: RADIUS/802.1X, WireGuard and MQTT device compliance"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (no --config: the embedded default, all on loopback).
    Run {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and every policy; errors as FILE:LINE:COL: message.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The circuit breaker's held batches, through the API of a running warden.
    Changes {
        #[command(subcommand)]
        command: ChangesCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// A drift report computed from the audit trail.
    Report(ReportArgs),
    /// Overrides on one device, through the API of a running warden (an admin token).
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Treat device ID as compliant until the override expires.
    Exempt {
        id: String,
        /// How long, e.g. 30m, 2h, 7d (at most 90 days).
        #[arg(long = "for")]
        duration: String,
        /// Why (recorded with the token's name).
        #[arg(long)]
        reason: String,
    },
    /// Treat device ID as noncompliant (restricted) until the override expires.
    Quarantine {
        id: String,
        #[arg(long = "for")]
        duration: String,
        #[arg(long)]
        reason: String,
    },
    /// Remove device ID's override: access follows its reports again.
    Clear { id: String },
}

/// How to reach a running warden's API.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// Its API, e.g. http://127.0.0.1:9090 (default: the config's http.listen).
    #[arg(long, global = true)]
    pub api: Option<String>,
    /// A file holding the API token (default: the config's http.token_file).
    /// With http.tokens_file, give the token of an admin here.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// The configuration the defaults come from (default: the embedded one).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ChangesCommand {
    /// List the held batches.
    List,
    /// Apply the held batch ID.
    Confirm { id: u64 },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run the policy test cases in DIR/tests/*.toml against the policies in DIR.
    Test {
        /// The policy directory.
        #[arg(long, default_value = "policies")]
        dir: PathBuf,
    },
}

/// `warden report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The window: this long before `--until`, e.g. 7d, 24h.
    #[arg(long, default_value = "7d")]
    pub since: String,
    /// The window's end (RFC 3339; default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this policy's rules.
    #[arg(long)]
    pub policy: Option<String>,
    /// Only devices in this group (reported or dynamic).
    #[arg(long)]
    pub group: Option<String>,
    /// html, csv or json.
    #[arg(long, default_value = "html")]
    pub format: String,
    /// Write here (atomically) instead of to standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The trail's directory (default: the config's state_dir/audit).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The configuration the trail's place comes from (default: the embedded one).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Re-check the whole chain and every checkpoint; exits non-zero at the
    /// first edited, removed, reordered or cut entry, naming it.
    Verify {
        /// The trail's directory (`state_dir/audit`).
        #[arg(long, default_value = "state/audit")]
        dir: PathBuf,
        /// The signing key (its public half checks the checkpoints); without
        /// it, the chain alone is checked.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a dev CA, a RADIUS/EAP server certificate and one device certificate (PEM) into DIR.
    Init {
        /// Where to write them (created if missing); existing files are not overwritten.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The device the device certificate names (its CN, SAN DNS and URI).
        #[arg(long, default_value = "laptop-0042")]
        device: String,
        /// The server's DNS name.
        #[arg(long, default_value = "radius.warden.test")]
        server_name: String,
    },
}
