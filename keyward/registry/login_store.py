"""Storing collected login events: no duplicates, sessions paired, at bulk speed.

A fleet produces many login lines (the target: 100 hosts x 1,000 new lines added to a
reconcile in under 2 seconds), so this module works in batches: one query per host
for positions already stored, sessions paired in memory, and one multi-row insert
whose parameters skip SQLAlchemy's per-row processing (each distinct timestamp is
converted once). Everything runs inside the caller's registry transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, bindparam, select, update

from keyward.logins import LoginEvent, Session
from keyward.registry.bulk import insert_many
from keyward.registry.models import LoginEvent as LoginRow
from keyward.registry.models import LoginSource

CHUNK = 1000  # values per IN (...) list: well below every backend's bound-parameter limit
LOGIN_TABLE: Table = LoginRow.__table__  # type: ignore[attr-defined]
SOURCE_TABLE: Table = LoginSource.__table__  # type: ignore[attr-defined]
_T = TypeVar("_T")


def chunks(items: Sequence[_T], size: int = CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class HostLogins:
    """One host's events that were not stored before, as rows ready to insert."""

    host: str
    fresh: list[LoginEvent] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    unpaired: list[LoginEvent] = field(default_factory=list)  # disconnects of older sessions


def session_of(row: dict[str, Any]) -> Session:
    """The session an accepted login row (as built by :func:`fresh_logins`) opened."""
    return Session(
        row["host"],
        row["account"],
        row["person"],
        row["fingerprint"],
        row["addr"],
        row["port"],
        row["at"],
        row["session_end"],
        row["ordinal"],
        row["session_end_ordinal"] or 0,
    )


# login_event has no column for where an event was read from, and a new one would need a
# migration; the position column already names the source's own position, so a journal
# event's position is stored as "journal:<cursor>". Only rows marked so count as the
# journal's (failure mode reads nothing else); rows of files, and rows stored before this
# mark existed, read back as "file".
JOURNAL_POS = "journal:"


def stored_pos(event: LoginEvent) -> str:
    """The ``pos`` value stored for ``event``: unique per host, and marked if from the journal."""
    pos = event.pos or f"{event.at.isoformat()}:{event.order}"
    return JOURNAL_POS + pos if event.from_journal else pos


def source_of_pos(pos: str) -> str:
    """``journal`` or ``file``: where a stored row's event was read from (see ``stored_pos``)."""
    return "journal" if pos.startswith(JOURNAL_POS) else "file"


def fresh_logins(
    connection: Connection, host: str, events: list[LoginEvent], now: datetime
) -> HostLogins:
    """Drop events already stored (by position); pair accepts and disconnects in memory."""
    positions = [stored_pos(e) for e in events if e.pos]
    existing: set[str] = set()
    for chunk in chunks(positions):
        existing.update(
            connection.execute(
                select(LOGIN_TABLE.c.pos).where(
                    LOGIN_TABLE.c.host == host, LOGIN_TABLE.c.pos.in_(chunk)
                )
            ).scalars()
        )
    out = HostLogins(host)
    opened: dict[tuple[str, int], dict[str, Any]] = {}
    for event in events:
        pos = stored_pos(event)
        if pos in existing:
            continue
        existing.add(pos)
        out.fresh.append(event)
        if event.outcome == "disconnected":
            open_row = opened.pop((event.addr, event.port), None)
            if open_row is None:
                out.unpaired.append(event)
            else:
                open_row["session_end"] = event.at
                open_row["session_end_ordinal"] = event.order
        row = {
            "host": host,
            "account": event.account,
            "at": event.at,
            "outcome": event.outcome,
            "addr": event.addr,
            "port": event.port,
            "fingerprint": event.fingerprint,
            "person": event.person,
            "pos": pos,
            "ordinal": event.order,
            "session_end": None,
            "session_end_ordinal": None,
            "collected_at": now,
        }
        if event.outcome == "accepted":
            opened[(event.addr, event.port)] = row
        out.rows.append(row)
    return out


def close_earlier_sessions(
    connection: Connection, host: str, disconnects: list[LoginEvent]
) -> None:
    """End sessions accepted in an earlier batch: the newest open one per address and port."""
    if not disconnects:
        return
    t = LOGIN_TABLE.c
    open_ids: dict[tuple[str, int], list[int]] = {}
    for chunk in chunks(sorted({e.addr for e in disconnects})):
        for row_id, addr, port in connection.execute(
            select(t.id, t.addr, t.port)
            .where(
                t.host == host,
                t.outcome == "accepted",
                t.session_end.is_(None),
                t.addr.in_(chunk),
            )
            .order_by(t.id.desc())
        ):
            open_ids.setdefault((addr, port), []).append(row_id)
    updates = []
    for event in disconnects:
        ids = open_ids.get((event.addr, event.port))
        if ids:
            updates.append({"b_id": ids.pop(0), "b_end": event.at, "b_order": event.order})
    if updates:
        connection.execute(
            update(LOGIN_TABLE)
            .where(t.id == bindparam("b_id"))
            .values(session_end=bindparam("b_end"), session_end_ordinal=bindparam("b_order")),
            updates,
        )


def known_sources(connection: Connection, fingerprints: Sequence[str]) -> dict[str, set[str]]:
    """The addresses each key has logged in from before."""
    known: dict[str, set[str]] = {}
    for chunk in chunks(sorted(fingerprints)):
        for fingerprint, addr in connection.execute(
            select(SOURCE_TABLE.c.fingerprint, SOURCE_TABLE.c.addr).where(
                SOURCE_TABLE.c.fingerprint.in_(chunk)
            )
        ):
            known.setdefault(fingerprint, set()).add(addr)
    return known


def remember_sources(
    connection: Connection, accepted: list[LoginEvent], known: dict[str, set[str]]
) -> None:
    """Add new (key, address) pairs to ``login_source``; move ``last_seen`` of known ones."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for e in accepted:
        if e.fingerprint is None:
            continue
        entry = seen.get((e.fingerprint, e.addr))
        if entry is None:
            seen[(e.fingerprint, e.addr)] = {
                "fingerprint": e.fingerprint,
                "addr": e.addr,
                "person": e.person,
                "first_seen": e.at,
                "last_seen": e.at,
            }
        else:
            entry["first_seen"] = min(entry["first_seen"], e.at)
            entry["last_seen"] = max(entry["last_seen"], e.at)
    added = [v for (fp, addr), v in seen.items() if addr not in known.get(fp, ())]
    again = [
        {"b_fp": fp, "b_addr": addr, "b_last": v["last_seen"]}
        for (fp, addr), v in seen.items()
        if addr in known.get(fp, ())
    ]
    insert_many(connection, SOURCE_TABLE, added)
    if again:
        t = SOURCE_TABLE.c
        connection.execute(
            update(SOURCE_TABLE)
            .where(
                t.fingerprint == bindparam("b_fp"),
                t.addr == bindparam("b_addr"),
                t.last_seen < bindparam("b_last"),
            )
            .values(last_seen=bindparam("b_last")),
            again,
        )


def recent_sessions(
    connection: Connection, people: Sequence[str], since: datetime, earliest_new: datetime
) -> list[Session]:
    """Stored sessions of ``people`` that began after ``since`` and were still open at
    ``earliest_new`` (or never closed): the only ones a new session can overlap."""
    t = LOGIN_TABLE.c
    out: list[Session] = []
    for chunk in chunks(sorted(people)):
        for row in connection.execute(
            select(
                t.host,
                t.account,
                t.person,
                t.fingerprint,
                t.addr,
                t.port,
                t.at,
                t.session_end,
                t.ordinal,
                t.session_end_ordinal,
            ).where(
                t.outcome == "accepted",
                t.at >= since,
                (t.session_end.is_(None)) | (t.session_end >= earliest_new),
                t.person.in_(chunk),
            )
        ):
            out.append(
                Session(
                    row.host,
                    row.account,
                    row.person,
                    row.fingerprint,
                    row.addr,
                    row.port,
                    row.at,
                    row.session_end,
                    row.ordinal,
                    row.session_end_ordinal or 0,
                )
            )
    return out


def recent_failures(connection: Connection, since: datetime) -> list[LoginEvent]:
    t = LOGIN_TABLE.c
    return [
        LoginEvent(
            r.host,
            r.account,
            r.at,
            r.outcome,
            r.addr,
            r.port,
            r.fingerprint,
            r.person,
            r.pos,
            source=source_of_pos(r.pos),
        )
        for r in connection.execute(
            select(
                t.host, t.account, t.at, t.outcome, t.addr, t.port, t.fingerprint, t.person, t.pos
            ).where(t.outcome.in_(["failed", "invalid_user"]), t.at >= since)
        )
    ]
