"""Small operating-system helpers for the daemon: systemd notify, writer lock."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
from typing import Any

from sqlalchemy import text

from keyward.registry.db import sqlite_path
from keyward.registry.lock import (
    ADVISORY_LOCK_ID,
    Holder,
    mark_file,
    name_pg_connection,
    unmark_file,
)
from keyward.registry.store import Registry


def sd_notify(state: str) -> bool:
    """Tell systemd about readiness/status (Type=notify); a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False


DAEMON_HOLDER = Holder("keyward daemon")


class WriterLock:
    """The same lock as ``keyward reconcile`` takes, acquired without blocking the event loop.

    It keeps other processes out; inside the daemon several push rounds may hold it at
    once (hosts connecting while a verification pass runs). The operating-system lock
    is taken when the first holder arrives and given back when the last one leaves,
    one step at a time: two rounds that tried at once used to open the lock file twice
    and flock both, and the release then unlocked the wrong descriptor, so the daemon
    kept a lock nobody would release and every later round waited for it forever.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._fd: int | None = None
        self._conn: Any = None
        self._holders = 0
        self._steps = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._steps:
            if self._holders == 0:
                while not await asyncio.to_thread(self._try):
                    await asyncio.sleep(0.05)
            self._holders += 1

    def _try(self) -> bool:
        if self._registry.backend == "postgresql":
            if self._conn is None:
                self._conn = self._registry.engine.connect()
                # A waiting `keyward reconcile` reads this to say who it waits for.
                name_pg_connection(self._conn, DAEMON_HOLDER)
            got = bool(
                self._conn.execute(
                    text("SELECT pg_try_advisory_lock(:id)"), {"id": ADVISORY_LOCK_ID}
                ).scalar()
            )
            self._conn.commit()
            return got
        path = sqlite_path(self._registry.url)
        assert path is not None
        if self._fd is None:
            self._fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        mark_file(self._fd, DAEMON_HOLDER)
        return True

    async def release(self) -> None:
        async with self._steps:
            self._holders -= 1
            if self._holders == 0:
                await asyncio.to_thread(self._release)

    def _release(self) -> None:
        if self._registry.backend == "postgresql":
            if self._conn is not None:
                self._conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": ADVISORY_LOCK_ID})
                self._conn.commit()
            return
        if self._fd is not None:
            unmark_file(self._fd)
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
