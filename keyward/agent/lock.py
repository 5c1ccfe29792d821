"""One writer at a time: a file lock next to a SQLite registry, an advisory lock on PostgreSQL.

``keyward reconcile``, ``keyward offboard`` and the daemon's pushes all take
this lock, so two processes never interleave writes to the same host file.
The daemon holds it only for the moment of a push; one-shot commands wait up
to ``wait`` seconds for it.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from keyward.errors import KeywardError
from keyward.registry.db import sqlite_path
from keyward.registry.store import Registry

ADVISORY_LOCK_ID = 0x6B657977  # "keyw"
POLL = 0.05


class LockBusy(KeywardError):
    """Another reconcile, offboarding or daemon push holds the lock."""

    exit_code = 1


@contextmanager
def reconcile_lock(registry: Registry, wait: float = 0.0) -> Iterator[None]:
    """Hold the writers' lock, waiting up to ``wait`` seconds (``float('inf')``: forever)."""
    deadline = time.monotonic() + wait
    if registry.backend == "postgresql":
        with registry.engine.connect() as conn:
            while True:
                got = conn.execute(
                    text("SELECT pg_try_advisory_lock(:id)"), {"id": ADVISORY_LOCK_ID}
                ).scalar()
                conn.commit()
                if got:
                    break
                if time.monotonic() >= deadline:
                    raise LockBusy("another keyward writer is running (advisory lock held)")
                time.sleep(POLL)
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": ADVISORY_LOCK_ID})
                conn.commit()
        return
    path = sqlite_path(registry.url)
    if path is None:
        raise KeywardError("writers need a file or PostgreSQL registry, not an in-memory one")
    lock_path = f"{path}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusy(
                        f"another keyward writer is running (lock {lock_path})"
                    ) from None
                time.sleep(POLL)
        yield
    finally:
        os.close(fd)
