"""Benchmark: one one-shot ``keyward reconcile`` over a large fleet (default 1,000 hosts).

The issue's target: a one-shot reconcile of 1,000 hosts in one run without running out
of file descriptors or memory (the agent raises its soft fd limit and bounds
concurrency).  This starts ``bench/daemon.py``'s fleet in its multi-host-per-sshd form
(real sshd, real accounts, 50 people), then runs ``keyward reconcile`` twice -- the
first fill and a run where nothing changed -- and samples the agent process every
0.2 s: open file descriptors, resident memory, and its soft ``RLIMIT_NOFILE``.

    python bench/oneshot.py --hosts 1000 --json bench/results/oneshot_1000.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon import Bench, log


def sample(pid: int) -> tuple[int, float, int | None]:
    """(open fds, RSS MB, soft fd limit) of ``pid``; zeros once it is gone."""
    try:
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        rss = 0.0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
        soft = None
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft = int(line.split()[3])
        return fds, rss, soft
    except (OSError, ValueError):
        return 0, 0.0, None


def reconcile(bench: Bench, label: str) -> dict[str, Any]:
    # Output goes to files: a first fill logs one line per key per file, far more than a
    # pipe holds, and the agent would block writing its log while nobody reads the pipe.
    out_path, err_path = bench.base / f"{label}.out", bench.base / f"{label}.err"
    start = time.perf_counter()
    with out_path.open("w") as out_file, err_path.open("w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keyward", "reconcile"],
            env=bench.env(),
            stdout=out_file,
            stderr=err_file,
        )
        peak_fds, peak_rss, limits = 0, 0.0, set()
        while proc.poll() is None:
            fds, rss, soft = sample(proc.pid)
            peak_fds, peak_rss = max(peak_fds, fds), max(peak_rss, rss)
            if soft is not None:
                limits.add(soft)
            time.sleep(0.2)
            if time.perf_counter() - start > 1800:
                proc.kill()
                break
        proc.wait(timeout=60)
    wall = time.perf_counter() - start
    out, err = out_path.read_text(), err_path.read_text()
    summary = next((line for line in out.splitlines() if " hosts: " in line), out[-300:])
    row = {
        "run": label,
        "rc": proc.returncode,
        "wall_s": round(wall, 1),
        "summary": summary,
        "peak_open_fds": peak_fds,
        "peak_rss_mb": round(peak_rss, 1),
        "soft_fd_limits_seen": sorted(limits),
    }
    if proc.returncode not in (0, 1):
        row["stderr_tail"] = err[-1500:]
    log(json.dumps(row))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--per-sshd", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    bench = Bench(args.hosts, hold=True, per_sshd=args.per_sshd)
    result: dict[str, Any] = {"argv": sys.argv[1:], "hosts": args.hosts}
    try:
        result["setup"] = bench.setup()
        result["runs"] = [reconcile(bench, "fill"), reconcile(bench, "nochange")]
    finally:
        bench.teardown()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["rc"] == 0 for r in result["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
