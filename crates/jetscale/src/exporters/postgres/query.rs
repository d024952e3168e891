//! The queries `jetscale query` runs for users, with parameters bound, never spliced.

use super::StoreError;
use std::time::Duration;
use tokio_postgres::Client;

/// One row of the IoT design's abnormal-temperature query.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    pub device_id: String,
    pub location: String,
    pub avg_value: f64,
}

/// The IoT design's query, verbatim but for its three constants, which are parameters.
pub const ANOMALY_SQL: &str = "SELECT device_id, location, avg(value) as avg_temp
FROM iot_metrics
WHERE metric_name = $1
  AND time > now() - $2::text::interval
GROUP BY device_id, location
HAVING avg(value) > $3
ORDER BY avg_temp DESC";

/// The IoT design's query exactly as printed in the IoT design (for checks that it runs unchanged).
pub const SEED_ANOMALY_SQL: &str = "-- Find devices with abnormal temperature in the last hour
SELECT device_id, location, avg(value) as avg_temp
FROM iot_metrics
WHERE metric_name = 'device.temperature'
  AND time > now() - INTERVAL '1 hour'
GROUP BY device_id, location
HAVING avg(value) > 35.0
ORDER BY avg_temp DESC;";

/// Devices whose average `metric` over `window` is above `threshold`. The relation queried is
/// the IoT design's `iot_metrics` (a view of the configured table when it has another name), in
/// the schema given.
pub async fn anomalies(
    client: &Client,
    schema: &str,
    metric: &str,
    window: Duration,
    threshold: f64,
) -> Result<Vec<Anomaly>, StoreError> {
    let sql = ANOMALY_SQL.replace(
        "FROM iot_metrics",
        &format!("FROM \"{schema}\".iot_metrics"),
    );
    let window = format!("{} seconds", window.as_secs());
    let rows = client.query(&sql, &[&metric, &window, &threshold]).await?;
    Ok(rows
        .iter()
        .map(|r| Anomaly {
            device_id: r.get(0),
            location: r.get(1),
            avg_value: r.get(2),
        })
        .collect())
}

/// Renders rows as an aligned text table.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-"),
    );
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out.push_str(&format!(
        "({} row{})\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    out
}
