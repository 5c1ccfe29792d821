"""Profile one ``keyward reconcile`` (or ``offboard``) on the compare.py fleet with py-spy.

    python bench/ansible/profile_keyward.py --hosts 100 --scenario nochange \
        --out bench/results/ansible_compare-profile-nochange

Writes ``<out>.txt`` (py-spy collapsed stacks, ``--format raw``) and ``<out>-top.txt``
(top functions by own and by inclusive samples, keyward frames marked), plus the
reconcile's wall time.  Needs ``pip install py-spy``; run as root; same setup and
teardown as compare.py.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import compare  # noqa: E402


def top(raw: Path, limit: int = 30) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"total samples: {total}", "", "own samples:"]
    out += [f"{100 * c / total:5.1f}%  {f}" for f, c in own.most_common(limit)]
    out += ["", "inclusive samples (keyward frames):"]
    out += [f"{100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(400) if "keyward" in f][:limit]
    out += ["", "inclusive samples (all):"]
    out += [f"{100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(limit)]
    return "\n".join(out)


def host_side(c: compare.Compare, runs: int = 20) -> str:
    """CPU of the per-host pieces of a keyward reconcile, run locally without SSH."""
    import resource

    from keyward.agent.bootstrap import remote_command

    host = next(iter(c.hosts.values()))
    hello = '{"op": "hello"}\n'
    cases = {
        "python3 -I -c <keyward helper> (start, one hello, EOF)": (["sh", "-c", remote_command("/usr/bin/python3")], hello),
        "python3 -I -c pass (bare interpreter start)": (["/usr/bin/python3", "-I", "-c", "pass"], ""),
        "sshd -T -f <host config> -C user=root,... (the sshd_config check)": (
            ["/usr/sbin/sshd", "-T", "-f", str(host.sshd_config), "-C", "user=root,host=localhost,addr=127.0.0.1"], ""),
        "cat 3 files (what the ssh floor runs)": (["cat", *(str(c.path(host.name, a)) for a in c.accounts)], ""),
    }
    out = [f"host-side pieces, CPU per invocation (mean of {runs}, RUSAGE_CHILDREN):"]
    for name, (argv, stdin) in cases.items():
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        for _ in range(runs):
            subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)
        wall = (time.perf_counter() - t0) / runs
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) / runs
        out.append(f"  {cpu * 1000:7.1f} ms CPU  {wall * 1000:7.1f} ms wall  {name}")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--scenario", choices=("fill", "nochange"), default="nochange")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rate", type=int, default=100)
    args = p.parse_args()
    import daemon as dbench

    pyspy = shutil.which("py-spy") or str(compare.BIN / "py-spy")
    c = compare.Compare(dbench, args.hosts, args.out.parent)
    try:
        c.setup()
        if args.scenario == "fill":
            c.reset_fill()
        else:
            c.prime("keyward", c.desired())
        raw = args.out.with_suffix(".txt")
        t0 = time.perf_counter()
        done = subprocess.run(
            [pyspy, "record", "--rate", str(args.rate), "--format", "raw", "-o", str(raw), "--",
             sys.executable, "-m", "keyward", "reconcile"],
            env=c.kw_env(), capture_output=True, text=True, timeout=900, check=False,
        )
        wall = time.perf_counter() - t0
        print(done.stdout[-500:], done.stderr[-800:])
        report = f"wall (under py-spy) {wall:.2f}s\n" + host_side(c) + "\n\n" + top(raw)
        Path(f"{args.out}-top.txt").write_text(report + "\n")
        print(report)
    finally:
        c.b.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
