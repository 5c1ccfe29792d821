"""The PostgreSQL side of backups: ``pg_dump``/``pg_restore``, scratch databases, fresh restores.

``pg_dump -Fc`` reads one transaction snapshot.  A dump is verified by
restoring it into a throw-away database on the same server (the registry's
role needs CREATEDB), and restored by copying table rows from there.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, create_engine, func, inspect, text
from sqlalchemy import select as sa_select
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from keyward.errors import AuditChainBroken, BackupFailed, UsageError
from keyward.registry import checkpoint as cp
from keyward.registry.backup.rebuild import SKIP_TABLES, migrate_to
from keyward.registry.backup.verify import Verified, check_chain

PG_TIMEOUT = 3600.0


def pg_tool(name: str) -> str:
    """``pg_dump``/``pg_restore``: from ``KEYWARD_PG_BINDIR``, then PATH, then Debian's dirs."""
    bindir = os.environ.get("KEYWARD_PG_BINDIR")
    if bindir:
        candidate = Path(bindir) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
        raise UsageError(f"KEYWARD_PG_BINDIR={bindir} has no executable {name}")
    found = shutil.which(name)
    if found:
        return found

    def version(path: str) -> float:
        with contextlib.suppress(ValueError):
            return float(Path(path).parent.name)
        return 0.0

    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        candidate = Path(directory) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise BackupFailed(f"{name} not found: install the PostgreSQL client tools")


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URI for ``url`` without its password, and the environment carrying it."""
    parsed: URL = make_url(url)
    env = {"PGPASSWORD": parsed.password} if parsed.password else {}
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _run_pg(argv: list[str], url: str, what: str) -> None:
    _, password_env = _libpq(url)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            timeout=PG_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **password_env},
        )
    except subprocess.TimeoutExpired:
        raise BackupFailed(f"{what} did not finish within {int(PG_TIMEOUT)} s") from None
    except OSError as exc:
        raise BackupFailed(f"cannot run {argv[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        detail = lines[0][:300] if lines else f"exit status {done.returncode}"
        raise BackupFailed(f"{what} failed: {detail}")


def pg_dump(url: str, target: Path) -> None:
    uri, _ = _libpq(url)
    _run_pg(
        [pg_tool("pg_dump"), "--format=custom", "--no-password", f"--file={target}",
         f"--dbname={uri}"],
        url,
        "pg_dump",
    )  # fmt: skip


def pg_restore(path: Path, url: str, *, clean: bool) -> None:
    """Restore a custom-format dump into the database of ``url``, in one transaction."""
    uri, _ = _libpq(url)
    argv = [
        pg_tool("pg_restore"),
        "--no-owner",
        "--no-privileges",
        "--no-password",
        "--exit-on-error",
        "--single-transaction",
    ]
    if clean:
        argv += ["--clean", "--if-exists"]
    _run_pg([*argv, f"--dbname={uri}", str(path)], url, "pg_restore")


def _psycopg_connect(url: str) -> Any:
    import psycopg

    uri, password_env = _libpq(url)
    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 30}
    if password_env:
        kwargs["password"] = password_env["PGPASSWORD"]
    try:
        return psycopg.connect(uri, **kwargs)
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackupFailed(f"cannot connect to PostgreSQL: {first}") from None


@contextlib.contextmanager
def temporary_database(url: str) -> Iterator[str]:
    """A new empty database on the server of ``url``, dropped on exit; yields its URL."""
    import psycopg
    from psycopg import sql

    name = f"keyward_verify_{uuid.uuid4().hex[:12]}"
    with _psycopg_connect(url) as conn:
        try:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            )
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0]
            raise BackupFailed(
                f"cannot create a temporary database to verify the snapshot in ({first}); "
                "the registry's role needs CREATEDB"
            ) from None
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with _psycopg_connect(url) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def verify_pgdump(path: Path, url: str, checkpoints: Sequence[cp.Checkpoint]) -> Verified:
    """Restore the dump into a temporary database on the server of ``url``, verify it there,
    and drop it."""
    with temporary_database(url) as temp_url:
        pg_restore(path, temp_url, clean=False)
        engine = create_engine(temp_url)
        try:
            return check_chain(engine, f"snapshot {path.name}", checkpoints)
        finally:
            engine.dispose()


_NOT_EXTENSION = "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = {} AND d.deptype = 'e')"
"""Objects of an installed extension belong to the extension, not to whoever wrote SQL."""


def _pg_clear(conn: Connection) -> None:
    """Drop every table, view, sequence, function and type in schema ``public``.

    The registry's database is keyward's alone: whatever else is there (a trigger
    function someone added) must not survive a restore.
    """
    quote_ = conn.dialect.identifier_preparer.quote
    kinds = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW",
             "f": "FOREIGN TABLE", "S": "SEQUENCE"}  # fmt: skip
    relations = conn.execute(
        text(
            "SELECT c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r','p','v','m','f','S') "
            f"AND {_NOT_EXTENSION.format('c.oid')} "
            "ORDER BY c.relkind = 'S', c.relname"
        )
    ).all()
    for name, kind in relations:
        conn.exec_driver_sql(f"DROP {kinds[kind]} IF EXISTS public.{quote_(name)} CASCADE")
    routines = conn.execute(
        text(
            "SELECT p.oid::regprocedure::text, p.prokind FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' "
            f"AND {_NOT_EXTENSION.format('p.oid')}"
        )
    ).all()
    for signature, kind in routines:
        what = {"p": "PROCEDURE", "a": "AGGREGATE"}.get(kind, "FUNCTION")
        conn.exec_driver_sql(f"DROP {what} IF EXISTS {signature} CASCADE")
    types = conn.execute(
        text(
            "SELECT t.typname, t.typtype FROM pg_type t "
            "JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname = 'public' AND (t.typtype IN ('e','d','r','m') "
            "OR (t.typtype = 'c' AND t.typrelid = 0)) "
            f"AND {_NOT_EXTENSION.format('t.oid')}"
        )
    ).all()
    for name, kind in types:
        what = "DOMAIN" if kind == "d" else "TYPE"
        conn.exec_driver_sql(f"DROP {what} IF EXISTS public.{quote_(name)} CASCADE")


def _pg_copy_rows(source: Connection, target: Connection) -> None:
    """Copy the rows of keyward's tables (as the fresh ``target`` schema has them)."""
    metadata = MetaData()
    metadata.reflect(bind=target, schema="public")
    inspector = inspect(source)
    source_tables = set(inspector.get_table_names(schema="public"))
    for table in metadata.sorted_tables:
        if table.name in SKIP_TABLES:
            continue
        if table.name not in source_tables:
            raise BackupFailed(f"the snapshot has no table {table.name}: not a keyward registry")
        present = {c["name"] for c in inspector.get_columns(table.name, schema="public")}
        missing = [c.name for c in table.columns if c.name not in present]
        if missing:
            raise BackupFailed(f"the snapshot's table {table.name} lacks column {missing[0]}")
        target.execute(table.delete())
        rows = source.execution_options(stream_results=True).execute(sa_select(table))
        while batch := rows.fetchmany(2000):
            target.execute(table.insert(), [dict(row._mapping) for row in batch])
        for column in table.columns:
            sequence = target.execute(
                text("SELECT pg_get_serial_sequence(:t, :c)"),
                {"t": f"public.{target.dialect.identifier_preparer.quote(table.name)}",
                 "c": column.name},
            ).scalar()  # fmt: skip
            if sequence is None:
                continue
            top = target.execute(sa_select(func.max(column))).scalar()
            target.execute(
                text("SELECT setval(:s, :v, :called)"),
                {"s": sequence, "v": top if top is not None else 1, "called": top is not None},
            )


def pg_restore_fresh(path: Path, url: str, checkpoint: cp.Checkpoint) -> tuple[Verified, str]:
    """Restore the dump into a scratch database, verify it there, then copy table rows
    into a freshly migrated ``public`` schema of the target, in one transaction."""
    from keyward.registry.verify import verify_session

    with temporary_database(url) as scratch_url:
        pg_restore(path, scratch_url, clean=False)
        scratch = create_engine(scratch_url)
        target = create_engine(url)
        try:
            verified = check_chain(scratch, f"snapshot {path.name}", [checkpoint])
            if verified.revision is None:
                raise BackupFailed(
                    f"snapshot {path.name} has no schema revision: not a keyward registry"
                )
            with scratch.connect() as source, target.begin() as conn:
                source.exec_driver_sql("SET row_security = off")
                _pg_clear(conn)
                migrate_to(conn, verified.revision)
                _pg_copy_rows(source, conn)
                with Session(bind=conn) as session:
                    result = verify_session(session, [checkpoint])
                if result is None or result[2] is not None:
                    problem = result[2] if result else "no chain head"
                    raise AuditChainBroken(
                        f"the restored copy: audit chain broken at {problem}; nothing was restored"
                    )
                fresh = Verified(result[0], result[1], verified.revision)
        except DBAPIError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise BackupFailed(f"restoring into the registry failed: {first}") from None
        finally:
            scratch.dispose()
            target.dispose()
    return fresh, verified.revision
