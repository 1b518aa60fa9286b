#!/usr/bin/env bash
# A first look at the gateway's overhead: pgbench -S directly against a throwaway PostgreSQL and
# through Airlock (allow policy, recording on), runs interleaved so machine drift hits both.
# Usage: bench/pgbench.sh [SECONDS per run, default 10]
set -euo pipefail

seconds="${1:-10}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/airlock-target}"
pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
work="$(mktemp -d /tmp/airlock-bench.XXXXXX)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_pg() { if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cleanup() {
    [[ -n "${gateway_pid:-}" ]] && kill "$gateway_pid" 2>/dev/null || true
    as_pg "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "==> building airlock (release)" >&2
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p airlock

pg_port="$(free_port)"; api_port="$(free_port)"; gw_port="$(free_port)"
mkdir -p "$work/pg" && [[ "$(id -u)" != 0 ]] || chown postgres "$work" "$work/pg"
as_pg "$pg_bin/initdb" -D "$work/pg" -A trust -U postgres >/dev/null
as_pg "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg/log" -w \
    -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
psql -q -h 127.0.0.1 -p "$pg_port" -U postgres -c "create database bench" >/dev/null
pgbench -q -i -s 10 -h 127.0.0.1 -p "$pg_port" -U postgres bench >/dev/null 2>&1

cat >"$work/airlock.yaml" <<YAML
listen: { api: 127.0.0.1:$api_port, postgres: 127.0.0.1:$gw_port }
store: sqlite://$work/data/airlock.db
secret_key_file: $work/data/secret.key
connections:
  - { name: bench, type: postgres, address: "127.0.0.1:$pg_port", database: bench, user: postgres }
policies:
  - name: bench
    groups: [bench]
    connections: [bench]
    record: true
    rules:
      - { match: SELECT, action: allow }
YAML
"$CARGO_TARGET_DIR/release/airlock" serve --config "$work/airlock.yaml" >"$work/gateway.log" 2>&1 &
gateway_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$api_port/readyz" >/dev/null && break; sleep 0.1; done
admin="$(cat "$work/data/admin.token")"
token="$(curl -sf -H "Authorization: Bearer $admin" -H 'content-type: application/json' \
    -d '{"name":"bench","groups":["bench"]}' "http://127.0.0.1:$api_port/api/v1/tokens" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"

run() { # target mode clients -> tps
    local port dbname
    if [[ "$1" == direct ]]; then port=$pg_port; dbname=bench; else port=$gw_port; dbname=bench; fi
    PGPASSWORD="$token" pgbench -n -S -M "$2" -c "$3" -j 2 -T "$seconds" -h 127.0.0.1 -p "$port" -U postgres "$dbname" 2>/dev/null |
        awk '/^tps/ {print int($3)}'
}

cpu_of_gateway() { awk '{print $14 + $15}' "/proc/$gateway_pid/stat"; }
ticks="$(getconf CLK_TCK)"

printf '%-10s %-8s %10s %10s %8s %14s\n' mode clients direct airlock ratio "gw CPU µs/tx"
for mode in simple extended prepared; do
    for clients in 1 8; do
        d1="$(run direct "$mode" "$clients")"
        c0="$(cpu_of_gateway)"
        a1="$(run airlock "$mode" "$clients")"
        c1="$(cpu_of_gateway)"
        d2="$(run direct "$mode" "$clients")"
        a2="$(run airlock "$mode" "$clients")"
        direct=$(( (d1 + d2) / 2 )); through=$(( (a1 + a2) / 2 ))
        cpu_us="$(python3 -c "print(round(($c1-$c0)/$ticks*1e6/max(1,$a1*$seconds),1))")"
        printf '%-10s %-8s %10s %10s %8s %14s\n' "$mode" "$clients" "$direct" "$through" \
            "$(python3 -c "print(f'{$through/max(1,$direct):.2f}')")" "$cpu_us"
    done
done
