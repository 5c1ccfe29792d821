"""One writer at a time: a file lock next to a SQLite registry, an advisory lock on PostgreSQL.

``keyward reconcile``, ``keyward offboard`` and the daemon's pushes all take
this lock, so two processes never interleave writes to the same host file.
The daemon holds it only for the moment of a push; one-shot commands wait up
to ``wait`` seconds for it.

A waiting administrator is told who holds it.  The holder says so itself: in
the lock file (one JSON line: command, actor, pid, host, since), and on
PostgreSQL in its lock connection's ``application_name``, which any session can
read back through ``pg_locks`` and ``pg_stat_activity``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from keyward.errors import KeywardError
from keyward.registry.db import sqlite_path
from keyward.registry.store import Registry

ADVISORY_LOCK_ID = 0x6B657977  # "keyw"
POLL = 0.05
UNKNOWN_HOLDER = "another keyward process (it did not say which)"
# PostgreSQL keeps the first NAMEDATALEN-1 bytes of an application_name.
APPLICATION_NAME_MAX = 63


class LockBusy(KeywardError):
    """Another reconcile, offboarding or daemon push holds the lock."""

    exit_code = 1


@dataclass(frozen=True)
class Holder:
    """Who takes the lock, as a waiting process will be told."""

    command: str  # "keyward reconcile", "keyward offboard", "keyward daemon"
    actor: str | None = None

    def record(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "actor": self.actor,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def application_name(self) -> str:
        """The PostgreSQL lock connection's name: ``command|pid|host|actor`` in 63 bytes."""
        name = f"{self.command}|{os.getpid()}|{socket.gethostname()}|{self.actor or ''}"
        return name.encode("ascii", "replace").decode()[:APPLICATION_NAME_MAX]


def parse_application_name(name: str) -> dict[str, Any] | None:
    """The record behind ``Holder.application_name``, or None for another program's name."""
    parts = name.split("|", 3)
    if len(parts) < 3 or not parts[0].startswith("keyward"):
        return None
    record: dict[str, Any] = {"command": parts[0], "pid": parts[1], "host": parts[2]}
    if len(parts) == 4 and parts[3]:
        record["actor"] = parts[3]
    return record


def describe(record: dict[str, Any], where: str | None = None) -> str:
    """``keyward reconcile (pid 42 on admin-1, actor alice, since 2026-12-04T06:00:00Z)``."""
    command = _safe(record.get("command")) or "keyward"
    pid, host = record.get("pid"), record.get("host")
    facts = []
    if pid or host:
        facts.append(
            " ".join(x for x in (pid and f"pid {_safe(pid)}", host and f"on {_safe(host)}") if x)
        )
    if record.get("actor"):
        facts.append(f"actor {_safe(record['actor'])}")
    if record.get("since"):
        facts.append(f"since {_safe(record['since'])}")
    if where:
        facts.append(where)
    return f"{command} ({', '.join(facts)})" if facts else command


def _safe(value: Any) -> str:
    """Text from another process's lock file, made safe for a terminal."""
    return "".join(ch for ch in str(value) if ch.isprintable())[:200]


def mark_file(fd: int, holder: Holder) -> None:
    """Write who holds the lock into the (already locked) lock file."""
    data = (json.dumps(holder.record(), sort_keys=True) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def unmark_file(fd: int) -> None:
    """Forget the holder before letting go, so no one is told of a holder long gone."""
    with suppress(OSError):
        os.ftruncate(fd, 0)


def file_holder(lock_path: str) -> str:
    """Who holds the file lock, as its holder wrote it."""
    try:
        with open(lock_path, "rb") as handle:
            raw = handle.read(4096)
        record = json.loads(raw.decode("utf-8", "replace") or "null")
    except (OSError, ValueError):
        return UNKNOWN_HOLDER
    if not isinstance(record, dict) or not record.get("command"):
        return UNKNOWN_HOLDER
    return describe(record)


def name_pg_connection(conn: Any, holder: Holder) -> None:
    conn.execute(
        text("SELECT set_config('application_name', :name, false)"),
        {"name": holder.application_name()},
    )


def pg_holder(conn: Any) -> str:
    """Who holds the advisory lock: the holding session's application_name and backend."""
    row = conn.execute(
        text(
            "SELECT a.application_name, a.pid, host(a.client_addr) "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 "
            "AND l.objid = :id AND l.objsubid = 1"
        ),
        {"id": ADVISORY_LOCK_ID},
    ).first()
    conn.commit()
    if row is None:
        return UNKNOWN_HOLDER
    name, backend, addr = row
    where = f"PostgreSQL backend {backend}" + (f" from {addr}" if addr else "")
    record = parse_application_name(str(name or ""))
    if record is None:
        return f"{UNKNOWN_HOLDER} ({where})"
    return describe(record, where)


class LockHandle:
    """This process's hold on the writers' lock: one attempt at a time, never waiting.

    On SQLite it is a descriptor of ``<registry file>.lock`` under ``flock``; on
    PostgreSQL a connection of its own that holds the advisory lock and is named after
    ``holder``. Both are opened on the first attempt and kept until :meth:`close`, so
    the daemon can take and give back the lock round after round with one of them.
    :func:`reconcile_lock` (waiting, with a deadline) and the daemon's
    ``WriterLock`` (shared by its rounds, off the event loop) are built on it.
    """

    def __init__(self, registry: Registry, holder: Holder, shared: bool = False) -> None:
        self._registry = registry
        self._holder = holder
        # Shared (PostgreSQL): several daemons of one fleet push at once, each to its own
        # hosts (their leases keep them apart); a one-shot writer still excludes them all.
        self._shared = shared
        self._conn: Any = None
        self._fd: int | None = None
        self.lock_path: str | None = None  # the lock file, on SQLite
        if registry.backend != "postgresql":
            path = sqlite_path(registry.url)
            if path is None:
                raise KeywardError(
                    "writers need a file or PostgreSQL registry, not an in-memory one"
                )
            self.lock_path = f"{path}.lock"

    def try_acquire(self) -> bool:
        """Take the lock if it is free, and say who holds it now; False when taken."""
        if self.lock_path is None:
            if self._conn is None:
                self._conn = self._registry.engine.connect()
                # A waiting writer reads this name to say whom it waits for.
                name_pg_connection(self._conn, self._holder)
                self._conn.commit()
            take = "pg_try_advisory_lock_shared" if self._shared else "pg_try_advisory_lock"
            got = bool(
                self._conn.execute(text(f"SELECT {take}(:id)"), {"id": ADVISORY_LOCK_ID}).scalar()
            )
            self._conn.commit()
            return got
        if self._fd is None:
            self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        mark_file(self._fd, self._holder)
        return True

    def held_by(self) -> str:
        """Who holds the lock, as a waiting administrator is told."""
        if self.lock_path is None:
            if self._conn is None:
                return UNKNOWN_HOLDER
            return pg_holder(self._conn)
        return file_holder(self.lock_path)

    def busy(self) -> LockBusy:
        """The error for a writer that waited long enough."""
        where = f" (lock {self.lock_path})" if self.lock_path is not None else ""
        return LockBusy(f"another keyward writer is running: {self.held_by()}{where}")

    def release(self) -> None:
        """Give the lock back; the descriptor or connection stays open for the next attempt."""
        if self._conn is not None:
            give = "pg_advisory_unlock_shared" if self._shared else "pg_advisory_unlock"
            self._conn.execute(text(f"SELECT {give}(:id)"), {"id": ADVISORY_LOCK_ID})
            self._conn.commit()
        if self._fd is not None:
            unmark_file(self._fd)
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file, or hand the connection back to the pool unnamed."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                # The pool hands the connection out again: it must not go on naming
                # this holder. A broken connection is dropped by the pool anyway.
                with suppress(SQLAlchemyError):
                    conn.execute(text("RESET application_name"))
                    conn.commit()
            finally:
                conn.close()


@contextmanager
def reconcile_lock(
    registry: Registry,
    wait: float = 0.0,
    *,
    holder: Holder | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the writers' lock, waiting up to ``wait`` seconds (``float('inf')``: forever).

    When the lock is taken, ``on_wait`` is called once with who holds it, before waiting.
    """
    deadline = time.monotonic() + wait
    told = False
    lock = LockHandle(registry, holder or Holder("keyward"))
    try:
        while not lock.try_acquire():
            if time.monotonic() >= deadline:
                raise lock.busy()
            if on_wait is not None and not told:
                told = True
                on_wait(lock.held_by())
            time.sleep(POLL)
        try:
            yield
        finally:
            lock.release()
    finally:
        lock.close()
