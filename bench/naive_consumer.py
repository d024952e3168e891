"""What a user would write by hand from the IoT pipeline design: a nats-py pull subscription
with batch fetch, and psycopg's executemany per batch into the design's iot_metrics layout. Prints
`points_per_s N` as its last line. Used by the benchmark harness (bench/src/main.rs)."""
import argparse
import asyncio
import json
import time

import nats
import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS iot_metrics (
    time TIMESTAMPTZ NOT NULL,
    device_id TEXT NOT NULL,
    location TEXT NOT NULL,
    metric_name TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    unit TEXT
);
CREATE INDEX IF NOT EXISTS idx_device_time ON iot_metrics (device_id, time DESC);
CREATE INDEX IF NOT EXISTS idx_location_metric ON iot_metrics (location, metric_name, time DESC);
"""

INSERT = ("INSERT INTO iot_metrics (time, device_id, location, metric_name, value, unit) "
          "VALUES (to_timestamp(%s / 1e9), %s, %s, %s, %s, %s)")


def rows_of(payload):
    doc = json.loads(payload)
    for rm in doc["resourceMetrics"]:
        attrs = {a["key"]: a["value"].get("stringValue") for a in rm["resource"]["attributes"]}
        for sm in rm["scopeMetrics"]:
            for m in sm["metrics"]:
                for p in m["gauge"]["dataPoints"]:
                    yield (int(p["timeUnixNano"]), attrs.get("device.id"), attrs.get("device.location"),
                           m["name"], p["asDouble"], m.get("unit"))


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nats", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()

    conn = psycopg.connect(args.db)
    conn.execute(SCHEMA)
    conn.commit()
    nc = await nats.connect(args.nats)
    js = nc.jetstream()
    sub = await js.pull_subscribe("telemetry.>", durable="naive", stream="TELEMETRY")
    points = 0
    seen = 0
    started = time.monotonic()
    while seen < args.count:
        msgs = await sub.fetch(min(args.batch, args.count - seen), timeout=5)
        rows = [r for m in msgs for r in rows_of(m.data)]
        with conn.cursor() as cur:
            cur.executemany(INSERT, rows)
        conn.commit()
        for m in msgs:
            await m.ack()
        points += len(rows)
        seen += len(msgs)
    elapsed = time.monotonic() - started
    await nc.close()
    print(f"points {points} seconds {elapsed:.2f}")
    print(f"points_per_s {points / elapsed:.0f}")


asyncio.run(main())
