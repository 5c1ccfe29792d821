"""Local accounts for tests that log in as someone other than root (root only).

Test-only: ``keyward demo`` logs in as the account running it and creates none, so
creating and deleting accounts (useradd, usermod, userdel) does not ship in the package.
The benchmarks use these too (``bench/daemon.py``).
"""

from __future__ import annotations

import pwd
import subprocess
from pathlib import Path

from keyward.testing.fleet import FleetError, is_root


def ensure_account(name: str, home_base: Path) -> pwd.struct_passwd:
    """Create (or keep) the local account ``name`` with home ``home_base/name``; root only.

    The password field is set to ``*``: with ``UsePAM no`` OpenSSH refuses *key* logins to
    accounts whose password starts with ``!`` (locked), which is what ``useradd`` leaves.
    """
    if not is_root():
        raise FleetError(f"creating account {name!r} needs root")
    try:
        pwd.getpwnam(name)
    except KeyError:
        home_base = Path(home_base)
        home_base.mkdir(mode=0o755, parents=True, exist_ok=True)
        done = subprocess.run(
            ["useradd", "-m", "-d", str(home_base / name), "-s", "/bin/sh", name],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise FleetError(f"useradd {name} failed: {done.stderr.strip()}") from None
    done = subprocess.run(
        ["usermod", "-p", "*", name], capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise FleetError(f"usermod -p '*' {name} failed: {done.stderr.strip()}")
    return pwd.getpwnam(name)


def remove_account(name: str) -> None:
    """Delete the local account ``name`` and its home; a missing account is fine."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    done = subprocess.run(
        ["userdel", "-r", "-f", name], capture_output=True, text=True, check=False, timeout=60
    )
    # 6: no such user (raced); 12: home could not be removed (already gone).
    if done.returncode not in (0, 6, 12):
        raise FleetError(f"userdel {name} failed: {done.stderr.strip()}")
