//! The ceilings jetscale's drain is measured against: the database's (pre-encoded rows COPYed
//! with no NATS and no decoding) and the stream's (a bare consumer that fetches and acks).

use crate::settings;
use anyhow::Result;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures::StreamExt;
use jetscale::config::{Encoding, Limits, MetricsLayout};
use jetscale::decode::{DecodeContext, Incoming};
use jetscale::dev::PostgresCluster;
use jetscale::exporters::postgres::batch::{Batch, Delivery, Table};
use jetscale::exporters::postgres::series::SeriesCache;
use jetscale::exporters::postgres::{self, schema};
use jetscale::simulate::{self, fleet::Fleet, SimulateOptions};
use jetscale_model::now_unix_nanos;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rows of the IoT pipeline design's workload encoded as the collector encodes them, then
/// COPYed into a new database `db` with no NATS and no decoding in the timed part; returns
/// the best rate of one and two connections (rows/s) and the database's URL.
pub(crate) async fn database_ceiling(
    nats_url: &str,
    pg: &PostgresCluster,
    db: &str,
    messages: u64,
    layout: MetricsLayout,
) -> Result<(f64, String)> {
    let db_url = pg.create_database(db).await?;
    let mut s = settings(nats_url, &db_url)?;
    s.store.layout = layout;
    let series = (layout == MetricsLayout::Series).then(|| {
        Arc::new(SeriesCache::new(
            jetscale::config::settings::DEFAULT_SERIES_CACHE,
        ))
    });
    let mut client = postgres::connect(&s.store).await?;
    schema::migrate(&mut client, &s.store).await?;
    let names = schema::RelationNames::new(&s.store);
    postgres::maintenance::partitions_ahead(&client, &names, &s.store, Duration::from_secs(3600))
        .await?;
    let limits = Limits::default();
    let ctx = DecodeContext::now(&limits, &[], Encoding::Auto);
    let mut fleet = Fleet::new(&SimulateOptions {
        devices: 10_000,
        ..Default::default()
    });
    let subject = async_nats::Subject::from_static("telemetry.metrics.x");
    let reply = async_nats::Subject::from_static("$JS.ACK.x");
    let mut batches = Vec::new();
    let mut batch = Batch::new(3_600_000_000, 15_000).with_series(series.clone());
    let start = now_unix_nanos() - 600_000_000_000;
    for i in 0..messages {
        let mut payload = Vec::new();
        fleet.next_message((i % 10_000) as usize, start + i as i64 * 1000, &mut payload);
        let payload = bytes::Bytes::from(payload);
        let msg = Incoming {
            subject: subject.as_str(),
            content_type: None,
            format_header: None,
            payload: &payload,
        };
        let _ = batch.add(
            &msg,
            Delivery {
                stream_seq: i + 1,
                reply: reply.clone(),
                headers: None,
                published_ns: 0,
                subject: subject.clone(),
                payload: payload.clone(),
            },
            &ctx,
        );
        if batch.size_in_rows() >= 15_000 {
            let next = batch.new_empty(15_000);
            batches.push(std::mem::replace(&mut batch, next));
        }
    }
    batches.push(batch);
    let rows: usize = batches.iter().map(|b| b.rows(Table::Metrics)).sum();
    // Series are created once, untimed, as a running collector has them cached; the timed
    // part is the points' COPY.
    let mut encoded: Vec<Vec<u8>> = Vec::new();
    for b in &batches {
        let mut rows = b.buffer(Table::Metrics).to_vec();
        if !b.series_patches.is_empty() {
            let tx = client.transaction().await?;
            let resolved = postgres::writer::resolve_series(&tx, &names, b).await?;
            tx.commit().await?;
            postgres::writer::patch_series_ids(&mut rows, &b.series_patches, &resolved.ids)?;
        }
        encoded.push(rows);
    }
    let table = names.quoted(Table::Metrics).to_owned();
    let copy_sql = match layout {
        MetricsLayout::Series => {
            format!("COPY {table} (time, series_id, value) FROM STDIN (FORMAT binary)")
        }
        MetricsLayout::Wide => format!(
            "COPY {table} (time, device_id, location, metric_name, value, unit, attributes) FROM STDIN (FORMAT binary)"
        ),
    };
    let mut best = 0.0f64;
    for connections in [1usize, 2] {
        client.batch_execute(&format!("TRUNCATE {table}")).await?;
        let mut clients = Vec::new();
        for _ in 0..connections {
            clients.push(postgres::connect(&s.store).await?);
        }
        let chunks: Vec<Vec<Vec<u8>>> = (0..connections)
            .map(|c| {
                encoded
                    .iter()
                    .skip(c)
                    .step_by(connections)
                    .cloned()
                    .collect()
            })
            .collect();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (mut client, mine) in clients.into_iter().zip(chunks) {
            let sql = copy_sql.clone();
            tasks.push(tokio::spawn(async move {
                for rows in mine {
                    let tx = client.transaction().await?;
                    let sink = tx.copy_in(sql.as_str()).await?;
                    futures::pin_mut!(sink);
                    use futures::SinkExt;
                    sink.feed(bytes::Bytes::from_static(postgres::copy::HEADER))
                        .await?;
                    sink.feed(bytes::Bytes::from(rows)).await?;
                    sink.feed(bytes::Bytes::from_static(postgres::copy::TRAILER))
                        .await?;
                    sink.finish().await?;
                    tx.commit().await?;
                }
                Ok::<_, tokio_postgres::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let rate = rows as f64 / started.elapsed().as_secs_f64();
        eprintln!("bench: database ceiling with {connections} connection(s): {rate:.0} rows/s");
        best = best.max(rate);
    }
    client.batch_execute(&format!("TRUNCATE {table}")).await?;
    let shown = match layout {
        MetricsLayout::Series => "series layout",
        MetricsLayout::Wide => "wide layout (the IoT pipeline design's iot_metrics)",
    };
    eprintln!("bench: database ceiling, {shown}: {best:.0} rows/s (best of 1 and 2 connections)");
    Ok((best, db_url))
}

/// A durable consumer that fetches and acks, decoding and storing nothing: the stream's
/// ceiling, in messages per second.
pub(crate) async fn bare_drain(
    stream: &async_nats::jetstream::stream::Stream,
    name: &str,
    total: u64,
) -> Result<f64> {
    let mut messages = bare_consumer(stream, name, DeliverPolicy::All).await?;
    let started = Instant::now();
    let seen = fetch_and_ack(&mut messages, total).await?;
    Ok(seen as f64 / started.elapsed().as_secs_f64())
}

/// The simulator publishing `count` fresh messages while a bare consumer from "new" takes
/// them: messages per second through the stream both ways at once.
pub(crate) async fn publish_and_consume(
    js: &async_nats::jetstream::Context,
    stream: &async_nats::jetstream::stream::Stream,
    count: u64,
) -> Result<f64> {
    let mut messages = bare_consumer(stream, "both", DeliverPolicy::New).await?;
    let started = Instant::now();
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            simulate::run(
                js,
                &SimulateOptions {
                    devices: 10_000,
                    count: Some(count / 10_000),
                    interval: Duration::ZERO,
                    seed: 9,
                    ..Default::default()
                },
                |_| {},
            )
            .await
        })
    };
    let seen = fetch_and_ack(&mut messages, (count / 10_000) * 10_000).await?;
    publisher.await??;
    Ok(seen as f64 / started.elapsed().as_secs_f64())
}

/// The messages of a new durable pull consumer `name`, fetched in the collector's batches.
async fn bare_consumer(
    stream: &async_nats::jetstream::stream::Stream,
    name: &str,
    deliver_policy: DeliverPolicy,
) -> Result<pull::Stream> {
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.to_owned()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy,
            max_ack_pending: 50_000,
            ..Default::default()
        })
        .await?;
    Ok(consumer
        .stream()
        .max_messages_per_batch(jetscale::config::settings::DEFAULT_FETCH_BATCH)
        .messages()
        .await?)
}

/// Acks messages one by one until `total` are acked or the consumer ends; returns how many.
async fn fetch_and_ack(messages: &mut pull::Stream, total: u64) -> Result<u64> {
    let mut seen = 0;
    while seen < total {
        let Some(m) = messages.next().await else {
            break;
        };
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        seen += 1;
    }
    Ok(seen)
}
