#!/usr/bin/env bash
# The README's second command: the whole test suite, with its own set-up. Every integration
# test starts private nats-server and PostgreSQL processes on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --workspace --all-targets "$@"
# The TimescaleDB pass: the same test binary again, its shared cluster preloading TimescaleDB
# and every test's settings demanding it (JETSCALE_TEST_BACKEND, tests/support), over the
# suites that must hold on both backends and the quick part of the fault suite. About 90 s of
# wall time on two cores (docs/storage.md).
# bootstrap.sh builds TimescaleDB from ../shared/vendor when that source is there; without it
# (a checkout on its own) the pass is skipped, saying so, and the native suite stands alone.
if ls /usr/lib/postgresql/*/lib/timescaledb.so >/dev/null 2>&1; then
  JETSCALE_TEST_BACKEND=timescaledb cargo test -p jetscale --test tests --quiet -- \
      pipeline:: layout:: signals:: security:: \
      faults::poison:: faults::nats_restart::nats_server_restarted
elif [ -e ../shared/vendor/timescaledb-2.28.3.tar.gz ]; then
  echo "test.sh: TimescaleDB's source is in ../shared/vendor but it is not installed: scripts/timescaledb.sh failed?" >&2
  exit 1
else
  echo "test.sh: TimescaleDB is not installed and its source is not here: the TimescaleDB pass is skipped" >&2
fi
cargo test --workspace --doc --quiet
