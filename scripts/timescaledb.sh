#!/usr/bin/env bash
# Builds TimescaleDB from the vendored source archive and installs it into the local PostgreSQL
# tree, when that version is not installed yet. TimescaleDB is not in this machine's package
# registries, and jetscale runs without it (native PostgreSQL partitioning), so a missing
# archive is not an error. Quiet when there is nothing to do; on failure it shows the build log.
#
# Installing only makes the extension *available*: a cluster can create it only when started
# with shared_preload_libraries=timescaledb (see docs/storage.md).
#
# Environment: JETSCALE_TIMESCALEDB_ARCHIVE (default ../shared/vendor/timescaledb-2.28.3.tar.gz
# next to the repository), PG_MAJOR (default: the newest server under /usr/lib/postgresql).
set -euo pipefail

VERSION=2.28.3
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ARCHIVE="${JETSCALE_TIMESCALEDB_ARCHIVE:-$ROOT/../shared/vendor/timescaledb-$VERSION.tar.gz}"

say() { echo "timescaledb.sh: $*" >&2; }

if [ -z "${PG_MAJOR:-}" ]; then
  PG_MAJOR="$(ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sed 's|/usr/lib/postgresql/\([0-9]*\)/.*|\1|' | sort -n | tail -1)"
fi
if [ -z "$PG_MAJOR" ]; then
  say "no PostgreSQL server under /usr/lib/postgresql; install PostgreSQL first (scripts/bootstrap.sh)"
  exit 1
fi
EXT_DIR="/usr/share/postgresql/$PG_MAJOR/extension"
LIB="/usr/lib/postgresql/$PG_MAJOR/lib/timescaledb-$VERSION.so"

installed() {
  [ -f "$EXT_DIR/timescaledb--$VERSION.sql" ] && [ -f "$LIB" ] &&
    grep -Eq "^default_version *= *'$VERSION'" "$EXT_DIR/timescaledb.control" 2>/dev/null
}

installed && exit 0

if [ ! -f "$ARCHIVE" ]; then
  say "TimescaleDB $VERSION is not installed and $ARCHIVE is absent: skipping it;"
  say "jetscale will use native PostgreSQL partitioning (backend: auto)"
  exit 0
fi

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

# Several checkouts may bootstrap at once: one build, the others wait for it and then find it done.
exec 9>"${TMPDIR:-/tmp}/jetscale-timescaledb-build.lock"
flock 9
installed && exit 0

# The server headers must be the same minor version as the running server, or the module may
# be built against structures that differ from the server's.
server_version="$(dpkg-query -W -f='${Version}' "postgresql-$PG_MAJOR" 2>/dev/null || true)"
need=()
if [ -n "$server_version" ]; then
  dev_version="$(dpkg-query -W -f='${Version}' "postgresql-server-dev-$PG_MAJOR" 2>/dev/null || true)"
  [ "$dev_version" = "$server_version" ] || need+=("postgresql-server-dev-$PG_MAJOR=$server_version")
else
  [ -x "/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" ] || need+=("postgresql-server-dev-$PG_MAJOR")
fi
command -v cmake >/dev/null 2>&1 || need+=(cmake)
dpkg-query -W -f='${Status}' libkrb5-dev 2>/dev/null | grep -q 'ok installed' || need+=(libkrb5-dev)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v make >/dev/null 2>&1 || need+=(make)

LOG="$(mktemp "${TMPDIR:-/tmp}/jetscale-timescaledb-build.XXXXXX.log")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/jetscale-timescaledb-src.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
fail() {
  say "FAILED: $*"
  say "last lines of $LOG:"
  tail -n 40 "$LOG" >&2
  exit 1
}

say "building TimescaleDB $VERSION for PostgreSQL $PG_MAJOR from $ARCHIVE (about 5 minutes on two cores; log: $LOG)"
if [ ${#need[@]} -gt 0 ]; then
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >>"$LOG" 2>&1; then
    $SUDO apt-get update -q >>"$LOG" 2>&1 || fail "apt-get update"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >>"$LOG" 2>&1 ||
      fail "apt-get install ${need[*]}"
  fi
fi

tar -xzf "$ARCHIVE" -C "$WORK" >>"$LOG" 2>&1 || fail "unpacking $ARCHIVE"
(
  cd "$WORK"
  ./bootstrap -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
    -DPG_CONFIG="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
) >>"$LOG" 2>&1 || fail "configuring (./bootstrap)"
make -C "$WORK/build" -j"$(nproc)" >>"$LOG" 2>&1 || fail "make"
$SUDO make -C "$WORK/build" install >>"$LOG" 2>&1 || fail "make install"
installed || fail "installed, but $EXT_DIR/timescaledb--$VERSION.sql or $LIB is still missing"
rm -f "$LOG"
say "installed TimescaleDB $VERSION; clusters need shared_preload_libraries=timescaledb to use it"
