//! `jetscale setup`: provision stream, consumer and schema; idempotent, and says what it did.

use super::Global;
use jetscale::config::Settings;
use jetscale::exporters::postgres::{self, maintenance, schema};
use jetscale::receivers::nats::{self, provision::Provisioned, Drift};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only the NATS side.
    #[arg(long, conflicts_with = "database_only")]
    pub nats_only: bool,
    /// Only the database side.
    #[arg(long)]
    pub database_only: bool,
}

pub async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let settings = global.settings()?;
    let lines = provision(&settings, !args.database_only, !args.nats_only).await?;
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

fn describe(what: &str, outcome: &Provisioned) -> String {
    let drift = |d: &[Drift]| {
        d.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    match outcome {
        Provisioned::Created => format!("{what}: created"),
        Provisioned::Unchanged => {
            format!("{what}: exists with the configured settings; nothing changed")
        }
        Provisioned::Updated(d) => format!("{what}: updated: {}", drift(d)),
        Provisioned::Drifted(d) => format!("{what}: differs and was NOT changed: {}", drift(d)),
    }
}

/// Provisions both sides; returns one line per thing looked at.
pub async fn provision(
    settings: &Settings,
    nats: bool,
    database: bool,
) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    if nats {
        let client = nats::connect(&settings.nats, "jetscale-setup").await?;
        let js = async_nats::jetstream::new(client);
        let (outcome, js_stream) = nats::ensure_stream(&js, &settings.stream).await?;
        lines.push(describe(
            &format!("stream {}", settings.stream.name),
            &outcome,
        ));
        let (outcome, _) = nats::ensure_consumer(&js_stream, &settings.consumer).await?;
        lines.push(describe(
            &format!("consumer {}", settings.consumer.name),
            &outcome,
        ));
    }
    if database {
        let mut client = postgres::connect(&settings.store).await?;
        let report = schema::migrate(&mut client, &settings.store).await?;
        let backend = report.backend.clone().unwrap_or(schema::Backend::Native);
        let names = schema::RelationNames::new(&settings.store);
        if backend.native_partitions() {
            maintenance::partitions_ahead(
                &client,
                &names,
                &settings.store,
                settings.limits.max_future,
            )
            .await?;
        }
        lines.push(format!(
            "schema {} on {}: {}",
            names.metrics,
            backend,
            if report.already_current {
                "up to date; nothing changed"
            } else {
                "created or migrated"
            }
        ));
        lines.push(format!(
            "backend {}: {backend}; {}",
            settings.store.backend, report.backend_reason
        ));
        lines.extend(report.notes);
    }
    Ok(lines)
}
