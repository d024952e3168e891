//! Decode micro-benchmark: the IoT pipeline design's device payload (OTLP JSON), decoded alone
//! (into a sink that discards) and decoded into a batch (decode + binary COPY encoding: the
//! collector's hot path).
//! `cargo bench -p jetscale --bench decode`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use jetscale::config::{Encoding, Limits};
use jetscale::decode::{self, DecodeContext, Discard, Incoming};
use jetscale::exporters::postgres::batch::{Batch, Delivery};
use jetscale::simulate::{fleet::Fleet, SimulateOptions};

fn payloads(n: usize) -> Vec<Vec<u8>> {
    let opts = SimulateOptions {
        devices: 1000,
        ..SimulateOptions::default()
    };
    let mut fleet = Fleet::new(&opts);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    (0..n)
        .map(|i| {
            let mut out = Vec::new();
            fleet.next_message(i % fleet.len(), now + i as i64 * 1000, &mut out);
            out
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let payloads = payloads(5000);
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let limits = Limits::default();
    let ctx = DecodeContext::now(&limits, &[], Encoding::Auto);
    let mut group = c.benchmark_group("otlp_json_seed_payload");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("decode", |b| {
        b.iter(|| {
            let mut sink = Discard::default();
            for p in &payloads {
                let msg = Incoming {
                    subject: "telemetry.metrics.sensor-000001",
                    content_type: Some("application/json"),
                    format_header: None,
                    payload: p,
                };
                let _ = decode::decode(&msg, &ctx, &mut sink);
            }
            sink.records
        })
    });
    let subject = async_nats::Subject::from_static("telemetry.metrics.sensor-000001");
    let reply = async_nats::Subject::from_static("$JS.ACK.TELEMETRY.jetscale.1.1.1.1.0");
    let shared: Vec<bytes::Bytes> = payloads
        .iter()
        .map(|p| bytes::Bytes::from(p.clone()))
        .collect();
    group.bench_function("decode_and_encode_copy", |b| {
        b.iter_batched(
            || Batch::new(3_600_000_000, 15_000),
            |mut batch| {
                for (i, p) in shared.iter().enumerate() {
                    let msg = Incoming {
                        subject: subject.as_str(),
                        content_type: Some("application/json"),
                        format_header: None,
                        payload: p,
                    };
                    let _ = batch.add(
                        &msg,
                        Delivery {
                            stream_seq: i as u64 + 1,
                            reply: reply.clone(),
                            headers: None,
                            published_ns: 0,
                            subject: subject.clone(),
                            payload: p.clone(),
                        },
                        &ctx,
                    );
                }
                batch.size_in_rows()
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
    eprintln!(
        "{} payloads, {} bytes, {} points",
        payloads.len(),
        bytes,
        payloads.len() * 3
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
