//! The one-shot commands: `check` and `policy test`, and loading the config
//! the same way for every command.

// A shell: the commands read the clock for the cores they run.
#![allow(clippy::disallowed_methods)]

use crate::config::Loaded;
use crate::policy::PolicySet;
use std::path::Path;
use std::process::ExitCode;

/// Loads `--config FILE`, or the embedded default; prints errors and returns
/// the exit code on failure.
pub fn load(file: Option<&Path>) -> Result<Loaded, ExitCode> {
    match file {
        None => {
            tracing::warn!("no --config: running the embedded default (loopback only, for trying warden)");
            let loaded = Loaded::embedded_default();
            for w in &loaded.warnings {
                // Shown once, on the terminal that started warden.
                eprintln!("warning: {w}");
            }
            Ok(loaded)
        }
        Some(f) => Loaded::from_file(f)
            .inspect(|l| {
                for w in &l.warnings {
                    tracing::warn!("{w}");
                }
            })
            .map_err(|errors| {
                for e in &errors {
                    eprintln!("{e}");
                }
                ExitCode::FAILURE
            }),
    }
}

/// `warden check`: the configuration and every policy.
pub fn check(file: Option<&Path>) -> ExitCode {
    let loaded = match file {
        None => {
            let mut l = Loaded::embedded_default();
            l.warnings.clear(); // no secret to show: `check` starts nothing
            l
        }
        Some(f) => match Loaded::from_file(f) {
            Ok(l) => l,
            Err(errors) => {
                for e in &errors {
                    eprintln!("{e}");
                }
                return ExitCode::FAILURE;
            }
        },
    };
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    match PolicySet::load_dir(&loaded.config.policy.dir) {
        Ok(set) => {
            let what = loaded.file.as_ref().map_or_else(|| "embedded default".to_string(), |f| f.display().to_string());
            println!(
                "{what}: OK ({} policies, {} rules, {} groups)",
                set.policies.len(),
                set.rule_count(),
                set.groups.groups.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `warden policy test`: every case in DIR/tests against DIR's policies.
pub fn policy_test(dir: &Path) -> ExitCode {
    let outcomes = match crate::policy::cases::run_dir(dir, crate::clock::wall_now()) {
        Ok(o) => o,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    for o in &outcomes {
        match &o.problem {
            None => println!("ok    {}: {}", o.file.display(), o.name),
            Some(p) => {
                failed += 1;
                println!("FAIL  {}: {}: {p}", o.file.display(), o.name);
            }
        }
    }
    println!("{} passed, {} failed", outcomes.len() - failed, failed);
    if failed == 0 && !outcomes.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// `warden certs init`: a dev PKI in `dir`. Keys are written 0600 and no
/// existing file is overwritten.
pub fn certs_init(dir: &Path, device: &str, server_name: &str) -> ExitCode {
    let run = || -> Result<Vec<String>, String> {
        let files = ["ca.pem", "ca.key", "server.pem", "server.key", "device.pem", "device.key", "audit.key"];
        if let Some(f) = files.iter().find(|f| dir.join(f).exists()) {
            return Err(format!("{} exists; not overwriting (remove it or pick another --dir)", dir.join(f).display()));
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ca = crate::certs::Ca::new("warden dev CA").map_err(|e| e.to_string())?;
        let server = ca.server(server_name).map_err(|e| e.to_string())?;
        let dev = ca.device_now(device).map_err(|e| e.to_string())?;
        let audit = crate::audit::key_pem(&crate::audit::generate_key()?);
        let contents = [
            ca.cert_pem(),
            ca.key_pem().to_string(),
            server.cert_pem,
            server.key_pem,
            dev.cert_pem,
            dev.key_pem,
            audit,
        ];
        let mut written = Vec::new();
        for (name, text) in files.iter().zip(contents) {
            let path = dir.join(name);
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            if name.ends_with(".key") {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            use std::io::Write;
            opts.open(&path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            written.push(path.display().to_string());
        }
        Ok(written)
    };
    match run() {
        Ok(written) => {
            for w in written {
                println!("wrote {w}");
            }
            println!(
                "For [eap]: server_cert = \"{d}/server.pem\", server_key = \"{d}/server.key\", client_ca = \"{d}/ca.pem\".\n\
                 The device certificate names {device:?} (cn, san_dns, san_uri). These are for trying warden only.\n\
                 For [audit]: signing_key_file = \"{d}/audit.key\" (Ed25519, signs the audit trail's checkpoints).",
                d = dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `warden changes list | confirm ID`, through the API of a running warden.
pub fn changes(command: &crate::cli::ChangesCommand, args: &crate::cli::ApiArgs) -> ExitCode {
    use crate::cli::ChangesCommand;
    let api = match api_client(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("warden: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (method, path) = match command {
        ChangesCommand::List => ("GET", "/api/v1/changes".to_string()),
        ChangesCommand::Confirm { id } => ("POST", format!("/api/v1/changes/{id}/confirm")),
    };
    answered(api.request(method, &path))
}

/// Prints an API answer: the body on 200, else the status and the error.
fn answered(answer: Result<(u16, String), String>) -> ExitCode {
    match answer {
        Ok((200, body)) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((code, body)) => {
            eprintln!("warden: the API answered {code}: {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("warden: cannot reach the API: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `warden device exempt | quarantine | clear`, through the API of a
/// running warden.
pub fn device(command: &crate::cli::DeviceCommand, args: &crate::cli::ApiArgs) -> ExitCode {
    use crate::cli::DeviceCommand;
    let api = match api_client(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("warden: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = |id: &str| {
        // Device ids are [A-Za-z0-9._:-]: nothing to escape in a path.
        format!("/api/v1/devices/{id}/override")
    };
    let id = match command {
        DeviceCommand::Exempt { id, .. } | DeviceCommand::Quarantine { id, .. } | DeviceCommand::Clear { id } => id,
    };
    if !crate::telemetry::parse::valid_device_id(id) {
        eprintln!("warden: {id:?} is not a device id");
        return ExitCode::FAILURE;
    }
    let answer = match command {
        DeviceCommand::Exempt { duration, reason, .. } | DeviceCommand::Quarantine { duration, reason, .. } => {
            let mode = if matches!(command, DeviceCommand::Exempt { .. }) { "exempt" } else { "quarantine" };
            let body = serde_json::json!({ "mode": mode, "for": duration, "reason": reason }).to_string();
            api.request_with("PUT", &path(id), Some(&body))
        }
        DeviceCommand::Clear { .. } => api.request("DELETE", &path(id)),
    };
    answered(answer)
}

/// The API client from `--api` and `--token-file`, else the config's `[http]`.
fn api_client(args: &crate::cli::ApiArgs) -> Result<crate::client::Api, String> {
    let loaded = match &args.config {
        Some(f) => Loaded::from_file(f)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?,
        None => Loaded::embedded_default(),
    };
    let url = args.api.clone().unwrap_or_else(|| format!("http://{}", loaded.config.http.listen));
    let token = match &args.token_file {
        Some(f) => Some(std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?.trim().to_string()),
        None => loaded.secrets.api_token.clone(),
    };
    crate::client::Api::new(&url, token)
}

/// `warden audit verify`: every `audit-N.jsonl` in `dir`, in order, as one
/// chain.
pub fn audit_verify(dir: &Path, key: Option<&Path>) -> ExitCode {
    let public = match key.map(std::fs::read_to_string) {
        None => None,
        Some(Ok(text)) => match crate::audit::read_key(&text) {
            Ok((_, public)) => Some(public),
            Err(e) => {
                eprintln!("{}: {e}", key.map(Path::display).map(|d| d.to_string()).unwrap_or_default());
                return ExitCode::from(2);
            }
        },
        Some(Err(e)) => {
            eprintln!("{}: {e}", key.map(Path::display).map(|d| d.to_string()).unwrap_or_default());
            return ExitCode::from(2);
        }
    };
    let files = match crate::audit::files(dir) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            eprintln!("{}: no audit-N.jsonl files", dir.display());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    let mut texts = Vec::new();
    for (_, path) in &files {
        match std::fs::read_to_string(path) {
            Ok(t) => texts.push((path.display().to_string(), t)),
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    let lines =
        texts.iter().flat_map(|(name, t)| t.lines().enumerate().map(move |(i, l)| (format!("{name}:{}", i + 1), l)));
    match crate::audit::verify(lines, public.as_deref()) {
        Ok(v) => {
            println!(
                "{}: OK ({} entries, {} checkpoints, {} signed, {} files)",
                dir.display(),
                v.entries,
                v.checkpoints,
                v.signed,
                files.len()
            );
            ExitCode::SUCCESS
        }
        Err(t) => {
            eprintln!("TAMPERED {t}");
            ExitCode::FAILURE
        }
    }
}

/// `warden report`: the drift report over the audit trail, in one pass.
pub fn report(args: &crate::cli::ReportArgs) -> ExitCode {
    use crate::report::{Options, render};
    let fail = |msg: String| {
        eprintln!("{msg}");
        ExitCode::from(2)
    };
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => match args.config.as_deref().map(Loaded::from_file).unwrap_or_else(|| Ok(Loaded::embedded_default())) {
            Ok(l) => l.config.node.state_dir.join("audit"),
            Err(errors) => return fail(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")),
        },
    };
    let until = match args.until.as_deref().map(crate::telemetry::report::parse_rfc3339) {
        None => crate::clock::wall_now(),
        Some(Ok(t)) => t,
        Some(Err(e)) => return fail(format!("--until: {e}")),
    };
    let since = match crate::diag::parse_duration(&args.since) {
        Ok(d) => until - i64::try_from(d.as_millis()).unwrap_or(i64::MAX).min(until),
        Err(e) => return fail(format!("--since: {e}")),
    };
    let render: fn(&crate::report::Report) -> String = match args.format.as_str() {
        "html" => render::html,
        "csv" => render::csv,
        "json" => render::json,
        other => return fail(format!("--format {other:?}: html, csv or json")),
    };
    let step = crate::gateway::reports::step_for(since, until);
    let opts = Options { since, until, policy: args.policy.clone(), group: args.group.clone(), step };
    let report = match crate::gateway::reports::build_from_dir(&dir, opts) {
        Ok(r) => r,
        Err(e) => return fail(format!("{}: {e}", dir.display())),
    };
    let text = render(&report);
    match &args.out {
        None => {
            use std::io::Write as _;
            let _ = std::io::stdout().write_all(text.as_bytes());
        }
        Some(out) => {
            if let Err(e) = crate::durable::replace(out, text.as_bytes()) {
                return fail(format!("{}: {e}", out.display()));
            }
        }
    }
    ExitCode::SUCCESS
}
