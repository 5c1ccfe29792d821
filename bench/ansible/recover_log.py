"""Rebuild run rows from compare.py's console log (for a block whose JSON was not written).

    python bench/ansible/recover_log.py bench/results/ansible_compare.log --n 25 \
        --json bench/results/ansible_compare_n25_from_log.json

Parses the per-run lines ("  <tool> wall ...s ctl ...s host ...s rss ...MB rc N ...") and the
daemon's "verification pass: {...}" lines of one N; incomplete repetitions are kept as is.
The load average of each block comes from its "N=.. <scenario> rep i/3  load [...]" line.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare

BLOCK = re.compile(r"N=(\d+) (\w+) rep (\d+)/\d+\s+load \[([^\]]*)\]")
DAEMON_BLOCK = re.compile(r"N=(\d+) daemon verification passes, load \[([^\]]*)\]")
RUN = re.compile(
    r"^\[[\d:]+\]\s+(\w+)\s+wall\s+([\d.]+)s ctl\s+([\d.]+)s host\s+([\d.]+)s rss\s+([\d.]+)MB rc (\d+) ?(.*?)(\{.*\})?$"
)
PASS = re.compile(r"daemon verification pass: (\{.*\})")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("log", type=Path)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--json", type=Path, required=True)
    a = p.parse_args()
    runs = []
    n = scenario = rep = load = None
    for line in a.log.read_text().splitlines():
        if m := BLOCK.search(line):
            n, scenario, rep, load = int(m[1]), m[2], int(m[3]), [float(x) for x in m[4].split(",")]
            continue
        if m := DAEMON_BLOCK.search(line):
            n, scenario, rep, load = int(m[1]), "nochange", None, [float(x) for x in m[2].split(",")]
            continue
        if n != a.n:
            continue
        if m := PASS.search(line):
            row = ast.literal_eval(m[1])
            row.update({"n": n, "scenario": "nochange", "tool": "daemon", "rc": 0, "load_at_block_start": load})
            runs.append(row)
        elif m := RUN.match(line):
            ctl, host = float(m[3]), float(m[4])
            row = {"n": n, "scenario": scenario, "rep": rep, "tool": m[1], "wall_s": float(m[2]),
                   "controller_cpu_s": ctl, "host_cpu_s": host, "total_cpu_s": round(ctl + host, 3),
                   "controller_peak_rss_mb": float(m[5]), "rc": int(m[6]), "summary": m[7].strip(),
                   "load_at_block_start": load, "recovered_from_log": True}
            if m[8]:
                row["check"] = ast.literal_eval(m[8])
            runs.append(row)
    out = {"source_log": str(a.log), "n": a.n, "runs": runs, "summary": compare.summarise(runs)}
    a.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
