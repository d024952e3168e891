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
JETSCALE_TEST_BACKEND=timescaledb cargo test -p jetscale --test tests --quiet -- \
    pipeline:: layout:: signals:: security:: \
    faults::poison:: faults::nats_restart::nats_server_restarted
cargo test --workspace --doc --quiet
