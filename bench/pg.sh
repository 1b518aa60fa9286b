#!/usr/bin/env bash
# The benchmark suite: direct PostgreSQL vs Airlock (recording on), Airlock with masking, and
# PgBouncer, in one interleaved run; then a write mix, connection scale (agent and OIDC tokens)
# and approval latency.
# Usage: bench/pg.sh [--seconds N] [--clients 1,8,32] [--modes simple,extended,prepared]
#                    [--sessions 1000] [--approvals 100] [--only read|write|scale|approval]
# Installs pgbench/PgBouncer from Debian and Python's cryptography when missing. Prints tables
# on stdout, progress on stderr.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/airlock-target}"

missing=()
command -v pgbench >/dev/null 2>&1 || missing+=(postgresql-contrib postgresql-client)
command -v pgbouncer >/dev/null 2>&1 || missing+=(pgbouncer)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
if ((${#missing[@]} > 0)); then
    echo "==> installing ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # The package starts its own PgBouncer on the default port; the benchmark runs its own.
    if command -v systemctl >/dev/null 2>&1; then systemctl stop pgbouncer 2>/dev/null || true; fi
fi

# The OIDC setup rate signs its token with `cryptography`; without it that one row is left out.
if ! python3 -c 'import cryptography' 2>/dev/null; then
    echo "==> installing the Python package cryptography" >&2
    python3 -m pip install --quiet cryptography 2>/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                 --no-install-recommends python3-cryptography; } \
        || echo "==> cryptography unavailable: the OIDC setup rate is left out" >&2
fi

echo "==> building airlock (release)" >&2
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p airlock
exec python3 "$repo/bench/pg.py" "$@"
