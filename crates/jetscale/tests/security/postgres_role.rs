//! PostgreSQL least privilege: the collector runs as a role with only the GRANTs
//! docs/security.md documents.

use super::temperature;
use crate::support::{
    self, count_rows, jetscale, now_ns, publish, run_collector, settings, succeeds,
};
use jetscale::exporters::postgres::{maintenance, schema};
use jetscale::pipeline::RunOptions;
use serde_json::json;
use std::time::Duration;

/// The GRANTs of docs/security.md for the backend under test, between its
/// `collector-grants` (native) or `collector-grants-timescaledb` markers.
fn documented_grants() -> String {
    let doc = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/security.md"
    ));
    let marker = if support::timescaledb() {
        "collector-grants-timescaledb"
    } else {
        "collector-grants"
    };
    let start = doc
        .find(&format!("<!-- {marker}:begin -->"))
        .expect("docs/security.md marks the GRANTs");
    let end = doc
        .find(&format!("<!-- {marker}:end -->"))
        .expect("docs/security.md marks the end of the GRANTs");
    let block = &doc[start..end];
    let sql_start = block.find("```sql").expect("a sql block") + "```sql".len();
    let sql_end = block[sql_start..].find("```").expect("closed sql block") + sql_start;
    block[sql_start..sql_end].to_owned()
}

/// A histogram, a span and a log record in OTLP/JSON at `now`.
fn other_signals(now: i64) -> Vec<(&'static str, Vec<u8>)> {
    let resource =
        json!({"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]});
    let histogram = json!({"resourceMetrics": [{"resource": resource, "scopeMetrics": [{"metrics": [
        {"name": "latency", "unit": "ms", "histogram": {"aggregationTemporality": 2, "dataPoints": [
            {"startTimeUnixNano": (now - 1_000_000).to_string(), "timeUnixNano": now.to_string(),
             "count": "3", "sum": 6.0, "bucketCounts": ["1", "2"], "explicitBounds": [1.0]}
        ]}}
    ]}]}]});
    let span = json!({"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "checkout",
         "kind": 2, "startTimeUnixNano": now.to_string(), "endTimeUnixNano": (now + 1_000_000).to_string(),
         "status": {}}
    ]}]}]});
    let log = json!({"resourceLogs": [{"resource": resource, "scopeLogs": [{"logRecords": [
        {"timeUnixNano": now.to_string(), "severityNumber": 9, "severityText": "INFO",
         "body": {"stringValue": "hello"}}
    ]}]}]});
    vec![
        (
            "telemetry.metrics.api.latency",
            serde_json::to_vec(&histogram).expect("json"),
        ),
        (
            "telemetry.spans.api.checkout",
            serde_json::to_vec(&span).expect("json"),
        ),
        (
            "telemetry.logs.api",
            serde_json::to_vec(&log).expect("json"),
        ),
    ]
}

fn with_user(url: &str, user: &str) -> String {
    url.replacen("postgres://postgres@", &format!("postgres://{user}@"), 1)
}

/// `setup` runs as the owner; the collector runs as a role with only the documented
/// GRANTs (`--no-migrate`): rows land, upkeep and ledger pruning work, and the role can
/// neither read, delete, truncate nor drop the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_collector_role_has_least_privilege() {
    let nats = support::nats().await;
    let owner_url = support::fresh_database("least_priv").await;
    let mut setup = jetscale(&["setup", "--replicas", "1"]);
    setup
        .env("JETSCALE_NATS_URL", nats.server.url())
        .env("JETSCALE_DATABASE_URL", &owner_url);
    succeeds(&mut setup).await;
    let owner = support::db(&owner_url).await;
    let role = format!("jetscale_collector_{}", std::process::id());
    owner
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .expect("create role");
    let grants = documented_grants().replace("jetscale_collector", &role);
    owner
        .batch_execute(&grants)
        .await
        .expect("the documented GRANTs apply");

    let role_url = with_user(&owner_url, &role);
    let s = settings(&nats.server.url(), &role_url);
    let js = support::jetstream(&nats.server.url()).await;
    let now = now_ns();
    for i in 0..5 {
        let device = format!("sensor-{i}");
        let subject = format!("telemetry.metrics.{device}");
        publish(&js, &subject, &[], temperature(&device, now + i)).await;
    }
    publish(&js, "telemetry.metrics.bad", &[], "not json").await;
    // One of every other signal, so every table and the span deduplication run as the role.
    for (subject, body) in other_signals(now) {
        for _ in 0..2 {
            // Twice: the second span is a duplicate row the unique index must absorb.
            publish(&js, subject, &[], body.clone()).await;
            if !subject.contains("spans") {
                break;
            }
        }
    }
    let options = RunOptions {
        exit_when_idle: Some(Duration::from_millis(1500)),
        skip_migrations: true,
        ..Default::default()
    };
    let report = run_collector(&s, &options, Duration::from_secs(120))
        .await
        .expect("the collector runs with the documented privileges");
    assert_eq!(report.dead_letters, 1, "only the `not json` message");
    for (table, expected) in [
        ("iot_metrics", 5),
        ("telemetry_distributions", 1),
        ("telemetry_spans", 1),
        ("telemetry_logs", 1),
        ("jetscale_dead_letters", 1),
    ] {
        assert_eq!(count_rows(&owner, table).await, expected, "{table}");
    }

    // What the background upkeep and the ledger pruning do, as the role.
    let as_role = support::db(&role_url).await;
    let names = schema::RelationNames::new(&s.store);
    let backend = schema::detect_backend(&owner, &s.store)
        .await
        .expect("the backend setup chose");
    assert_eq!(
        backend.native_partitions(),
        !support::timescaledb(),
        "{backend}"
    );
    maintenance::run_once(&as_role, &names, &s.store, &backend, s.limits.max_future)
        .await
        .expect("upkeep as the collector role");
    if backend.native_partitions() {
        // Indexing a closed points partition runs as the function's owner; here every
        // partition counts as closed.
        let indexed = maintenance::index_closed_partitions(
            &as_role,
            &names,
            std::time::SystemTime::now() + Duration::from_secs(30 * 86_400),
            1000,
        )
        .await
        .expect("indexing closed partitions as the collector role");
        assert!(indexed >= 1, "the partition holding the points was indexed");
    }
    // Denied: reading, deleting, truncating, altering, dropping the data; creating tables.
    for sql in [
        "SELECT * FROM iot_metrics",
        "SELECT * FROM iot_metrics_points",
        "DELETE FROM iot_metrics_points",
        "UPDATE iot_metrics_points SET value = 0",
        "TRUNCATE iot_metrics_points",
        "DROP TABLE iot_metrics_points",
        "ALTER TABLE iot_metrics_points ADD COLUMN x int",
        "DELETE FROM iot_metrics_series",
        "UPDATE iot_metrics_series SET device_id = 'x'",
        "DROP VIEW iot_metrics",
        "DROP TABLE jetscale_dead_letters",
        "DELETE FROM jetscale_dead_letters",
        "SELECT * FROM jetscale_dead_letters",
        "CREATE TABLE public.intruder (x int)",
        "SELECT * FROM telemetry_logs",
    ] {
        let err = as_role
            .batch_execute(sql)
            .await
            .expect_err(&format!("`{sql}` must be refused"));
        let code = err.code().map(|c| c.code().to_owned());
        assert!(
            matches!(code.as_deref(), Some("42501")),
            "`{sql}`: expected insufficient_privilege, got {err:?}"
        );
    }
    // A partition function refuses tables that are not jetscale's (TimescaleDB has none:
    // the query fails for want of the function).
    assert!(as_role
        .query(
            "SELECT public.jetscale_ensure_partitions('pg_class', now(), now() + interval '1 hour', interval '1 hour')",
            &[],
        )
        .await
        .is_err());
    assert_eq!(
        count_rows(&owner, "iot_metrics").await,
        5,
        "the data is intact"
    );
}
