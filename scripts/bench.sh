#!/usr/bin/env bash
# The benchmark harness (BENCHMARKS.md): builds release binaries and runs every measurement
# on private servers. Arguments go to jetscale-bench (e.g. --messages 200000 --skip-live).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
python3 -c 'import psycopg' 2>/dev/null || python3 -m pip install -q 'psycopg[binary]' 2>/dev/null \
  || python3 -m pip install -q --break-system-packages 'psycopg[binary]'
cargo build --release --quiet -p jetscale -p jetscale-bench
exec target/release/jetscale-bench "$@"
