#!/usr/bin/env bash
# The one command that runs the gateway (README quick start): installs the build prerequisite
# pg_query needs when it is missing (libclang-dev, on Debian), then builds and runs
# `airlock serve` with any arguments given, e.g. `scripts/run.sh --config airlock.yaml`.
# With no config it serves on the defaults with the embedded SQLite store in ./airlock-data/.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/airlock-target}"

if command -v dpkg-query >/dev/null 2>&1 &&
    ! dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q 'install ok installed'; then
    echo "==> installing libclang-dev (needed to build the PostgreSQL parser)" >&2
    if [[ "$(id -u)" == 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev
    fi
fi
if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "error: cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }

echo "==> building airlock (release)" >&2
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p airlock
exec "$CARGO_TARGET_DIR/release/airlock" serve "$@"
