"""Bulk storage of login events: the same stored values as the ORM, no duplicates, pairing."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from sqlmodel import select

from keyward.logins import LoginEvent
from keyward.registry.login_store import (
    LOGIN_TABLE,
    close_earlier_sessions,
    fresh_logins,
    insert_many,
    recent_failures,
)
from keyward.registry.models import LoginEvent as LoginRow
from keyward.registry.store import Registry

T0 = datetime(2026, 11, 23, 9, 12, 0, tzinfo=UTC)  # whole second: the format edge case
T1 = datetime(2026, 11, 23, 9, 12, 5, 123456, tzinfo=UTC)


def event(outcome: str, port: int, pos: str, at: datetime = T0) -> LoginEvent:
    return LoginEvent(
        "web-1",
        "deploy",
        at,
        outcome,
        "203.0.113.7",
        port,
        "SHA256:x",
        "alice",
        pos,  # type: ignore[arg-type]
    )


def test_bulk_rows_are_stored_exactly_as_the_orm_stores_them(db_url: str) -> None:
    registry, _, _ = Registry.initialise(db_url)
    values = {
        "host": "web-1",
        "account": "deploy",
        "at": T0,
        "outcome": "accepted",
        "addr": "203.0.113.7",
        "port": 51702,
        "fingerprint": "SHA256:x",
        "person": "alice",
        "ordinal": 0,
        "session_end": T1,
        "session_end_ordinal": 1,
        "collected_at": T1,
    }
    with registry.write("test") as tx:
        tx.session.add(LoginRow(pos="orm", **values))
        tx.session.flush()
        insert_many(tx.session.connection(), LOGIN_TABLE, [{**values, "pos": "bulk"}])
    with registry.read() as session:
        raw = (
            session.connection()
            .exec_driver_sql(
                "SELECT pos, at, session_end, collected_at FROM login_event ORDER BY id"
            )
            .all()
        )
        rows = session.exec(select(LoginRow).order_by(LoginRow.id)).all()  # type: ignore[arg-type]
    assert [r[0] for r in raw] == ["orm", "bulk"]
    assert raw[0][1:] == raw[1][1:]  # byte-for-byte the same timestamps in the database
    assert [(r.at, r.session_end, r.collected_at) for r in rows] == [(T0, T1, T1)] * 2


def test_fresh_logins_skip_stored_positions_and_pair_in_memory(db_url: str) -> None:
    registry, _, _ = Registry.initialise(db_url)
    with registry.write("test") as tx:
        connection = tx.session.connection()
        first = fresh_logins(connection, "web-1", [event("accepted", 1, "1:0")], T0)
        insert_many(connection, LOGIN_TABLE, first.rows)
    events = [
        event("accepted", 1, "1:0"),  # already stored
        event("accepted", 2, "1:100"),
        event("disconnected", 2, "1:200", T1),  # closes port 2, opened in this batch
        event("disconnected", 1, "1:300", T1),  # closes port 1, opened in the earlier batch
    ]
    with registry.write("test") as tx:
        connection = tx.session.connection()
        batch = fresh_logins(connection, "web-1", events, T1)
        assert [e.pos for e in batch.fresh] == ["1:100", "1:200", "1:300"]
        assert [e.port for e in batch.unpaired] == [1]
        close_earlier_sessions(connection, "web-1", batch.unpaired)
        insert_many(connection, LOGIN_TABLE, batch.rows)
    with registry.read() as session:
        accepted = session.exec(
            select(LoginRow).where(LoginRow.outcome == "accepted").order_by(LoginRow.port)  # type: ignore[arg-type]
        ).all()
    assert [(r.port, r.session_end) for r in accepted] == [(1, T1), (2, T1)]


def test_a_disconnect_closes_only_the_newest_open_session_on_its_port(db_url: str) -> None:
    registry, _, _ = Registry.initialise(db_url)
    earlier = T0 - timedelta(hours=1)
    with registry.write("test") as tx:
        connection = tx.session.connection()
        rows = fresh_logins(
            connection,
            "web-1",
            [event("accepted", 7, "1:0", earlier), event("accepted", 7, "2:0")],
            T0,
        ).rows
        insert_many(connection, LOGIN_TABLE, rows)
    with registry.write("test") as tx:
        close_earlier_sessions(
            tx.session.connection(), "web-1", [event("disconnected", 7, "2:50", T1)]
        )
    with registry.read() as session:
        ends = [r.session_end for r in session.exec(select(LoginRow).order_by(LoginRow.id))]  # type: ignore[arg-type]
    assert ends == [None, T1]


def test_where_an_event_came_from_is_kept_in_its_stored_position(db_url: str) -> None:
    """Failure mode believes only the journal: that must survive storage, while rows stored
    before the mark existed (and every file's) read back as a file's."""
    registry, _, _ = Registry.initialise(db_url)
    journal = dataclasses.replace(event("failed", 1, "s=ab;i=1"), source="journal")
    file = dataclasses.replace(event("failed", 2, "7:0"), source="file:/var/log/auth.log")
    with registry.write("test") as tx:
        connection = tx.session.connection()
        batch = fresh_logins(connection, "web-1", [journal, file], T0)
        insert_many(connection, LOGIN_TABLE, batch.rows)
        legacy = {**batch.rows[1], "pos": "s=ab;i=2", "port": 3}  # an old row: no mark
        insert_many(connection, LOGIN_TABLE, [legacy])
    with registry.write("test") as tx:
        connection = tx.session.connection()
        again = fresh_logins(connection, "web-1", [journal, file], T1)
        back = recent_failures(connection, T0 - timedelta(minutes=1))
    assert again.fresh == []  # the marked position still de-duplicates
    assert sorted((e.port, e.source, e.pos) for e in back) == [
        (1, "journal", "journal:s=ab;i=1"),
        (2, "file", "7:0"),
        (3, "file", "s=ab;i=2"),
    ]
