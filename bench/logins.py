"""Benchmark: what collecting sshd logins adds to a one-shot reconcile.

The issue's target: collecting from 100 hosts with 1,000 new log lines each adds
under 2 seconds to a reconcile.  This starts the same loopback fleet as
``bench/daemon.py`` (real sshd, real accounts, 50 people), reconciles once, then
for each repetition appends 1,000 sshd-style lines (accepted logins and
disconnects by the registry's people, addresses from TEST-NET-2 as text only)
to every host's log and times ``keyward reconcile`` with login collection
against ``keyward reconcile --no-logins``, alternating A B A B.

    python bench/logins.py --hosts 100 --lines 1000 --reps 3 --json bench/results/logins_100.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon import Bench, log
from sqlmodel import select

from keyward.registry.models import LoginEvent, SshKey


def append_lines(bench: Bench, fingerprints: list[str], lines: int, rng: random.Random) -> None:
    for host in bench.fleet.hosts:
        out = []
        for i in range(lines // 2):
            # Each person works from one address (as text only: TEST-NET-2, never contacted).
            person = rng.randrange(len(fingerprints))
            fp = fingerprints[person]
            addr = f"198.51.100.{person + 1}"
            port = 20000 + i
            out.append(
                f"Accepted publickey for {bench.deploy} from {addr} port {port} ssh2: "
                f"ED25519 {fp}\n"
            )
            out.append(f"Disconnected from user {bench.deploy} {addr} port {port}\n")
        with open(host.log_file, "a") as handle:
            handle.write("".join(out))


def reconcile(bench: Bench, *args: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "keyward", "reconcile", *args],
        env=bench.env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"reconcile failed: {done.stdout}{done.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rng = random.Random(7)  # noqa: S311 - synthetic data
    bench = Bench(args.hosts, hold=False, per_sshd=1)
    result: dict[str, Any] = {"argv": sys.argv[1:]}
    try:
        result["setup"] = bench.setup()
        assert bench.registry is not None
        with bench.registry.read() as session:
            fingerprints = list(session.exec(select(SshKey.fingerprint)).all())
        log("first reconcile (fill, and start reading every host's log)")
        result["first_fill_s"] = round(reconcile(bench), 2)
        with_logins, without = [], []
        for rep in range(args.reps):
            append_lines(bench, fingerprints, args.lines, rng)
            with_logins.append(reconcile(bench))
            append_lines(bench, fingerprints, args.lines, rng)
            without.append(reconcile(bench, "--no-logins"))
            log(f"rep {rep}: with logins {with_logins[-1]:.2f}s, without {without[-1]:.2f}s")
            # The lines skipped by --no-logins are read by the next collecting run; drain
            # them now so every timed collecting run reads exactly --lines per host.
            reconcile(bench)
        with bench.registry.read() as session:
            stored = len(session.exec(select(LoginEvent.id)).all())
        result.update(
            {
                "hosts": args.hosts,
                "new_lines_per_host": args.lines,
                "with_logins_s": [round(x, 2) for x in with_logins],
                "without_logins_s": [round(x, 2) for x in without],
                "median_with_s": round(statistics.median(with_logins), 2),
                "median_without_s": round(statistics.median(without), 2),
                "added_s": round(statistics.median(with_logins) - statistics.median(without), 2),
                "login_events_stored": stored,
                "target_added_under_2s": statistics.median(with_logins) - statistics.median(without)
                < 2.0,
            }
        )
        log(json.dumps({k: v for k, v in result.items() if k != "setup"}))
    finally:
        bench.teardown()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
