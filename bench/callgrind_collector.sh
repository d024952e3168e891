#!/usr/bin/env bash
# The collector's instructions per message, counted by callgrind: stable where the VM's speed is
# not (BENCHMARKS.md, run K). Two drains of the same fleet, 2,000 devices x 10 and x 30 messages,
# each by `jetscale collect` under valgrind; their difference over the 40,000 extra messages is
# the per-message cost, with start-up and series creation cancelled out.
#
# Needs valgrind and nats-server on PATH and a PostgreSQL that trusts local connections
# (PG_URL, default postgres://postgres@127.0.0.1:5432/postgres). Starts its own nats-server on
# a free loopback port in a temp dir; creates and drops its own databases.
# Usage: [KEEP_PROFILES=dir] bench/callgrind_collector.sh [path/to/jetscale]
# (default binary: target/release/jetscale; build it with cargo build --release -p jetscale)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release/jetscale}")
pg_url=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
for tool in valgrind callgrind_annotate nats-server psql; do
  command -v "$tool" >/dev/null || { echo "callgrind_collector: $tool not found (apt-get install -y valgrind nats-server postgresql-client)" >&2; exit 1; }
done
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nats_pid=""
cleanup() {
  [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null || true
  for n in 10 30; do psql -q "$pg_url" -c "DROP DATABASE IF EXISTS jetscale_callgrind_$n" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Sets `instructions` to what one drain of 2,000 devices x $1 messages took. Run in this shell,
# not a command substitution, so the nats-server it starts is the one cleanup stops.
drain_instructions() {
  local per_device=$1 db=jetscale_callgrind_$1
  if [ -n "$nats_pid" ]; then kill "$nats_pid"; wait "$nats_pid" 2>/dev/null || true; fi
  rm -rf "$work/nats" && mkdir -p "$work/nats"
  nats-server -a 127.0.0.1 -p "$port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
  nats_pid=$!
  for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  psql -q "$pg_url" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null 2>&1
  export JETSCALE_NATS_URL=nats://127.0.0.1:$port
  export JETSCALE_DATABASE_URL="${pg_url%/*}/$db?sslmode=disable"
  "$bin" setup >/dev/null 2>&1
  "$bin" simulate --devices 2000 --count "$per_device" --interval 0s >/dev/null 2>&1
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/cg.$per_device" \
    "$bin" collect --exit-when-idle 2s >/dev/null 2>"$work/valgrind.$per_device.log"
  local rows
  rows=$(psql -At "${pg_url%/*}/$db" -c "SELECT count(*) FROM iot_metrics")
  [ "$rows" -eq $((2000 * per_device * 3)) ] || { echo "callgrind_collector: expected $((2000 * per_device * 3)) rows, found $rows" >&2; exit 1; }
  # awk reads to the end: quitting early would fail callgrind_annotate with SIGPIPE (pipefail).
  instructions=$(callgrind_annotate "$work/cg.$per_device" 2>/dev/null \
    | awk '/PROGRAM TOTALS/ && !found {gsub(",", "", $1); print $1; found = 1}')
}

drain_instructions 10
small=$instructions
drain_instructions 30
large=$instructions
per_message=$(( (large - small) / 40000 ))
echo "collector: $per_message instructions per message (drains of 20,000 and 60,000 messages: $small and $large)"
if [ -n "${KEEP_PROFILES:-}" ]; then
  mkdir -p "$KEEP_PROFILES" && cp "$work"/cg.* "$KEEP_PROFILES"/
  echo "profiles: $KEEP_PROFILES/cg.10 and cg.30 (callgrind_annotate --inclusive=yes to read them)"
fi
