#!/usr/bin/env python3
"""The gateway's cost, side by side, in one run (called by bench/pg.sh after a release build).

Starts a throwaway PostgreSQL (pgbench -i -s 10), Airlock (allow policy, recording on), a second
Airlock with a masking rule on the column pgbench -S reads, and PgBouncer (session pooling), then:

  1. pgbench -S -n -j 2 -T SECONDS for each mode (simple, extended, prepared) and client count,
     against every target, interleaved (A B C D A B C D) so machine drift hits all equally;
     TPS, average and p99 latency from pgbench's per-transaction log, ratio of direct, and each
     gateway's CPU per transaction and per 10,000 statements;
  2. a write mix (pgbench -N, 8 clients) direct vs Airlock, every write recorded;
  3. connection scale: 1,000 idle sessions (RSS) and the connection setup rate, with an agent
     token and with an OIDC token (RS256, signed by an issuer this script serves on loopback);
  4. approval latency: from POST /approve to the held statement's result at the client.

`--only PART` runs one part (read, write, scale, approval) on the same setup.

Standard library only, so it runs on a fresh Debian machine next to pgbench; the OIDC row also
needs the `cryptography` package to sign its token (bench/pg.sh installs it; without it the row
is left out).
"""

from __future__ import annotations

import argparse
import base64
import glob
import http.server
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/airlock-target"))
AIRLOCK = TARGET / "release" / "airlock"
TICKS = os.sysconf("SC_CLK_TCK")
IS_ROOT = os.getuid() == 0


def log(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL and PgBouncer refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if IS_ROOT else cmd


def pg_bin() -> Path:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    if not dirs:
        sys.exit("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
    return Path(dirs[-1])


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def process_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# Reads and the write mix run; DELETE is held (the approval-latency run uses it).
ALLOW_RULES = ("      - { match: SELECT|UPDATE|INSERT, action: allow }\n"
               "      - { match: DELETE, action: require-approval, reviewers: [dba],"
               " timeout: 5m }")
# The audience the bench's OIDC issuer puts in its tokens and the gateway accepts.
OIDC_AUDIENCE = "api://airlock-bench"
# Masks the one column pgbench -S reads.
MASKING_YAML = ("masking:\n  - connections: [bench]\n"
                "    columns: [\"pgbench_accounts.abalance\"]\n    style: redact\n")


def init_bench_db(pg: "Postgres") -> None:
    subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                    "-c", "create database bench"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["pgbench", "-q", "-i", "-s", "10", "-h", "127.0.0.1", "-p",
                    str(pg.port), "-U", "postgres", "bench"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Postgres:
    def __init__(self, work: Path):
        self.dir = work / "pg"
        self.dir.mkdir()
        if IS_ROOT:
            shutil.chown(work, "postgres")
            shutil.chown(self.dir, "postgres")
        self.port = free_port()
        bindir = pg_bin()
        self.pg_ctl = str(bindir / "pg_ctl")
        subprocess.run(as_postgres([str(bindir / "initdb"), "-D", str(self.dir), "-A", "trust",
                                    "-U", "postgres"]), check=True, stdout=subprocess.DEVNULL)
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c max_connections=1200 -c shared_buffers=256MB -c fsync=on")
        subprocess.run(as_postgres([self.pg_ctl, "-D", str(self.dir), "-l", str(self.dir / "log"),
                                    "-w", "-o", opts, "start"]), check=True,
                       stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        subprocess.run(as_postgres([self.pg_ctl, "-D", str(self.dir), "-m", "immediate", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Gateway:
    """One `airlock serve` with its own config and data directory."""

    def __init__(self, work: Path, name: str, pg_port: int, extra_yaml: str, rules: str):
        self.dir = work / name
        self.dir.mkdir()
        self.api = free_port()
        self.port = free_port()
        config = self.dir / "airlock.yaml"
        config.write_text(f"""\
listen: {{ api: 127.0.0.1:{self.api}, postgres: 127.0.0.1:{self.port}, mysql: 127.0.0.1:{free_port()} }}
store: sqlite://{self.dir}/data/airlock.db
secret_key_file: {self.dir}/data/secret.key
connections:
  - {{ name: bench, type: postgres, address: "127.0.0.1:{pg_port}", database: bench, user: postgres }}
policies:
  - name: bench
    groups: [bench]
    connections: [bench]
    record: true
    rules:
{rules}
{extra_yaml}""")
        self.log = open(self.dir / "gateway.log", "wb")
        self.proc = subprocess.Popen([str(AIRLOCK), "serve", "--config", str(config)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(200):
            if self.proc.poll() is not None:
                sys.exit(f"gateway {name} exited: see {self.dir / 'gateway.log'}:\n"
                         + (self.dir / "gateway.log").read_text()[-2000:])
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.api}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit(f"gateway {name} did not become ready")
        self.admin = (self.dir / "data" / "admin.token").read_text().strip()
        self.token = self.create_token("bench", ["bench"])

    def request(self, method: str, path: str, token: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.api}{path}", data=data,
                                     method=method,
                                     headers={"Authorization": f"Bearer {token}",
                                              "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def create_token(self, name: str, groups: list[str]) -> str:
        return self.request("POST", "/api/v1/tokens", self.admin,
                            {"name": name, "groups": groups})["token"]

    def cpu(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class PgBouncer:
    def __init__(self, work: Path, pg_port: int):
        self.dir = work / "pgbouncer"
        self.dir.mkdir()
        self.port = free_port()
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(f"""\
[databases]
bench = host=127.0.0.1 port={pg_port} dbname=bench user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir}/users.txt
pool_mode = session
max_client_conn = 2000
default_pool_size = 100
logfile = {self.dir}/pgbouncer.log
pidfile = {self.dir}/pgbouncer.pid
""")
        if IS_ROOT:
            for p in [self.dir, *self.dir.iterdir()]:
                shutil.chown(p, "postgres")
        self.proc = subprocess.Popen(as_postgres([shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", str(ini)]),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def cpu(self) -> float:
        pid = int((self.dir / "pgbouncer.pid").read_text())
        return process_cpu_seconds(pid)

    def stop(self) -> None:
        self.proc.terminate()


def wait_for_port(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on port {port}")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class OidcIssuer:
    """A minimal OpenID Connect issuer on a loopback port (discovery document and JWKS), so the
    gateway verifies the bench's tokens exactly as it would Entra ID's or Okta's. Counts the
    requests it serves: the gateway should fetch the keys once, not per login."""

    KID = "bench-1"

    def __init__(self):
        from cryptography.hazmat.primitives.asymmetric import rsa  # only the OIDC row needs it

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.requests = 0
        issuer = self
        public = self.key.public_key().public_numbers()
        jwks = {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.KID,
                          "n": b64url(public.n.to_bytes(256, "big")),  # 2048 bits
                          "e": b64url(public.e.to_bytes(3, "big"))}]}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                issuer.requests += 1
                docs = {"/.well-known/openid-configuration":
                        {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/keys"},
                        "/keys": jwks}
                body = json.dumps(docs[self.path]).encode() if self.path in docs else b""
                self.send_response(200 if body else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def identity_yaml(self) -> str:
        return (f"identity:\n  oidc:\n    - issuer: {self.url}\n"
                f"      audience: \"{OIDC_AUDIENCE}\"\n      groups_claim: groups\n")

    def token(self, subject: str, groups: list[str]) -> str:
        """An RS256 ID token valid for an hour, shaped like an Okta one (groups by name)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": self.KID}
        claims = {"iss": self.url, "aud": OIDC_AUDIENCE, "sub": subject,
                  "preferred_username": f"{subject}@bench.example", "groups": groups,
                  "iat": now, "nbf": now - 5, "exp": now + 3600}
        signed = ".".join(b64url(json.dumps(part, separators=(",", ":")).encode())
                          for part in (header, claims))
        signature = self.key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signed}.{b64url(signature)}"

    def stop(self) -> None:
        self.server.shutdown()


def start_oidc_issuer() -> OidcIssuer | None:
    """The issuer, or None (the OIDC row left out) when `cryptography` is not installed."""
    try:
        return OidcIssuer()
    except ImportError:
        log("no Python package `cryptography`: the OIDC setup rate is left out "
            "(pip install cryptography; bench/pg.sh does)")
        return None


class Target:
    def __init__(self, name: str, port: int, password: str | None, cpu=None):
        self.name, self.port, self.password, self.cpu = name, port, password, cpu


def pgbench(target: Target, work: Path, args: list[str]) -> tuple[float, list[int]]:
    """Runs pgbench; returns (tps, per-transaction latencies in µs)."""
    logdir = Path(tempfile.mkdtemp(dir=work))
    if IS_ROOT:
        shutil.chown(logdir, "postgres")
    # Every target in clear: PostgreSQL and PgBouncer here offer no TLS, and libpq's default
    # (sslmode=prefer) would otherwise take TLS with the gateway alone.
    env = dict(os.environ, PGSSLMODE="disable")
    if target.password:
        env["PGPASSWORD"] = target.password
    out = subprocess.run(["pgbench", "-n", "-j", "2", *args, "-l", "--log-prefix",
                          str(logdir / "tx"), "-h", "127.0.0.1", "-p", str(target.port),
                          "-U", "postgres", "bench"],
                         env=env, cwd=logdir, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"pgbench against {target.name} failed:\n{out.stderr[-2000:]}")
    tps = next(float(line.split()[2]) for line in out.stdout.splitlines()
               if line.startswith("tps"))
    latencies = []
    for path in logdir.glob("tx*"):
        with open(path) as f:
            latencies.extend(int(line.split()[2]) for line in f)
    shutil.rmtree(logdir)
    return tps, latencies


def p99(values: list[int]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))] if values else 0.0


def measure(targets: list[Target], work: Path, args: list[str], rounds: int = 2) -> dict:
    """Interleaved rounds over all targets; per target: tps, avg/p99 ms, CPU µs per tx."""
    acc = {t.name: {"tps": [], "lat": [], "cpu": 0.0, "tx": 0} for t in targets}
    for _ in range(rounds):
        for t in targets:
            cpu0 = t.cpu() if t.cpu else 0.0
            tps, lat = pgbench(t, work, args)
            cpu1 = t.cpu() if t.cpu else 0.0
            a = acc[t.name]
            a["tps"].append(tps)
            a["lat"].extend(lat)
            a["cpu"] += cpu1 - cpu0
            a["tx"] += len(lat)
    return {name: {"tps": statistics.mean(a["tps"]),
                   "avg_ms": statistics.mean(a["lat"]) / 1000 if a["lat"] else 0.0,
                   "p99_ms": p99(a["lat"]) / 1000,
                   "cpu_us": a["cpu"] * 1e6 / a["tx"] if a["tx"] else 0.0}
            for name, a in acc.items()}


def print_table(title: str, rows: list[tuple], header: tuple) -> None:
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
    sys.stdout.flush()


# --- raw protocol client for the idle-session and approval measurements ----------------------

def pg_connect(port: int, password: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    params = b"user\0bench\0database\0bench\0\0"
    s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
    while True:
        kind, body = read_message(s)
        if kind == b"R":
            code = struct.unpack("!i", body[:4])[0]
            if code == 3:
                pw = password.encode() + b"\0"
                s.sendall(b"p" + struct.pack("!i", 4 + len(pw)) + pw)
            elif code != 0:
                sys.exit(f"unexpected authentication request {code}")
        elif kind == b"E":
            sys.exit(f"login failed: {body!r}")
        elif kind == b"Z":
            return s


def read_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def read_message(s: socket.socket) -> tuple[bytes, bytes]:
    head = read_exact(s, 5)
    return head[:1], read_exact(s, struct.unpack("!i", head[1:])[0] - 4)


def send_query(s: socket.socket, sql: str) -> None:
    q = sql.encode() + b"\0"
    s.sendall(b"Q" + struct.pack("!i", 4 + len(q)) + q)


def setup_rates(port: int, passwords: dict[str, str], setups: int) -> dict[str, float]:
    """Sequential setups/s (connect, log in to ReadyForQuery, close) per password; the
    passwords take turns in four rounds, so machine drift hits them all equally."""
    seconds = {name: 0.0 for name in passwords}
    rounds = 4
    for _ in range(rounds):
        for name, password in passwords.items():
            start = time.perf_counter()
            for _ in range(setups // rounds):
                pg_connect(port, password).close()
            seconds[name] += time.perf_counter() - start
    return {name: (setups // rounds * rounds) / s for name, s in seconds.items()}


def connection_scale(gw: Gateway, sessions: int, setups: int,
                     idp: OidcIssuer | None) -> list[tuple]:
    rss0 = process_rss_kib(gw.proc.pid)
    socks = [pg_connect(gw.port, gw.token) for _ in range(sessions)]
    time.sleep(1)
    rss1 = process_rss_kib(gw.proc.pid)
    for s in socks:
        s.close()
    time.sleep(1)  # the gateway ends those sessions before the timed setups start
    passwords = {"agent token": gw.token}
    if idp:
        # One token for every login: the gateway caches the issuer's keys, not verified
        # tokens, so each login still checks the signature and the claims.
        passwords["OIDC token"] = idp.token("bench-agent", ["bench"])
        requests0 = idp.requests
    rates = setup_rates(gw.port, passwords, setups)
    rows = [("idle sessions", sessions), ("gateway RSS before (MiB)", f"{rss0 / 1024:.1f}"),
            ("gateway RSS with them open (MiB)", f"{rss1 / 1024:.1f}"),
            ("per session (KiB)", f"{(rss1 - rss0) / sessions:.1f}")]
    rows += [(f"connection setups/s ({name}, sequential)", f"{rate:.0f}")
             for name, rate in rates.items()]
    if idp:
        rows.append(("requests to the OIDC issuer during the setups", idp.requests - requests0))
    return rows


def approval_latency(gw: Gateway, rounds: int) -> list[tuple]:
    reviewer = gw.create_token("reviewer", ["dba"])
    s = pg_connect(gw.port, gw.token)
    samples = []
    for _ in range(rounds):
        send_query(s, "DELETE FROM pgbench_branches WHERE bid = -1")
        request_id = None
        while request_id is None:
            kind, body = read_message(s)
            if kind == b"N":
                text = body.decode(errors="replace")
                marker = "approval request "
                if marker in text:
                    request_id = text.split(marker, 1)[1].split()[0]
            elif kind in (b"E", b"C", b"Z"):
                sys.exit(f"expected a held statement, got {kind!r}: {body!r}")
        start = time.perf_counter()
        gw.request("POST", f"/api/v1/approvals/{request_id}/approve", reviewer, {})
        while True:
            kind, body = read_message(s)
            if kind == b"C":
                samples.append((time.perf_counter() - start) * 1000)
            elif kind == b"E":
                sys.exit(f"approved statement failed: {body!r}")
            elif kind == b"Z":
                break
    s.close()
    samples.sort()
    return [("approvals", rounds),
            ("POST approve -> result at client, median (ms)", f"{statistics.median(samples):.2f}"),
            ("p99 (ms)", f"{p99(samples):.2f}")]


CPU_HEADERS = ("proxy CPU µs/tx", "CPU s/10k stmts")
# pgbench -N's transaction: BEGIN, UPDATE, SELECT, INSERT, END.
WRITE_MIX_STATEMENTS = 5


def cpu_columns(target: Target, result: dict, statements_per_tx: int) -> tuple[str, str]:
    """A proxy's CPU per transaction, and in CPU seconds per 10,000 statements."""
    if not target.cpu:
        return ("-", "-")
    us = result["cpu_us"]
    return (f"{us:.1f}", f"{us / statements_per_tx / 100:.3f}")


def read_only(targets: list[Target], work: Path, args: argparse.Namespace) -> None:
    rows = []
    for mode in args.modes.split(","):
        for clients in [int(c) for c in args.clients.split(",")]:
            log(f"pgbench -S -M {mode} -c {clients}")
            res = measure(targets, work, ["-S", "-M", mode, "-c", str(clients),
                                          "-T", str(args.seconds)])
            direct = res["direct"]["tps"]
            for t in targets:
                r = res[t.name]
                rows.append((mode, clients, t.name, f"{r['tps']:.0f}",
                             f"{r['avg_ms']:.3f}", f"{r['p99_ms']:.3f}",
                             f"{r['tps'] / direct:.2f}", *cpu_columns(t, r, 1)))
    print_table(f"read-only (pgbench -S -j 2 -T {args.seconds}, interleaved, 2 rounds)",
                rows, ("mode", "clients", "target", "tps", "avg ms", "p99 ms",
                       "of direct", *CPU_HEADERS))


def write_mix(targets: list[Target], work: Path, args: argparse.Namespace) -> None:
    log("write mix: pgbench -N -c 8")
    res = measure(targets, work, ["-N", "-M", "extended", "-c", "8", "-T", str(args.seconds)])
    direct = res["direct"]["tps"]
    print_table("write mix (pgbench -N -M extended -c 8; every statement recorded)",
                [(t.name, f"{res[t.name]['tps']:.0f}", f"{res[t.name]['avg_ms']:.3f}",
                  f"{res[t.name]['p99_ms']:.3f}", f"{res[t.name]['tps'] / direct:.2f}",
                  *cpu_columns(t, res[t.name], WRITE_MIX_STATEMENTS))
                 for t in targets],
                ("target", "tps", "avg ms", "p99 ms", "of direct", *CPU_HEADERS))


PARTS = ("read", "write", "scale", "approval")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=10, help="per pgbench run (default 10)")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--modes", default="simple,extended,prepared")
    ap.add_argument("--sessions", type=int, default=1000, help="idle sessions to open")
    ap.add_argument("--approvals", type=int, default=100)
    ap.add_argument("--only", choices=PARTS,
                    help="run one part: read-only pgbench, write mix, connection scale "
                         "(idle sessions, setup rates) or approval latency (default: all)")
    args = ap.parse_args()
    parts = {args.only} if args.only else set(PARTS)

    work = Path(tempfile.mkdtemp(prefix="airlock-bench."))
    os.chmod(work, 0o755)
    stoppers = []
    try:
        log("starting PostgreSQL and loading pgbench -s 10")
        pg = Postgres(work)
        stoppers.append(pg.stop)
        init_bench_db(pg)

        log("starting the gateways and PgBouncer" if "read" in parts else "starting the gateway")
        idp = start_oidc_issuer() if "scale" in parts else None
        if idp:
            stoppers.append(idp.stop)
        plain = Gateway(work, "airlock", pg.port, idp.identity_yaml() if idp else "", ALLOW_RULES)
        stoppers.append(plain.stop)
        targets = [Target("direct", pg.port, None),
                   Target("airlock", plain.port, plain.token, plain.cpu)]
        if "read" in parts:
            masked = Gateway(work, "airlock-masked", pg.port, MASKING_YAML, ALLOW_RULES)
            stoppers.append(masked.stop)
            bouncer = PgBouncer(work, pg.port)
            stoppers.append(bouncer.stop)
            read_only(targets + [Target("airlock+mask", masked.port, masked.token, masked.cpu),
                                 Target("pgbouncer", bouncer.port, None, bouncer.cpu)],
                      work, args)

        if "write" in parts:
            write_mix(targets, work, args)

        if "scale" in parts:
            log(f"connection scale: {args.sessions} idle sessions, then setup rates")
            print_table("connection scale (airlock)",
                        connection_scale(plain, args.sessions, 500, idp), ("measure", "value"))

        if "approval" in parts:
            log(f"approval latency over {args.approvals} held statements")
            print_table("approval latency (airlock)", approval_latency(plain, args.approvals),
                        ("measure", "value"))
        cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo"],
                             capture_output=True, text=True).stdout.split(":")[-1].strip()
        print(f"\nmachine: {os.cpu_count()} CPUs ({cpu}), "
              f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') >> 30} GiB; "
              f"{subprocess.run(['pgbench', '--version'], capture_output=True, text=True).stdout.strip()}")
    finally:
        for stop in reversed(stoppers):
            stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
