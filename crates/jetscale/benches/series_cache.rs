//! Series cache lookups: the cost per metric point of finding its series id, for a small fleet
//! (the table fits in the CPU's caches) and a fleet of 500,000 devices (1.5 million series, a
//! table of tens of MiB, where each lookup is a trip to memory).
//! `cargo bench -p jetscale --bench series_cache`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jetscale::exporters::postgres::series::{SeriesCache, SeriesKey};

fn keys(n: u64) -> Vec<SeriesKey> {
    (0..n)
        .map(|i| {
            SeriesKey::of(
                &format!("device-{:06}", i / 3),
                "building-a",
                ["temperature", "humidity", "battery"][(i % 3) as usize],
                "",
                "{}",
            )
        })
        .collect()
}

const BATCH: usize = 5_000;

fn lookups(c: &mut Criterion) {
    for series in [30_000u64, 1_500_000] {
        let keys_of = keys(series);
        let cache = SeriesCache::new(2_097_152);
        cache.insert_all(keys_of.iter().enumerate().map(|(i, k)| (*k, i as i64 + 1)));
        println!(
            "series_cache/{series}: {} entries in {:.1} MiB of table",
            cache.len(),
            cache.table_bytes() as f64 / (1 << 20) as f64
        );
        // One batch's worth of points per iteration, the fleet's next ones in publishing
        // order, so a large fleet's lookups do not find the previous iteration's lines cached.
        let mut cursor = 0usize;
        let windows = keys_of.len() - BATCH;
        let mut next_batch = move || {
            let start = cursor;
            cursor = (cursor + BATCH) % windows;
            start..start + BATCH
        };
        let mut group = c.benchmark_group(format!("series_cache/{series}"));
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function("get each", |b| {
            b.iter(|| {
                let range = next_batch();
                keys_of[range]
                    .iter()
                    .filter_map(|k| cache.get(k))
                    .sum::<i64>()
            })
        });
        let mut ids = Vec::with_capacity(3);
        group.bench_function("get_many by message", |b| {
            b.iter(|| {
                let range = next_batch();
                let mut sum = 0;
                // A message's three points, looked up together as the batch does.
                for message in keys_of[range].chunks(3) {
                    cache.get_many(message, &mut ids);
                    sum += ids.iter().flatten().sum::<i64>();
                }
                sum
            })
        });
        group.finish();
    }
}

criterion_group!(benches, lookups);
criterion_main!(benches);
