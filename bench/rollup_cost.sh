#!/bin/sh
# What the native hourly rollup's view costs a dashboard, with 0, 1 and 48 invalidated hours,
# against the view before issue 24 (which left invalidated hours out), and what a refresh of
# 48 invalidated hours costs. Plain PostgreSQL via `jetscale dev`; 48 closed hours x 200
# devices x 3 metrics, a reading every 10 minutes (172,800 rows), written straight into the
# tables, with the hours a writer would record as invalidated.
#
#   bench/rollup_cost.sh [series|wide] [path/to/jetscale]
set -eu
layout=${1:-series}
bin=${2:-target/release/jetscale}
dir=$(mktemp -d /tmp/jetscale-rollup-cost.XXXXXX)
chmod 755 "$dir"
printf 'exporters:\n  postgresql:\n    layout: %s\n    backend: postgresql\n' "$layout" > "$dir/config.yaml"
"$bin" dev --dir "$dir/stack" --config "$dir/config.yaml" > "$dir/dev.log" 2>&1 &
dev=$!
trap 'kill -INT $dev 2>/dev/null; sleep 3' EXIT
for _ in $(seq 60); do grep -q '^postgres:' "$dir/dev.log" && break; sleep 1; done
url=$(sed -n 's/^postgres: *//p' "$dir/dev.log")
sleep 2 # the collector's first upkeep round puts the watermark at the current hour
if [ "$layout" = series ]; then
  raw=iot_metrics_points
  load="INSERT INTO iot_metrics_series (series_key, device_id, location, metric_name)
        SELECT md5(d || '/' || m)::uuid, 'dev-' || d, 'site-' || (d % 5), m
        FROM generate_series(0, 199) d, unnest(ARRAY['temperature', 'humidity', 'pressure']) m;
        INSERT INTO iot_metrics_points (time, series_id, value)
        SELECT date_bin('1 hour', now(), TIMESTAMPTZ '2000-01-03') - interval '48 hours' + k * interval '10 minutes',
               s.series_id, random() * 100
        FROM generate_series(0, 287) k, iot_metrics_series s;"
  live="SELECT a.bucket, s.device_id, s.location, s.metric_name,
               sum(a.sum_value) / sum(a.sample_count), min(a.min_value), max(a.max_value), sum(a.sample_count)::bigint
        FROM (SELECT date_bin('1 hour', time, TIMESTAMPTZ '2000-01-03') AS bucket, series_id, sum(value) AS sum_value,
                     min(value) AS min_value, max(value) AS max_value, count(*) AS sample_count
              FROM iot_metrics_points WHERE time >= (SELECT watermark FROM jetscale_rollup_state WHERE relation = 'iot_metrics')
              GROUP BY 1, 2) a
        JOIN iot_metrics_series s ON s.series_id = a.series_id GROUP BY 1, 2, 3, 4"
else
  raw=iot_metrics
  load="INSERT INTO iot_metrics (time, device_id, location, metric_name, value)
        SELECT date_bin('1 hour', now(), TIMESTAMPTZ '2000-01-03') - interval '48 hours' + k * interval '10 minutes',
               'dev-' || d, 'site-' || (d % 5), m, random() * 100
        FROM generate_series(0, 287) k, generate_series(0, 199) d, unnest(ARRAY['temperature', 'humidity', 'pressure']) m;"
  live="SELECT date_bin('1 hour', time, TIMESTAMPTZ '2000-01-03'), device_id, location, metric_name,
               avg(value), min(value), max(value), count(*)
        FROM iot_metrics WHERE time >= (SELECT watermark FROM jetscale_rollup_state WHERE relation = 'iot_metrics')
        GROUP BY 1, 2, 3, 4"
fi
invalidate() {
  psql "$url" -XqAtc "DELETE FROM jetscale_rollup_invalidations;
    INSERT INTO jetscale_rollup_invalidations SELECT 'iot_metrics', date_bin('1 hour', now(), TIMESTAMPTZ '2000-01-03') - h * interval '1 hour'
    FROM generate_series(1, $1) h"
}
psql "$url" -XqAt -c "SELECT jetscale_ensure_partitions('$raw', date_bin('1 hour', now() - interval '48 hours', TIMESTAMPTZ '2000-01-03'),
                        date_bin('1 hour', now(), TIMESTAMPTZ '2000-01-03'), interval '1 hour')" -c "$load" \
  -c "INSERT INTO jetscale_rollup_invalidations SELECT 'iot_metrics', date_bin('1 hour', now(), TIMESTAMPTZ '2000-01-03') - h * interval '1 hour'
      FROM generate_series(1, 48) h ON CONFLICT DO NOTHING" \
  -c "SELECT jetscale_refresh_rollup('iot_metrics')" -c "ANALYZE" \
  -c "CREATE VIEW iot_metrics_hourly_before AS
      SELECT bucket, device_id, location, metric_name, sum_value / sample_count AS avg_value, min_value, max_value, sample_count
      FROM iot_metrics_hourly_data WHERE bucket < (SELECT watermark FROM jetscale_rollup_state WHERE relation = 'iot_metrics')
      UNION ALL $live" > /dev/null
# Holds the rollup lock shared, as a writer does, so the collector's upkeep round cannot
# refresh the invalidated hours while they are measured.
psql "$url" -XqAtc "SELECT pg_advisory_lock_shared(hashtext('jetscale.rollup.iot_metrics')), pg_sleep(3600)" > /dev/null 2>&1 &
hold=$!
sleep 1
median() { # median execution time (ms) of 7 EXPLAIN ANALYZE runs
  for _ in 1 2 3 4 5 6 7; do
    psql "$url" -XAtc "EXPLAIN (ANALYZE, TIMING OFF) $1" | sed -n 's/^Execution Time: \([0-9.]*\) ms/\1/p'
  done | sort -n | sed -n 4p
}
whole="SELECT count(*), sum(sample_count) FROM VIEW"
panel="SELECT bucket, metric_name, avg_value, max_value FROM VIEW WHERE device_id = 'dev-7' AND bucket >= now() - interval '24 hours' ORDER BY bucket"
psql "$url" -XAtc "SELECT 'raw rows ' || (SELECT count(*) FROM iot_metrics) || ', materialized groups ' || (SELECT count(*) FROM iot_metrics_hourly_data)"
echo "layout $layout: invalidated hours | view | whole view ms | one device, 24 h ms"
for hours in 0 1 48; do
  invalidate $hours
  for view in iot_metrics_hourly_before iot_metrics_hourly; do
    echo "$hours | $view | $(median "$(echo "$whole" | sed "s/VIEW/$view/")") | $(median "$(echo "$panel" | sed "s/VIEW/$view/")")"
  done
done
[ -n "${EXPLAIN:-}" ] && psql "$url" -XAtc "EXPLAIN (ANALYZE, TIMING OFF, COSTS OFF) $(echo "$panel" | sed "s/VIEW/iot_metrics_hourly_before/")"
kill $hold
psql "$url" -XqAtc "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(3600)%' AND pid <> pg_backend_pid()" > /dev/null
for _ in 1 2 3; do
  invalidate 48
  psql "$url" -XAt -c '\timing on' -c "SELECT jetscale_refresh_rollup('iot_metrics')" | sed -n 's/^Time: \([0-9.]*\) ms.*/refresh of 48 invalidated hours: \1 ms/p'
done
