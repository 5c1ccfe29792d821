"""scripts/test, the README's test command, on a machine that lacks what the tests need.

The script runs for real (bash) on a copy of the checkout, with a PATH that holds only a few
basic tools: the programs the tests need are "missing", and ``apt-get``, ``python3`` and
``id`` are stand-ins that record how they were called. So this proves what a fresh machine
gets (packages installed with apt as root, keyward's test extras, then pytest with the
developer's arguments) without installing anything here.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASICS = ("bash", "env", "cat", "cut", "dirname", "sha256sum")
RECORDER = '#!/bin/sh\necho "${0##*/} $*" >> "$CALLS"\n'


def fresh_checkout(tmp_path: Path, uid: int) -> tuple[Path, Path]:
    """A copy of scripts/test and pyproject.toml, and a bin directory with only the basics."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "test", checkout / "scripts" / "test")
    shutil.copy2(ROOT / "pyproject.toml", checkout / "pyproject.toml")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in BASICS:
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    for stub in ("apt-get", "python3"):
        (bin_dir / stub).write_text(RECORDER)
        (bin_dir / stub).chmod(0o755)
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (bin_dir / "id").chmod(0o755)
    return checkout, bin_dir


def run_script(checkout: Path, bin_dir: Path, *args: str) -> tuple[int, str, list[str]]:
    calls = checkout.parent / "calls"
    proc = subprocess.run(
        [str(bin_dir / "bash"), str(checkout / "scripts" / "test"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(bin_dir), "CALLS": str(calls), "HOME": str(checkout.parent)},
    )
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    # What it did, not how it looked: the probes (python3 -c ..., pip --version) left out.
    actions = [line for line in lines if line.startswith(("apt-get", "python3 -m p"))]
    return proc.returncode, proc.stderr, [a for a in actions if a != "python3 -m pip --version"]


def test_on_a_fresh_machine_installs_what_is_missing_then_runs_pytest(tmp_path: Path) -> None:
    checkout, bin_dir = fresh_checkout(tmp_path, uid=0)
    code, err, calls = run_script(checkout, bin_dir, "-m", "unit", "-q")
    assert code == 0, err
    # sshd and initdb are looked for at their Debian paths, the rest on PATH (empty here).
    missing = [] if os.access("/usr/sbin/sshd", os.X_OK) else ["openssh-server"]
    missing.append("openssh-client")
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        missing.append("postgresql")
    missing += ["systemd", "passwd", "mount", "e2fsprogs", "bsdutils", "sudo", "groff-base"]
    # slapd and the browser are looked for at their Debian paths too.
    if not os.access("/usr/sbin/slapd", os.X_OK):
        missing.append("slapd")
    missing.append("ldap-utils")
    missing += [
        package
        for path, package in (
            ("/usr/bin/chromium", "chromium"),
            ("/usr/bin/chromedriver", "chromium-driver"),
        )
        if not os.access(path, os.X_OK)
    ]
    assert calls == [
        "apt-get update -qq",
        f"apt-get install -y -qq --no-install-recommends {' '.join(missing)}",
        "python3 -m pip install -q --disable-pip-version-check -e .[test]",
        "python3 -m pytest -m unit -q",
    ]
    # Next time nothing is missing from pip's side: only pytest runs (apt still asked,
    # since the stand-in PATH still lacks the tools).
    code, err, calls = run_script(checkout, bin_dir, "tests/test_plan.py")
    assert code == 0, err
    assert [c for c in calls if not c.startswith("apt-get")] == [
        "python3 -m pytest tests/test_plan.py"
    ]


def test_refuses_to_run_as_an_ordinary_user(tmp_path: Path) -> None:
    checkout, bin_dir = fresh_checkout(tmp_path, uid=1000)
    code, err, calls = run_script(checkout, bin_dir)
    assert code == 2 and calls == []
    assert "the tests run as root" in err


def test_ci_runs_exactly_the_readme_command() -> None:
    commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert commands[-1] == "scripts/test"
    assert "scripts/test" in (ROOT / "README.md").read_text().split("## Tests", 1)[1]
