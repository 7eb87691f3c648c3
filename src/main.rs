//! The `warden` binary: parse arguments, load and validate the configuration
//! (before any port is bound), run the command, map the result to an exit code.

use clap::Parser;
use std::process::ExitCode;
use warden::cli::{CertsCommand, Cli, Command, PolicyCommand};

/// mimalloc, not glibc's malloc: a restart rebuilds 1,000,000 devices from
/// allocations made on the snapshot's reader thread and freed on the
/// engine's, which glibc serialises on its arena lock; restoring took
/// 9.5–10.1 s with glibc and 7.1–7.6 s with mimalloc (bench/RESULTS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmqtt=warn,rmqtt_net=warn,rumqttc=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run { config } => run(config),
        Command::Check { config } => warden::commands::check(config.as_deref()),
        Command::Policy { command: PolicyCommand::Test { dir } } => warden::commands::policy_test(&dir),
        Command::Certs { command: CertsCommand::Init { dir, device, server_name } } => {
            warden::commands::certs_init(&dir, &device, &server_name)
        }
        Command::Changes { command, api } => warden::commands::changes(&command, &api),
        Command::Audit { command: warden::cli::AuditCommand::Verify { dir, key } } => {
            warden::commands::audit_verify(&dir, key.as_deref())
        }
        Command::Device { command, api } => warden::commands::device(&command, &api),
        Command::Report(args) => warden::commands::report(&args),
    }
}

fn run(config: Option<std::path::PathBuf>) -> ExitCode {
    let loaded = match warden::commands::load(config.as_deref()) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warden: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(warden::gateway::run(loaded)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden: {e:#}");
            ExitCode::FAILURE
        }
    }
}
