"""Read-only listings without the ORM: a registry read in a tenth of a second.

Importing SQLAlchemy, its ORM, pydantic and sqlmodel costs about 0.4 s, several times the
read itself (docs/benchmarks.md, "CLI start-up"). For the listing an administrator types most,
``keyward person list``, a SQLite registry at this keyward's schema revision is read here with
the standard library's ``sqlite3``, read-only.

Anything else returns ``None`` and the caller takes the ORM path, which gives the usual
behaviour and messages: PostgreSQL, a URL with options or an unusual form, a missing file,
another schema revision, any SQLite error. So this module never decides what an error says;
it only answers when the answer is certain to be the ORM's. ``tests/test_quickread.py``
checks that both paths give the same rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from keyward.registry.location import HEAD_REVISION

PREFIX = "sqlite:///"
BUSY_TIMEOUT_S = 15.0  # as the ORM path's engine (registry/db.py)


@dataclass(frozen=True)
class PersonRow:
    """The columns of ``person`` a listing shows, timestamps aware UTC as the ORM gives them."""

    username: str
    full_name: str
    email: str | None
    status: str
    created_at: datetime
    changed_at: datetime


def sqlite_file(url: str) -> Path | None:
    """The file of a plain ``sqlite:///PATH`` URL; None for any other form.

    Only the form ``keyward`` itself writes for a path (``resolve_url``) is taken: no
    driver suffix, query string, percent-escapes or in-memory database, since reading
    those the way SQLAlchemy does is the ORM path's job.
    """
    if not url.startswith(PREFIX):
        return None
    database = url[len(PREFIX) :]
    if not database or database == ":memory:" or any(c in database for c in "?#%"):
        return None
    return Path(database)


@contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection to a registry at ``HEAD_REVISION``, or None."""
    if not path.is_file():
        yield None
        return
    uri = f"file:{quote(str(path.absolute()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error:
        yield None
        return
    with closing(conn):
        try:
            revisions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        except sqlite3.Error:
            yield None
            return
        yield conn if revisions == [(HEAD_REVISION,)] else None


def _utc(value: object) -> datetime:
    """A stored timestamp as the ORM's ``UTCDateTime`` returns it (naive UTC in SQLite)."""
    if not isinstance(value, str):
        raise ValueError(f"not a stored timestamp: {value!r}")
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def people(url: str) -> list[PersonRow] | None:
    """Everyone in the registry by username, or None: then use the ORM path."""
    path = sqlite_file(url)
    if path is None:
        return None
    with _connect(path) as conn:
        if conn is None:
            return None
        try:
            rows = conn.execute(
                "SELECT username, full_name, email, status, created_at, changed_at "
                "FROM person ORDER BY username"
            ).fetchall()
            return [
                PersonRow(username, full_name, email, status, _utc(created), _utc(changed))
                for username, full_name, email, status, created, changed in rows
            ]
        except (sqlite3.Error, ValueError):
            return None
