#!/usr/bin/env python3
"""Where the gateway spends its CPU: one pgbench run through Airlock under `perf record`.

Usage (after a release build; bench/pg.sh builds one): python3 bench/profile.py
    [--mode simple|extended|prepared] [--clients 8] [--seconds 10] [--mask]
Prints the gateway's CPU µs per transaction and perf's flat profile (self time, top symbols);
the raw profile stays in perf.data under the printed work directory for `perf report`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pg  # noqa: E402  (the benchmark's own setup: PostgreSQL, gateway, pgbench runner)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="simple", choices=["simple", "extended", "prepared"])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--mask", action="store_true", help="mask the column pgbench -S reads")
    ap.add_argument("--top", type=int, default=45, help="symbols to print")
    args = ap.parse_args()
    if not shutil.which("perf"):
        sys.exit("perf is not installed (Debian: linux-perf)")
    work = Path(tempfile.mkdtemp(prefix="airlock-profile-"))
    if pg.IS_ROOT:
        shutil.chown(work, "postgres")
    server = pg.Postgres(work)
    gateway = None
    try:
        pg.init_bench_db(server)
        masking = pg.MASKING_YAML if args.mask else ""
        gateway = pg.Gateway(work, "airlock", server.port, masking, pg.ALLOW_RULES)
        target = pg.Target("airlock", gateway.port, gateway.token, gateway.cpu)
        bench = ["-S", "-M", args.mode, "-c", str(args.clients), "-T", str(args.seconds)]
        pg.pgbench(target, work, ["-S", "-M", args.mode, "-c", str(args.clients), "-T", "2"])
        data = work / "perf.data"
        perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", str(data),
                                 "-p", str(gateway.proc.pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu0 = gateway.cpu()
        tps, lat = pg.pgbench(target, work, bench)
        cpu1 = gateway.cpu()
        perf.send_signal(2)
        perf.wait()
        print(f"{args.mode}, {args.clients} clients: {tps:.0f} tps, "
              f"gateway CPU {(cpu1 - cpu0) * 1e6 / max(len(lat), 1):.1f} µs/tx")
        report = subprocess.run(["perf", "report", "-i", str(data), "--no-children",
                                 "--percent-limit", "0.4", "--stdio", "-g", "none",
                                 "--sort", "dso,symbol"],
                                capture_output=True, text=True)
        lines = [l for l in report.stdout.splitlines() if l.strip() and not l.startswith("#")]
        print("\n".join(lines[: args.top]))
        print(f"profile: {data}")
    finally:
        if gateway:
            gateway.stop()
        server.stop()


if __name__ == "__main__":
    main()
