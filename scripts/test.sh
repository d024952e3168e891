#!/usr/bin/env bash
# The README's second command: the whole test suite, with its own set-up. Every integration
# test starts private nats-server and PostgreSQL processes on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc --quiet
