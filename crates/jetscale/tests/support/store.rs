//! The database side: connecting, counting, and comparing what was stored with what was sent.

/// One metric point as (device, metric, time µs, value bits).
type Point = (String, String, i64, u64);

/// Connects to a database URL.
pub async fn db(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to test database");
    tokio::spawn(conn);
    client
}

/// The single number `sql` answers (a `count(*)`, usually).
pub async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// How many rows `relation` holds.
pub async fn count_rows(db: &tokio_postgres::Client, relation: &str) -> i64 {
    count(db, &format!("SELECT count(*) FROM {relation}")).await
}

/// Every row `sql` returns.
pub async fn query(db: &tokio_postgres::Client, sql: &str) -> Vec<tokio_postgres::Row> {
    db.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The first column of every row `sql` returns, as text.
pub async fn texts(
    db: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<String> {
    db.query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every row of the metrics table as (device, metric, time µs, value bits).
async fn stored_points(client: &tokio_postgres::Client, table: &str) -> Vec<Point> {
    let rows = client
        .query(
            &format!(
                "SELECT device_id, metric_name, (extract(epoch FROM time) * 1000000)::int8, value FROM {table}"
            ),
            &[],
        )
        .await
        .expect("select points");
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get::<_, f64>(3).to_bits()))
        .collect()
}

/// What the simulator sent, in the same shape as [`stored_points`].
fn sent_points(report: &jetscale::simulate::Report) -> impl Iterator<Item = Point> + '_ {
    report.sent.iter().map(|p| {
        (
            p.device_id.clone(),
            p.metric.to_owned(),
            p.time_unix_nano.div_euclid(1000),
            p.value.to_bits(),
        )
    })
}

/// Asserts that `iot_metrics` holds exactly the points of `reports`: every value bit for bit,
/// none missing, none twice. Returns how many points that is.
pub async fn assert_stored_as_sent(
    db: &tokio_postgres::Client,
    reports: &[&jetscale::simulate::Report],
) -> usize {
    let mut stored = stored_points(db, "iot_metrics").await;
    let mut expected: Vec<Point> = reports.iter().flat_map(|r| sent_points(r)).collect();
    stored.sort();
    expected.sort();
    assert_eq!(
        stored, expected,
        "every value stored bit for bit, none twice"
    );
    stored.len()
}
