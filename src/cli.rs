//! The command line: `warden run | check | policy test`.

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
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
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
