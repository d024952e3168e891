//! `jetscale query`: the IoT pipeline design's anomaly query as a table.

use super::Global;
use jetscale::config::units::parse_duration;
use jetscale::exporters::postgres::{self, query};
use std::time::Duration;

#[derive(Debug, clap::Subcommand)]
pub enum QueryCommand {
    /// Devices whose average reading over a window is above a threshold (the IoT pipeline
    /// design's query).
    Anomalies(AnomalyArgs),
}

#[derive(Debug, clap::Args)]
pub struct AnomalyArgs {
    #[arg(long, default_value = "device.temperature")]
    pub metric: String,
    #[arg(long, default_value_t = 35.0)]
    pub threshold: f64,
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub window: Duration,
}

pub async fn run(global: &Global, command: QueryCommand) -> anyhow::Result<()> {
    let settings = global.settings()?;
    let client = postgres::connect(&settings.store).await?;
    match command {
        QueryCommand::Anomalies(a) => {
            let rows = query::anomalies(
                &client,
                &settings.store.schema,
                &a.metric,
                a.window,
                a.threshold,
            )
            .await?;
            print!("{}", anomaly_table(&rows));
        }
    }
    Ok(())
}

pub fn anomaly_table(rows: &[query::Anomaly]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.device_id.clone(),
                r.location.clone(),
                format!("{:.2}", r.avg_value),
            ]
        })
        .collect();
    query::render_table(&["device_id", "location", "avg_temp"], &cells)
}
