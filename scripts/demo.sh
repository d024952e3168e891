#!/usr/bin/env bash
# The README's first command: everything from a fresh machine to the IoT design's anomaly query.
# Private nats-server and PostgreSQL under ./.jetscale, stream and schema provisioned, a
# simulated fleet published and collected, a summary printed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
cargo build --release --quiet -p jetscale
exec target/release/jetscale demo "$@"
