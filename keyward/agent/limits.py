"""The process limits a run over many hosts needs: open file descriptors.

Each open SSH connection holds a socket (and asyncssh a little more); a default soft
``RLIMIT_NOFILE`` of 1,024 would cap a daemon at a few hundred hosts and leave a
one-shot run with little headroom at high concurrency. Raising the soft limit up to the
hard limit needs no privilege.
"""

from __future__ import annotations

import resource

FDS_PER_CONNECTION = 4
FDS_BASE = 256  # registry, logs, the interpreter's own files


def fds_needed(connections: int) -> int:
    return connections * FDS_PER_CONNECTION + FDS_BASE


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards ``needed`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, hard
