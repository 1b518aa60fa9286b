#!/usr/bin/env python3
"""Instructions the gateway executes per transaction, counted by valgrind's callgrind.

Usage (after a release build; bench/pg.sh builds one): python3 bench/instructions.py
    [--mode simple|extended|prepared] [--mask] [--top 30] [BINARY ...]
Counts are exact and repeat within a few percent whatever else the machine does, so they show
changes of a few percent that throughput runs on a shared machine cannot. Each binary (default:
the release build) serves two pgbench runs of one client under callgrind, 200 and 1,200
transactions; the difference over the 1,000 extra transactions leaves out start, login and
shutdown. User space only: the kernel's share (sockets, the journal's writes) is not counted.
Under valgrind SHA-256 runs without the CPU's SHA extensions, so the hash chain weighs about
twenty times what it does natively, and the store's batches are small and of many sizes, so
SQLite still prepares new INSERT texts during the run (about 10,000 instructions per
transaction that a long native run does not pay). Prints instructions per transaction per binary, and with
--top the functions that gained the most inclusive instructions per transaction.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pg  # noqa: E402  (the benchmark's own setup: PostgreSQL, gateway, pgbench runner)

SHORT, LONG = 200, 1200
# The gateway's own code, the store, hashing, JSON and the allocator; not the runtime's frames,
# which include everything.
INTERESTING = re.compile(r"airlock_|sqlite3|sqlx|sha256|serde|malloc|free")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binaries", nargs="*", type=Path, default=[pg.AIRLOCK])
    ap.add_argument("--mode", default="simple", choices=["simple", "extended", "prepared"])
    ap.add_argument("--mask", action="store_true", help="mask the column pgbench -S reads")
    ap.add_argument("--top", type=int, default=0,
                    help="functions (the gateway's, the store's, hashing, JSON, malloc) to list")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_annotate"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (Debian: valgrind)")
    # The gateway starts many times slower under valgrind: give it longer to become ready.
    pg.time.sleep = lambda seconds, sleep=time.sleep: sleep(seconds * 5)
    work = Path(tempfile.mkdtemp(prefix="airlock-instructions-"))
    if pg.IS_ROOT:
        shutil.chown(work, "postgres")
    server = pg.Postgres(work)
    try:
        pg.init_bench_db(server)
        for index, binary in enumerate(args.binaries):
            short = profile(work, server, binary, f"{index}-{SHORT}", SHORT, args)
            long = profile(work, server, binary, f"{index}-{LONG}", LONG, args)
            per_tx = (total(long) - total(short)) / (LONG - SHORT)
            masked = ", masked" if args.mask else ""
            print(f"{binary}: {per_tx:,.0f} instructions per transaction ({args.mode}{masked})")
            if args.top:
                gains = inclusive(long)
                before = inclusive(short)
                rows = sorted(((name, (n - before.get(name, 0)) / (LONG - SHORT))
                               for name, n in gains.items() if INTERESTING.search(name)),
                              key=lambda r: -r[1])
                for name, n in rows[:args.top]:
                    print(f"  {n:10,.0f}  {name[:140]}")
    finally:
        server.stop()
    print(f"callgrind output: {work}", file=sys.stderr)


def profile(work: Path, server: pg.Postgres, binary: Path, tag: str, transactions: int,
            args: argparse.Namespace) -> Path:
    """Runs `transactions` through a fresh gateway under callgrind; returns its output file."""
    out = work / f"callgrind-{tag}.out"
    wrapper = work / f"gateway-{tag}.sh"
    wrapper.write_text("#!/bin/sh\n"
                       f"exec valgrind --tool=callgrind --callgrind-out-file={out} "
                       f"{binary.resolve()} \"$@\"\n")
    wrapper.chmod(0o755)
    pg.AIRLOCK = wrapper
    masking = pg.MASKING_YAML if args.mask else ""
    gateway = pg.Gateway(work, f"gateway-{tag}", server.port, masking, pg.ALLOW_RULES)
    try:
        target = pg.Target(tag, gateway.port, gateway.token)
        pg.pgbench(target, work, ["-S", "-M", args.mode, "-c", "1", "-t", str(transactions)])
    finally:
        gateway.proc.terminate()
        gateway.proc.wait(timeout=300)
    return out


def total(out: Path) -> int:
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    sys.exit(f"{out}: no instruction total (did the gateway exit cleanly?)")


def inclusive(out: Path) -> dict[str, int]:
    report = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
                             str(out)], capture_output=True, text=True).stdout
    counts = {}
    for line in report.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*?)(?: \[.*\])?$", line)
        if m:
            counts[m.group(2)] = int(m.group(1).replace(",", ""))
    return counts


if __name__ == "__main__":
    main()
