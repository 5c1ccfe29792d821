"""One reconcile at a time.

A file lock next to a SQLite registry; a session advisory lock on PostgreSQL.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from keyward.errors import KeywardError
from keyward.registry.db import sqlite_path
from keyward.registry.store import Registry

ADVISORY_LOCK_ID = 0x6B657977  # "keyw"


class LockBusy(KeywardError):
    """Another reconcile (or offboarding) holds the lock."""

    exit_code = 1


@contextmanager
def reconcile_lock(registry: Registry, wait: bool = False) -> Iterator[None]:
    path = sqlite_path(registry.url)
    if registry.backend == "postgresql":
        with registry.engine.connect() as conn:
            if wait:
                conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": ADVISORY_LOCK_ID})
            else:
                got = conn.execute(
                    text("SELECT pg_try_advisory_lock(:id)"), {"id": ADVISORY_LOCK_ID}
                ).scalar()
                if not got:
                    raise LockBusy("another keyward reconcile is running (advisory lock held)")
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": ADVISORY_LOCK_ID})
                conn.commit()
        return
    if path is None:
        raise KeywardError("reconcile needs a file or PostgreSQL registry, not an in-memory one")
    lock_path = f"{path}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockBusy(f"another keyward reconcile is running (lock {lock_path})") from None
        yield
    finally:
        os.close(fd)
