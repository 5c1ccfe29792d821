"""The README's first command: ``keyward demo`` on an embedded default."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def test_demo_runs_end_to_end_and_leaves_nothing_behind() -> None:
    base = Path("/srv")  # where safe_base_dir() puts fleets when running as root
    before = {p.name for p in base.iterdir() if p.name.startswith("keyward-demo-")}
    proc = subprocess.run(
        ["keyward", "demo"],
        capture_output=True,
        text=True,
        timeout=240,
        env={k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # alice logs in on every host, bob never; after revocation alice is refused everywhere.
    assert out.count(": logged in") == 3
    assert out.count(": refused") == 6
    assert "audit chain ok" in out
    assert "demo finished" in out
    after = {p.name for p in base.iterdir() if p.name.startswith("keyward-demo-")}
    assert after == before
