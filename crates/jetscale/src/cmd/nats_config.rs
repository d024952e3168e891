//! `jetscale nats-config`: print a least-privilege nats-server `authorization` block for the
//! configured stream and consumer (see `jetscale::receivers::nats::authz`).

use super::Global;
use anyhow::Context;
use jetscale::receivers::nats::authz::{self, AuthzSpec, PasswordMode};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One NATS user per device, each allowed to publish only on telemetry.metrics.{its id}
    /// (give the ids with --device or --devices-file).
    #[arg(long)]
    pub per_device: bool,
    /// A device id for --per-device (repeat, or separate with commas).
    #[arg(long = "device", value_delimiter = ',', requires = "per_device")]
    pub devices: Vec<String>,
    /// A file with one device id per line (blank lines and `#` comments ignored).
    #[arg(long, requires = "per_device")]
    pub devices_file: Option<PathBuf>,
    /// How passwords are written: `env` ($VAR references nats-server resolves from its
    /// environment; no secret in the output), `bcrypt` (hashes of the passwords in those
    /// variables now), or `plain` (the passwords themselves; only if you must).
    #[arg(long, value_parser = ["env", "bcrypt", "plain"], default_value = "env")]
    pub passwords: String,
    /// bcrypt cost for --passwords bcrypt.
    #[arg(long, default_value_t = 11, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,
    /// The shared device user (without --per-device).
    #[arg(long, default_value = "device")]
    pub device_user: String,
    /// The collector's user.
    #[arg(long, default_value = "collector")]
    pub collector_user: String,
    /// The user that runs `jetscale setup` (the JetStream API).
    #[arg(long, default_value = "admin")]
    pub admin_user: String,
    /// nats-server binary to ask for its version (for the sync_interval advice); default:
    /// nats-server on PATH.
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Write to this file (mode 0600) instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

pub async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let settings = global.settings()?;
    let per_device = if args.per_device {
        let mut ids = args.devices.clone();
        if let Some(file) = &args.devices_file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading device ids from {}", file.display()))?;
            ids.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        Some(ids)
    } else {
        None
    };
    let passwords = match args.passwords.as_str() {
        "bcrypt" => PasswordMode::Bcrypt {
            cost: args.bcrypt_cost,
        },
        "plain" => PasswordMode::Plain,
        _ => PasswordMode::EnvRefs,
    };
    let binary = args.nats_server.clone().or_else(find_nats_server);
    let server_version = binary.as_deref().and_then(authz::server_version);
    let spec = AuthzSpec {
        stream: settings.stream.name.clone(),
        consumer: settings.consumer.name.clone(),
        subjects: settings.stream.subjects.clone(),
        dead_letter_subject: settings.dead_letter_subject.clone(),
        device_user: args.device_user,
        collector_user: args.collector_user,
        admin_user: args.admin_user,
        per_device,
        passwords,
        server_version,
    };
    let generated = tokio::task::spawn_blocking(move || {
        authz::generate(&spec, &|name| std::env::var(name).ok())
    })
    .await
    .context("generating the authorization block")??;
    match &args.output {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("writing {}", path.display()))?;
            file.write_all(generated.config.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} users to {}",
                generated.users.len(),
                path.display()
            );
        }
        None => {
            std::io::stdout()
                .write_all(generated.config.as_bytes())
                .context("writing to standard output")?;
        }
    }
    Ok(())
}

fn find_nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .chain([
            "/usr/sbin/nats-server".into(),
            "/usr/bin/nats-server".into(),
        ])
        .find(|p| p.is_file())
}
