"""Which daemons are running against one PostgreSQL registry: a row each, and a heartbeat.

Every daemon writes its row (``daemon_member``) when it starts and every
:data:`HEARTBEAT_EVERY` seconds after; a member is live while its last heartbeat is less
than :data:`LIVE_WINDOW` seconds old. Both times are the database's
(``clock_timestamp()``), never a daemon's own clock: one daemon whose clock is off by
minutes neither looks dead to the others nor sees them as dead. The database server's
clock is the one clock of the fleet.

The daemons also compute expiries by the database's clock (:class:`DbClock`, corrected at
every heartbeat): two daemons whose clocks disagree would otherwise remove an expiring
key from their hosts minutes apart, or one of them keep pushing it.

A daemon that stops cleanly marks its row stopped, so the others take its hosts at their
next heartbeat instead of waiting out the window. Rows of daemons gone for a day are
deleted by the survivors' heartbeats.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from keyward.clock import Clock

HEARTBEAT_EVERY = 2.0  # seconds between heartbeats (and lease renewals)
LIVE_WINDOW = 10.0  # seconds without a heartbeat before a member counts as gone
FORGET_AFTER = 86400.0  # seconds after which a gone member's row is deleted


def new_member_id() -> str:
    """``hostname:pid:random``: unique even for two containers that both run as pid 1."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Member:
    """One daemon's row, with its heartbeat's age by the database's clock."""

    id: str
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    age: float  # seconds since the last heartbeat, by the database's clock
    live: bool


_UPSERT = text(
    "INSERT INTO daemon_member (id, hostname, pid, started_at, heartbeat_at, stopped_at) "
    "VALUES (:id, :hostname, :pid, clock_timestamp(), clock_timestamp(), NULL) "
    "ON CONFLICT (id) DO UPDATE SET heartbeat_at = clock_timestamp(), stopped_at = NULL"
)
_LIVE = text(
    "SELECT id FROM daemon_member WHERE stopped_at IS NULL "
    "AND heartbeat_at > clock_timestamp() - make_interval(secs => :window) ORDER BY id"
)
_FORGET = text(
    "DELETE FROM daemon_member "
    "WHERE heartbeat_at < clock_timestamp() - make_interval(secs => :forget)"
)
_NOW = text("SELECT clock_timestamp()")
_LEAVE = text("UPDATE daemon_member SET stopped_at = clock_timestamp() WHERE id = :id")
_ALL = text(
    "SELECT id, hostname, pid, started_at, heartbeat_at, stopped_at, "
    "EXTRACT(EPOCH FROM clock_timestamp() - heartbeat_at) FROM daemon_member ORDER BY id"
)


class Membership:
    """This daemon's row: heartbeats, and the live members as the database sees them."""

    def __init__(
        self,
        engine: Any,
        member_id: str,
        live_window: float = LIVE_WINDOW,
        clock: DbClock | None = None,
    ) -> None:
        self.engine = engine
        self.id = member_id
        self.live_window = live_window
        self.clock = clock

    def beat(self) -> list[str]:
        """Write the heartbeat (creating the row if needed); the live members, this one too.

        Also sets the :class:`DbClock`'s offset, from the database's time at the middle of
        the round trip.
        """
        with self.engine.begin() as conn:
            if self.clock is not None:
                sent = time.monotonic()
                local = self.clock.base()
                db_now = conn.execute(_NOW).scalar_one()
                half = timedelta(seconds=(time.monotonic() - sent) / 2)
                self.clock.offset = db_now - (local + half)
            conn.execute(
                _UPSERT,
                {"id": self.id, "hostname": socket.gethostname()[:255], "pid": os.getpid()},
            )
            conn.execute(_FORGET, {"forget": FORGET_AFTER})
            live = [str(row[0]) for row in conn.execute(_LIVE, {"window": self.live_window})]
        return live

    def leave(self) -> None:
        """Mark this daemon stopped, so the others need not wait out the window."""
        with self.engine.begin() as conn:
            conn.execute(_LEAVE, {"id": self.id})


class DbClock:
    """A clock that reads the local one and adds how far it is off the database's.

    Until the first heartbeat the offset is zero (the local clock).
    """

    def __init__(self, base: Clock) -> None:
        self.base = base
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return self.base() + self.offset


def members(conn: Any, live_window: float = LIVE_WINDOW) -> list[Member]:
    """Every member row (``keyward status``), live or not, by the database's clock."""
    out = []
    for row in conn.execute(_ALL):
        age = float(row[6])
        out.append(
            Member(
                id=str(row[0]),
                hostname=str(row[1]),
                pid=int(row[2]),
                started_at=row[3],
                heartbeat_at=row[4],
                stopped_at=row[5],
                age=age,
                live=row[5] is None and age < live_window,
            )
        )
    return out
