"""The SQLite side of backups: online-backup snapshots, read-only checks, fresh restores.

SQLite's online backup API takes the copy in one read transaction, so other
processes keep writing meanwhile (WAL) and the snapshot is still consistent.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from keyward.errors import BackupFailed, UsageError
from keyward.registry import checkpoint as cp
from keyward.registry.backup.files import private_temp
from keyward.registry.backup.rebuild import SKIP_TABLES, migrate_to
from keyward.registry.backup.verify import Verified, check_chain
from keyward.registry.db import create_private_file


def sqlite_readonly_engine(path: Path) -> Engine:
    """An engine on a SQLite file that can never write to it."""
    uri = f"file:{quote(str(path.absolute()))}?mode=ro"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, check_same_thread=False)

    return create_engine("sqlite://", creator=connect)


def sqlite_snapshot(source: Path, target: Path) -> None:
    """Copy a live SQLite database with the online backup API, in one step.

    One step means one read transaction on the source: a consistent snapshot
    even while other processes write (WAL lets them go on meanwhile).  The copy
    is switched to a rollback journal so that it is one self-contained file.
    """
    uri = f"file:{quote(str(source.absolute()))}?mode=ro"
    try:
        src = sqlite3.connect(uri, uri=True, timeout=15)
    except sqlite3.Error as exc:
        raise BackupFailed(f"cannot open the registry {source}: {exc}") from None
    try:
        dst = sqlite3.connect(target)
        try:
            src.execute("PRAGMA busy_timeout = 15000")
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode = DELETE").fetchall()
            dst.commit()
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupFailed(f"SQLite backup of {source} failed: {exc}") from None
    finally:
        src.close()


def verify_sqlite_snapshot(path: Path, checkpoints: Sequence[cp.Checkpoint]) -> Verified:
    """Open the snapshot read-only and verify its audit chain (and ``checkpoints``)."""
    engine = sqlite_readonly_engine(path)
    try:
        return check_chain(engine, f"snapshot {path.name}", checkpoints)
    finally:
        engine.dispose()


def _sqlite_restore(source: Path, target: Path) -> None:
    """Copy the (fresh, verified) ``source`` over the target with the backup API, under its lock."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        create_private_file(target)
    except OSError as exc:
        raise UsageError(f"cannot create {target}: {exc.strerror}") from None
    src = sqlite3.connect(f"file:{quote(str(source.absolute()))}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target, timeout=15)
        try:
            dst.execute("PRAGMA busy_timeout = 15000")
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode = WAL").fetchall()
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupFailed(f"restoring into {target} failed: {exc}") from None
    finally:
        src.close()
    for candidate in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
        if candidate.exists():
            os.chmod(candidate, 0o600)


def _sqlite_fresh_copy(snapshot: Path, work: Path, revision: str) -> None:
    """Fill ``work`` (new, empty) with keyward's schema and the snapshot's table rows only.

    Triggers, views, indexes and tables keyward does not know stay behind in the
    snapshot: a trigger that un-revokes keys, added by whoever could write to the
    database, does not come back with a restore.
    """
    from keyward.registry.db import make_engine

    engine = make_engine(f"sqlite:///{work}")
    try:
        with engine.begin() as conn:
            migrate_to(conn, revision)
    finally:
        engine.dispose()
    conn_ = sqlite3.connect(f"file:{quote(str(work.absolute()))}", uri=True)
    try:
        conn_.isolation_level = None
        conn_.execute("PRAGMA trusted_schema = OFF")
        conn_.execute("PRAGMA journal_mode = DELETE").fetchall()
        conn_.execute(
            "ATTACH DATABASE ? AS snap", (f"file:{quote(str(snapshot.absolute()))}?mode=ro",)
        )
        conn_.execute("BEGIN")
        tables = [
            row[0]
            for row in conn_.execute(
                "SELECT name FROM main.sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        for table in tables:
            if table in SKIP_TABLES:
                continue
            kind = conn_.execute(
                "SELECT type FROM snap.sqlite_master WHERE name = ?", (table,)
            ).fetchone()
            if kind is None or kind[0] != "table":
                raise BackupFailed(f"the snapshot has no table {table}: not a keyward registry")
            quoted = '"' + table.replace('"', '""') + '"'
            columns = [row[1] for row in conn_.execute(f"PRAGMA main.table_info({quoted})")]
            present = {row[1] for row in conn_.execute(f"PRAGMA snap.table_info({quoted})")}
            missing = [c for c in columns if c not in present]
            if missing:
                raise BackupFailed(f"the snapshot's table {table} lacks column {missing[0]}")
            names = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
            conn_.execute(f"DELETE FROM main.{quoted}")
            conn_.execute(f"INSERT INTO main.{quoted} ({names}) SELECT {names} FROM snap.{quoted}")
        broken = conn_.execute("PRAGMA main.foreign_key_check").fetchone()
        if broken is not None:
            raise BackupFailed(f"the snapshot's table {broken[0]} has rows that refer to nothing")
        conn_.execute("COMMIT")
        conn_.execute("DETACH DATABASE snap")
    except sqlite3.Error as exc:
        raise BackupFailed(f"copying the snapshot's rows failed: {exc}") from None
    finally:
        conn_.close()


def sqlite_restore_fresh(
    path: Path, target: Path, checkpoint: cp.Checkpoint
) -> tuple[Verified, str]:
    """Verify the snapshot, copy its rows into a fresh schema, verify that, then put it in place."""
    verified = verify_sqlite_snapshot(path, [checkpoint])
    if verified.revision is None:
        raise BackupFailed(f"snapshot {path.name} has no schema revision: not a keyward registry")
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        work = private_temp(target.parent, target.name + ".restore")
    except OSError as exc:
        raise UsageError(f"cannot write next to {target}: {exc.strerror}") from None
    try:
        _sqlite_fresh_copy(path, work, verified.revision)
        engine = sqlite_readonly_engine(work)
        try:
            fresh = check_chain(engine, "the restored copy", [checkpoint])
        finally:
            engine.dispose()
        _sqlite_restore(work, target)
    finally:
        for leftover in (work, *(Path(f"{work}{s}") for s in ("-journal", "-wal", "-shm"))):
            leftover.unlink(missing_ok=True)
    return fresh, verified.revision
