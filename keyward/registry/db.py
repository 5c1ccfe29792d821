"""Opening the registry database: where it lives and how to talk to it safely.

SQLite is the default (one file, WAL mode so readers never block the writer,
``BEGIN IMMEDIATE`` so two administrators at once queue up instead of failing
half-way).  PostgreSQL is used through a URL such as
``postgresql+psycopg://keyward@db/keyward``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlmodel import create_engine

from keyward.errors import RegistryUnavailable

SQLITE_BUSY_TIMEOUT_MS = 15_000


def describe(url: str) -> str:
    """The URL for messages, with any password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(malformed database URL)"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other backends."""
    parsed: URL = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database)


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Create files owner-only (umask 077) inside the block, whatever the caller's umask.

    A file created with the process umask (often 022) is readable by everyone until a
    later ``chmod``; registry, backup and checkpoint files must be private from the first
    byte.  The umask is process-wide; other threads meanwhile only get more private files.
    """
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 unless it exists; True if this call created it."""
    with private_umask():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return False
    os.close(fd)
    return True


def make_engine(url: str, *, create_dir: bool = False) -> Engine:
    """An engine configured for keyward's transaction rules on either backend."""
    try:
        parsed = make_url(url)
    except Exception:
        raise RegistryUnavailable("the registry URL is malformed (use a path or a URL)") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            if create_dir:
                # The file exists, mode 0600, before SQLite writes a byte: SQLite creates
                # its -wal, -shm and -journal files with the main file's mode.
                try:
                    with private_umask():
                        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    create_private_file(path)
                except OSError as exc:
                    raise RegistryUnavailable(
                        f"cannot create the registry {path}: {exc.strerror or exc}"
                    ) from None
            elif not path.exists():
                raise RegistryUnavailable(
                    f"no registry at {path}; run 'keyward init' (or pass --db / KEYWARD_DB)"
                )
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        )
        _configure_sqlite(engine)
        return engine
    if backend == "postgresql":
        return create_engine(url, pool_pre_ping=True)
    raise RegistryUnavailable(f"unsupported registry backend {backend!r}; use sqlite or postgresql")


def _configure_sqlite(engine: Engine) -> None:
    """WAL, foreign keys, and explicit ``BEGIN IMMEDIATE`` transactions.

    pysqlite's own transaction handling starts transactions lazily and would
    let two writers both read the audit head and then collide; taking the
    write lock at BEGIN makes the second writer wait (up to the busy timeout).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def secure_sqlite_file(url: str) -> None:
    """Make a fresh SQLite registry readable by its owner only."""
    path = sqlite_path(url)
    if path is None:
        return
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if candidate.exists():
            os.chmod(candidate, 0o600)
