#!/usr/bin/env bash
# The one test command (README, CI): installs what is missing on a Debian machine, then runs
# rustfmt, clippy and every test of the workspace. Nothing is skipped silently: a prerequisite
# that cannot be installed stops the run with an error.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/airlock-target}"
export DEBIAN_FRONTEND=noninteractive

step() { printf '==> %s\n' "$*"; }
fail() {
    printf '==> FAILED: %s\n' "$*" >&2
    exit 1
}

# --- prerequisites --------------------------------------------------------------------------

pg_server_bin() {
    # The highest PostgreSQL server version installed, as the integration tests pick it.
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
        echo "$dir"
    fi
}

have_libclang() {
    # bindgen (used by pg_query) loads libclang and its headers at build time. On Debian, ask
    # for the -dev package (headers included); elsewhere, look for the library.
    if command -v dpkg-query >/dev/null 2>&1; then
        dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q 'install ok installed'
        return
    fi
    if command -v ldconfig >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so'; then
        return 0
    fi
    compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null 2>&1 ||
        compgen -G '/usr/lib/*/libclang*.so*' >/dev/null 2>&1
}

missing=()
have_libclang || missing+=(libclang-dev)
[[ -n "$(pg_server_bin)" ]] || missing+=(postgresql)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
{ command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1; } || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
{ command -v mariadbd >/dev/null 2>&1 || [[ -x /usr/sbin/mariadbd ]]; } || missing+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)

if ((${#missing[@]} > 0)); then
    step "installing ${missing[*]}"
    [[ "$(id -u)" == 0 ]] || fail "missing ${missing[*]}; run as root (or install them) so they can be installed"
    command -v apt-get >/dev/null 2>&1 || fail "missing ${missing[*]} and apt-get is not available to install them"
    apt-get update -qq || fail "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" || fail "apt-get install ${missing[*]} failed"
fi

# Check again: whatever is still missing now is an error, not a skip.
have_libclang || fail "libclang not found after installation (needed to build pg_query)"
PG_BIN="$(pg_server_bin)"
[[ -n "$PG_BIN" ]] || fail "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found under /usr/lib/postgresql/*/bin"
command -v psql >/dev/null 2>&1 || fail "psql not found after installation"
command -v cc >/dev/null 2>&1 || fail "no C compiler (cc) after installation"
command -v pkg-config >/dev/null 2>&1 || fail "pkg-config not found after installation"
if [[ "$(id -u)" == 0 ]]; then
    # PostgreSQL refuses to run as root: the tests run it as `postgres`.
    id -u postgres >/dev/null 2>&1 || fail "running as root but there is no 'postgres' user to run the test databases"
    command -v runuser >/dev/null 2>&1 || fail "runuser not found (util-linux)"
fi
step "PostgreSQL server: $PG_BIN ($("$PG_BIN/postgres" --version))"
step "psql: $(psql --version)"
{ command -v mariadbd >/dev/null 2>&1 || [[ -x /usr/sbin/mariadbd ]]; } || fail "mariadbd not found after installation (mariadb-server)"
command -v mariadb >/dev/null 2>&1 || fail "the mariadb client not found after installation (mariadb-client)"
if [[ "$(id -u)" == 0 ]]; then
    # The MySQL gateway tests run their throwaway MariaDB as `mysql`.
    id -u mysql >/dev/null 2>&1 || fail "running as root but there is no 'mysql' user to run the test MariaDB"
fi
step "MariaDB: $(mariadb --version)"

if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || fail "cargo not found: install a Rust toolchain (rustup) first"
cargo fmt --version >/dev/null 2>&1 || fail "rustfmt is not installed (rustup component add rustfmt)"
cargo clippy --version >/dev/null 2>&1 || fail "clippy is not installed (rustup component add clippy)"
step "$(cargo --version); target dir $CARGO_TARGET_DIR"

# --- checks ---------------------------------------------------------------------------------

step "rustfmt (cargo fmt --all -- --check)"
cargo fmt --all -- --check

step "clippy (cargo clippy --workspace --all-targets -- -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "tests (cargo test --workspace)"
cargo test --workspace

step "all checks passed"
