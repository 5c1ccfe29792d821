"""The ORM-free read path gives the ORM's rows, or steps aside (keyward.registry.quickread)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import select

from keyward.cli.person_cmds import person_json
from keyward.registry import quickread
from keyward.registry.models import Person
from keyward.registry.store import Registry
from tests.cli_runner import Keyward


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:////var/lib/keyward/registry.db", "/var/lib/keyward/registry.db"),
        ("sqlite:///relative.db", "relative.db"),
        ("sqlite:////srv/my registry/r.db", "/srv/my registry/r.db"),
        ("sqlite://", None),
        ("sqlite:///", None),
        ("sqlite:///:memory:", None),
        ("sqlite:////r.db?mode=ro", None),  # options: SQLAlchemy reads them, not us
        ("sqlite:////r%20x.db", None),  # escapes: likewise
        ("sqlite+pysqlite:////r.db", None),
        ("postgresql+psycopg://keyward@db/keyward", None),
        ("/var/lib/keyward/registry.db", None),  # resolve_url turns paths into URLs first
    ],
)
def test_only_plain_sqlite_urls_are_read_quickly(url: str, path: str | None) -> None:
    assert quickread.sqlite_file(url) == (Path(path) if path else None)


@pytest.fixture
def registry_kw(sqlite_url: str, tmp_path: Path) -> Keyward:
    kw = Keyward(sqlite_url, str(tmp_path / "no-inventory"))
    kw.ok("init")
    return kw


def test_people_are_exactly_the_orm_rows(registry_kw: Keyward, sqlite_url: str) -> None:
    kw = registry_kw
    kw.ok("person", "add", "zoe", "--name", "Zoë Ünicode", "--email", "zoe@example.com")
    kw.ok("person", "add", "bob", "--name", "Bob")
    kw.ok("person", "add", "alice", "--name", 'Alice "Al" Example')
    registry = Registry.open(sqlite_url)
    try:
        with registry.write("test") as tx:  # a status and a timestamp without microseconds
            bob = tx.session.exec(select(Person).where(Person.username == "bob")).one()
            bob.status = "offboarded"
            bob.changed_at = datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)
            tx.session.add(bob)
        with registry.read() as session:
            orm = [person_json(p) for p in session.exec(select(Person).order_by(Person.username))]
    finally:
        registry.dispose()
    quick = quickread.people(sqlite_url)
    assert quick is not None
    assert [person_json(p) for p in quick] == orm
    assert [p["username"] for p in orm] == ["alice", "bob", "zoe"]
    assert kw.ok("person", "list", "--json").json() == orm


def test_an_empty_registry_is_an_empty_list(registry_kw: Keyward, sqlite_url: str) -> None:
    assert quickread.people(sqlite_url) == []
    assert registry_kw.ok("person", "list", "--json").json() == []


def test_anything_unusual_steps_aside(
    registry_kw: Keyward, sqlite_url: str, tmp_path: Path
) -> None:
    """None means "ask the ORM": it then says what is wrong, as it always did."""
    path = quickread.sqlite_file(sqlite_url)
    assert path is not None
    missing = tmp_path / "missing.db"
    assert quickread.people(f"sqlite:///{missing}") is None
    assert not missing.exists()  # read-only: nothing created
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database\n" * 100)
    assert quickread.people(f"sqlite:///{garbage}") is None
    with sqlite3.connect(path) as conn:  # a registry of another keyward version
        conn.execute("UPDATE alembic_version SET version_num = '0006'")
    assert quickread.people(sqlite_url) is None
    result = registry_kw.fails("person", "list")
    assert result.code == 2
    assert "is at schema 0006" in result.err and "keyward init" in result.err
