"""Raising the soft open-files limit for runs over many hosts, never above the hard limit."""

from __future__ import annotations

import resource
import subprocess
import sys

from keyward.agent.limits import fds_needed


def _limits_after(soft: int, hard: int, needed: int) -> tuple[int, int]:
    """Run raise_fd_limit in a child whose limits start at (soft, hard)."""
    code = (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
        "from keyward.agent.limits import raise_fd_limit\n"
        f"print(*raise_fd_limit({needed}), *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    returned_soft, returned_hard, soft_now, hard_now = map(int, out.stdout.split())
    assert (returned_soft, returned_hard) == (soft_now, hard_now)
    return soft_now, hard_now


def test_the_soft_limit_rises_to_what_the_connections_need() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    cap = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    assert _limits_after(256, cap, fds_needed(500)) == (min(fds_needed(500), cap), cap)


def test_never_above_the_hard_limit_and_never_lowered() -> None:
    assert _limits_after(128, 1024, 10_000) == (1024, 1024)
    assert _limits_after(1000, 1024, 300) == (1000, 1024)
