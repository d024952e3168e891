#!/usr/bin/env bash
# TimescaleDB compression of a simulated fleet's day (BENCHMARKS.md, "Compression"): a private
# cluster preloading TimescaleDB, jetscale's schema from `jetscale setup --database-only`, a
# day of the IoT design's three gauges per device written with generate_series, then sizes
# and query times before and after compressing every chunk.
#
#   bench/compression.sh            # 100 devices, a point per gauge every 10 s
#   DEVICES=200 STEP=5 bench/compression.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${DEVICES:-100}
STEP=${STEP:-10}
PG=${PG_BIN:-/usr/lib/postgresql/15/bin}

dir=$(mktemp -d /tmp/jetscale-compression.XXXXXX)
chmod 755 "$dir"
as_pg() {
    # initdb and postgres refuse to run as root.
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
[ "$(id -u)" = 0 ] && chown postgres "$dir"
port=$((20000 + RANDOM % 20000))
as_pg "$PG/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null
as_pg "$PG/pg_ctl" -D "$dir/data" -l "$dir/log" -w start \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off" >/dev/null
trap 'as_pg "$PG/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null; rm -rf "$dir"' EXIT
url="postgres://postgres@127.0.0.1:$port/postgres"

cat >"$dir/collector.yaml" <<EOF
limits:
  max_past: 1d
exporters:
  postgresql:
    backend: timescaledb
    compress_after: 2d
EOF
cargo build --quiet -p jetscale
target/debug/jetscale setup --database-only --config "$dir/collector.yaml" --database-url "$url"

psql() { command psql -X -q -v ON_ERROR_STOP=1 "$url" "$@"; }
echo "== a day of $DEVICES devices x 3 gauges every ${STEP}s"
# The simulator's shape: a daily swing plus noise at full double precision (the worst case
# for the columnstore's float compression), a slowly draining battery.
psql <<EOF
\timing on
INSERT INTO iot_metrics_series (series_key, device_id, location, metric_name, unit, attributes)
SELECT gen_random_uuid(), format('device-%s', d), format('site-%s', d % 10), m.name, m.unit, '{}'
FROM generate_series(1, $DEVICES) d,
     (VALUES ('device.temperature', 'Cel'), ('device.humidity', '%'), ('device.battery', '%')) m(name, unit);
INSERT INTO iot_metrics_points (time, series_id, value)
SELECT t, s.series_id,
       CASE s.metric_name
         WHEN 'device.temperature' THEN 22 + 3 * sin(extract(epoch FROM t) / 13751 + s.series_id) + random() * 0.4
         WHEN 'device.humidity' THEN 45 + 8 * sin(extract(epoch FROM t) / 13751 + s.series_id) + random() * 2
         ELSE 100 - extract(epoch FROM now() - t) / 86400 * 4 + random() * 0.05
       END
FROM iot_metrics_series s,
     generate_series(now() - INTERVAL '1 day', now(), INTERVAL '$STEP seconds') t;
ANALYZE iot_metrics_points;
EOF

# The IoT design's anomaly query over the last hour and over the day, and the hourly rollup's
# aggregate over the day (what the continuous aggregate computes).
anomaly="SELECT device_id, location, avg(value) as avg_temp FROM iot_metrics
WHERE metric_name = 'device.temperature' AND time > now() - INTERVAL 'WINDOW'
GROUP BY device_id, location HAVING avg(value) > 35.0 ORDER BY avg_temp DESC;"
queries=("${anomaly/WINDOW/1 hour}" "${anomaly/WINDOW/1 day}"
    "SELECT time_bucket('1 hour', time), series_id, sum(value), min(value), max(value), count(*)
FROM iot_metrics_points GROUP BY 1, 2;")

measure() {
    echo "== $1"
    psql -c "SELECT count(*) AS rows, pg_size_pretty(hypertable_size('iot_metrics_points')) AS points_with_indexes FROM iot_metrics_points"
    for q in "${queries[@]}"; do
        # Three times each; the timings are the spread.
        printf '\\timing on\n\\o /dev/null\n%s\n%s\n%s\n' "$q" "$q" "$q" | psql
    done
}

measure "uncompressed"
echo "== compressing every chunk"
psql <<'EOF'
\timing on
SELECT count(compress_chunk(c)) AS chunks FROM show_chunks('iot_metrics_points') c;
VACUUM ANALYZE iot_metrics_points;
EOF
psql <<'EOF'
SELECT pg_size_pretty(sum(before_compression_total_bytes)) AS before,
       pg_size_pretty(sum(after_compression_total_bytes)) AS after,
       round(sum(before_compression_total_bytes)::numeric / nullif(sum(after_compression_total_bytes), 0), 1) AS ratio
FROM chunk_compression_stats('iot_metrics_points');
EOF
measure "compressed"
