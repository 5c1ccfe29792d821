"""Benchmark: ``keyward adopt scan`` against a one-shot ``keyward reconcile`` of the same fleet.

The issue's target: scanning 1,000 hosts costs about one one-shot reconcile. This starts
``bench/oneshot.py``'s fleet (real sshd, 10 loopback hosts per sshd process, 3 accounts per
host, 50 people, concurrency 50), fills it with one reconcile, then alternates an unchanged
reconcile and an adoption scan (``nochange``, ``scan``, ``nochange``, ``rescan``), so both are
measured under the same load, and finally times ``adopt report --json``. Every file holds the
50 people's lines, so each scan records about 40 lines per file: far more than a typical
adoption finds, which makes the recording side (one registry transaction) the honest worst case.

    python bench/adopt_scan.py --hosts 1000 --json bench/results/adopt_scan_1000.json
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
from oneshot import sample


def run(bench: Bench, label: str, *argv: str) -> dict[str, Any]:
    """One keyward command over the fleet: wall time, exit, peak fds and RSS, its summary."""
    out_path, err_path = bench.base / f"{label}.out", bench.base / f"{label}.err"
    start = time.perf_counter()
    with out_path.open("w") as out_file, err_path.open("w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keyward", *argv],
            env=bench.env(),
            stdout=out_file,
            stderr=err_file,
        )
        peak_fds, peak_rss = 0, 0.0
        while proc.poll() is None:
            fds, rss, _ = sample(proc.pid)
            peak_fds, peak_rss = max(peak_fds, fds), max(peak_rss, rss)
            time.sleep(0.2)
            if time.perf_counter() - start > 1800:
                proc.kill()
                break
        proc.wait(timeout=60)
    wall = time.perf_counter() - start
    out = out_path.read_text()
    if argv[:2] == ("adopt", "scan") and out.startswith("{"):
        data = json.loads(out)
        totals = data["totals"]
        out = (
            f"scanned {totals['hosts']} hosts: {totals['lines']} key lines, "
            f"{totals['failed']} failed; "
            f"reading {data['read_seconds']} s, recording {data['record_seconds']} s"
        )
    summary = next(
        (line for line in out.splitlines() if " hosts: " in line or line.startswith("scanned")),
        out[:200] if not out.startswith("{") else f"{len(out)} bytes of JSON",
    )
    row = {
        "run": label,
        "command": " ".join(argv),
        "rc": proc.returncode,
        "wall_s": round(wall, 1),
        "summary": summary,
        "peak_open_fds": peak_fds,
        "peak_rss_mb": round(peak_rss, 1),
    }
    if proc.returncode != 0:
        row["stderr_tail"] = err_path.read_text()[-1500:]
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
        result["runs"] = [
            run(bench, "fill", "reconcile"),
            run(bench, "nochange", "reconcile"),
            run(bench, "scan", "adopt", "scan", "--json"),
            run(bench, "nochange2", "reconcile"),
            run(bench, "rescan", "adopt", "scan", "--json"),
            run(bench, "report", "adopt", "report", "--json"),
        ]
    finally:
        bench.teardown()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["rc"] == 0 for r in result["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
