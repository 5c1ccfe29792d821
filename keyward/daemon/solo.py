"""A SQLite registry takes one daemon: a second one is refused, in one line.

Several daemons coordinate through PostgreSQL (heartbeats, leases checked at write time,
``keyward.daemon.cluster``); SQLite offers nothing of the kind to processes on other
machines, and two daemons on one SQLite file would both write every host. So a daemon on
SQLite holds ``<registry>.daemon`` under ``flock`` for as long as it runs, with who it is
written in it, and a second daemon that finds the file locked stops with exit status 2.
The kernel lets go of the lock when the process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import os

from keyward.errors import UsageError
from keyward.registry.db import sqlite_path
from keyward.registry.lock import Holder, file_holder, mark_file
from keyward.registry.store import Registry

SOLO_HOLDER = Holder("keyward daemon")


def lock_path(registry: Registry) -> str | None:
    """``<registry file>.daemon``; None for a registry that is not a SQLite file."""
    path = sqlite_path(registry.url) if registry.backend == "sqlite" else None
    return None if path is None else f"{path}.daemon"


def claim_sqlite(registry: Registry) -> int | None:
    """Hold the SQLite registry's daemon lock; the descriptor to keep open (None: not SQLite).

    Raises :class:`UsageError` when another daemon holds it.
    """
    path = lock_path(registry)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot open the daemon lock {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(
            f"another daemon already runs on this SQLite registry: {file_holder(path)} "
            f"(lock {path}); a SQLite registry takes one daemon, use PostgreSQL to run several"
        ) from None
    mark_file(fd, SOLO_HOLDER)
    return fd
