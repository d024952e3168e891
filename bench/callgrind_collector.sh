#!/usr/bin/env bash
# The collector's instructions per message, counted by callgrind: steadier than wall-clock
# figures on a VM whose speed varies (BENCHMARKS.md, run K). Two drains of the same fleet,
# 2,000 devices x 10 and x 30 messages, each by `jetscale collect` under valgrind; their
# difference over the 40,000 extra messages is the per-message cost, with start-up and series
# creation cancelled out. Counts of one binary vary by up to 2 % between runs (how messages
# fall into reads and batches depends on timing).
#
# Needs valgrind, nats-server, psql and python3 on PATH and a PostgreSQL that lets PG_URL's
# user create databases. PG_URL is a URL ending in a database name, with no query string
# (default postgres://postgres@127.0.0.1:5432/postgres). Starts its own nats-server on a free
# loopback port in a temp dir; creates and drops its own databases.
# Usage: [KEEP_PROFILES=dir] bench/callgrind_collector.sh [path/to/jetscale]
# (default binary: target/release/jetscale; build it with cargo build --release -p jetscale)
set -euo pipefail
bin=${1:-$(dirname "$0")/../target/release/jetscale}
[ -x "$bin" ] || { echo "callgrind_collector: no jetscale binary at $bin (cargo build --release -p jetscale)" >&2; exit 1; }
bin=$(realpath "$bin")
pg_url=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
case $pg_url in *\?*) echo "callgrind_collector: PG_URL must not have a query string" >&2; exit 1 ;; esac
for tool in valgrind callgrind_annotate nats-server psql python3; do
  command -v "$tool" >/dev/null || { echo "callgrind_collector: $tool not found (apt-get install -y valgrind nats-server postgresql-client python3)" >&2; exit 1; }
done
# The collector under test runs on its defaults, whatever config the caller's shell names.
unset JETSCALE_CONFIG
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nats_pid=""
stop_nats() {
  if [ -n "$nats_pid" ]; then
    kill "$nats_pid" 2>/dev/null || true
    wait "$nats_pid" 2>/dev/null || true
    nats_pid=""
  fi
}
cleanup() {
  status=$?
  set +e
  if [ "$status" -ne 0 ]; then
    echo "callgrind_collector: failed; the last lines of its logs:" >&2
    tail -n 20 "$work"/*.log >&2 2>/dev/null
  fi
  stop_nats
  for n in 10 30; do psql -q "$pg_url" -c "DROP DATABASE IF EXISTS jetscale_callgrind_$n" >/dev/null 2>&1; done
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

# Sets `instructions` to what one drain of 2,000 devices x $1 messages took. Run in this shell,
# not a command substitution, so the nats-server it starts is the one cleanup stops.
drain_instructions() {
  local per_device=$1 db=jetscale_callgrind_$1
  stop_nats
  rm -rf "$work/nats" && mkdir -p "$work/nats"
  # The default stream asks for 50 GB: say the store may hold it, so the run does not depend
  # on how much disk happens to be free (nats-server sizes its store from that otherwise).
  printf 'listen: 127.0.0.1:%s\njetstream { store_dir: "%s", max_file_store: 1T }\n' "$port" "$work/nats" >"$work/nats.conf"
  nats-server -c "$work/nats.conf" >"$work/nats.log" 2>&1 &
  nats_pid=$!
  local up=""
  for _ in $(seq 100); do
    if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=1; break; fi
    sleep 0.1
  done
  [ -n "$up" ] || { echo "callgrind_collector: nats-server did not listen on 127.0.0.1:$port" >&2; exit 1; }
  psql -q "$pg_url" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >"$work/psql.log" 2>&1
  export JETSCALE_NATS_URL=nats://127.0.0.1:$port
  export JETSCALE_DATABASE_URL="${pg_url%/*}/$db?sslmode=disable"
  "$bin" setup >"$work/setup.log" 2>&1
  "$bin" simulate --devices 2000 --count "$per_device" --interval 0s >"$work/simulate.log" 2>&1
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/cg.$per_device" \
    "$bin" collect --exit-when-idle 2s >/dev/null 2>"$work/collect.log"
  local rows
  rows=$(psql -At "${pg_url%/*}/$db" -c "SELECT count(*) FROM iot_metrics")
  [ "$rows" -eq $((2000 * per_device * 3)) ] || { echo "callgrind_collector: expected $((2000 * per_device * 3)) rows, found $rows" >&2; exit 1; }
  # awk reads to the end: quitting early would fail callgrind_annotate with SIGPIPE (pipefail).
  instructions=$(callgrind_annotate "$work/cg.$per_device" 2>/dev/null \
    | awk '/PROGRAM TOTALS/ && !found {gsub(",", "", $1); print $1; found = 1}')
  [[ $instructions =~ ^[0-9]+$ ]] || { echo "callgrind_collector: no instruction total in the profile" >&2; exit 1; }
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
