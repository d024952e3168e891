#!/usr/bin/env bash
# Installs what jetscale needs on a fresh Debian machine, once: nats-server, PostgreSQL
# (server binaries only: jetscale starts its own private cluster), Python's nats-py for the
# IoT design's device script, and TimescaleDB built from the vendored source when that is present
# (scripts/timescaledb.sh). Safe to run again; it only installs what is missing.
set -euo pipefail

need_apt=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
# prometheus and promtool: the observability tests scrape a collector and check the dashboard.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# jetscale runs without TimescaleDB (native partitioning), so a failed build is reported and
# bootstrap goes on; the tests that need TimescaleDB then fail and say why.
if ! "$(dirname "$0")/timescaledb.sh"; then
  echo "bootstrap: TimescaleDB could not be installed (see above); continuing without it" >&2
fi

if ! python3 -c 'import nats' >/dev/null 2>&1; then
  echo "bootstrap: installing nats-py" >&2
  python3 -m pip install -q nats-py 2>/dev/null || python3 -m pip install -q --break-system-packages nats-py
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "bootstrap: cargo is missing: install Rust (rustup) first" >&2
  exit 1
fi
