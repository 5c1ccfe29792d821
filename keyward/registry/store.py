"""The registry handle and its transactions.

Every change goes through ``Registry.write(actor)``: one database
transaction that holds the audit-chain head, so the change and its audit
events commit together or not at all, and concurrent administrators are
serialised (``BEGIN IMMEDIATE`` on SQLite, ``SELECT ... FOR UPDATE`` on the
head row on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlmodel import Session, select

from keyward.clock import Clock, system_clock
from keyward.errors import KeywardError, RegistryError, RegistryUnavailable
from keyward.registry import schema
from keyward.registry.audit import details_digest, details_text, event_hash
from keyward.registry.bulk import insert_many
from keyward.registry.db import describe, make_engine, secure_sqlite_file
from keyward.registry.models import AuditEvent, AuditHead
from keyward.registry.subjects import Subject

NOTIFY_CHANNEL = "keyward_registry"
AUDIT_TABLE: Table = AuditEvent.__table__  # type: ignore[attr-defined]


class WriteTx:
    """One registry transaction: a session, who acts, one ``now``, and the audit head."""

    def __init__(
        self,
        session: Session,
        actor: str,
        now: datetime,
        head: AuditHead,
        recorded_as: str | None = None,
    ) -> None:
        self.session = session
        self.actor = actor
        """The person the registry's rules apply to (the requester, who may not approve
        their own request or grant themselves a role) and the ``*_by`` columns name."""
        self.recorded_as = recorded_as or actor
        """The actor of the audit events: ``actor``, or for the CLI's direct database
        writes ``local:<unix user>`` with the name claimed (``Registry.recorded_as``)."""
        self.now = now
        self._head = head
        self.events: list[AuditEvent] = []
        self.bulk_events = 0  # appended by audit_many, not in ``events``

    def _link(
        self, seq: int, prev: str, action: str, about: Subject, details: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The stored fields of chain event ``seq`` that follows the event hashed ``prev``.

        The subject is stored (and hashed) as ``kind:name``: a typed ``Subject`` is
        required so that no new event is ambiguous about whose it is.
        """
        subject = str(about)
        text_ = details_text(details)
        digest = details_digest(text_)
        return {
            "seq": seq,
            "at": self.now,
            "actor": self.recorded_as,
            "action": action,
            "subject": subject,
            "details": text_,
            "details_digest": digest,
            "prev_hash": prev,
            "hash": event_hash(
                seq=seq,
                at=self.now,
                actor=self.recorded_as,
                action=action,
                subject=subject,
                digest=digest,
                prev_hash=prev,
            ),
        }

    def audit(self, action: str, subject: Subject, details: Mapping[str, Any]) -> AuditEvent:
        """Append one event to the chain, in this transaction."""
        event = AuditEvent(
            **self._link(self._head.seq + 1, self._head.hash, action, subject, details)
        )
        self.session.add(event)
        self._head.seq = event.seq
        self._head.hash = event.hash
        self.session.add(self._head)
        self.events.append(event)
        return event

    def audit_many(self, events: Iterable[tuple[str, Subject, Mapping[str, Any]]]) -> int:
        """Append (action, subject, details) events to the chain in order, in one insert.

        The same chain as that many :meth:`audit` calls, without building an ORM object per
        event: a first fill of a fleet writes one event per key per file. Returns the count.
        """
        rows: list[dict[str, Any]] = []
        seq, prev = self._head.seq, self._head.hash
        for action, subject, details in events:
            seq += 1
            row = self._link(seq, prev, action, subject, details)
            row["redacted"] = False
            rows.append(row)
            prev = row["hash"]
        if not rows:
            return 0
        insert_many(self.session.connection(), AUDIT_TABLE, rows)
        self._head.seq, self._head.hash = seq, prev
        self.session.add(self._head)
        self.bulk_events += len(rows)
        return len(rows)


def _translate(exc: DBAPIError, where: str) -> KeywardError:
    message = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    if isinstance(exc, IntegrityError):
        return RegistryError(
            "the change conflicts with another administrator's change; nothing was changed, "
            "try again"
        )
    if "locked" in message.lower():
        return RegistryUnavailable(f"the registry {where} is locked by another process ({message})")
    if "readonly" in message.lower() or "read-only" in message.lower():
        return RegistryUnavailable(f"the registry {where} is read-only ({message})")
    return RegistryUnavailable(f"cannot use the registry {where}: {message}")


class Registry:
    """An open registry: engine, where it is, and the clock its records use."""

    def __init__(self, engine: Engine, url: str, clock: Clock = system_clock) -> None:
        self.engine = engine
        self.url = url
        self.where = describe(url)
        self.clock = clock
        self.recorded_as: str | None = None
        """When set, the actor every audit event of ``write`` records (see ``WriteTx``)."""

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @classmethod
    def open(cls, url: str, clock: Clock = system_clock) -> Registry:
        """Open an existing registry at the current schema, or explain what to do."""
        engine = make_engine(url)
        registry = cls(engine, url, clock)
        try:
            schema.require_current(engine, registry.where)
        except OperationalError as exc:
            raise _translate(exc, registry.where) from None
        return registry

    @classmethod
    def initialise(cls, url: str, clock: Clock = system_clock) -> tuple[Registry, str | None, str]:
        """Create the registry, or upgrade an older one; idempotent."""
        engine = make_engine(url, create_dir=True)
        registry = cls(engine, url, clock)
        try:
            before, after = schema.upgrade(engine)
        except OperationalError as exc:
            raise _translate(exc, registry.where) from None
        secure_sqlite_file(url)
        return registry, before, after

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for queries; nothing is committed."""
        try:
            with Session(self.engine) as session:
                yield session
        except OperationalError as exc:
            raise _translate(exc, self.where) from None

    @contextmanager
    def write(self, actor: str) -> Iterator[WriteTx]:
        """A transaction that commits the change and its audit events together."""
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                query = select(AuditHead).where(AuditHead.id == 1)
                if self.backend == "postgresql":
                    query = query.with_for_update()
                head = session.exec(query).one()
                tx = WriteTx(session, actor, self.clock(), head, self.recorded_as)
                yield tx
                if (tx.events or tx.bulk_events) and self.backend == "postgresql":
                    session.execute(
                        text("SELECT pg_notify(:channel, :payload)"),
                        {"channel": NOTIFY_CHANNEL, "payload": str(head.seq)},
                    )
        except DBAPIError as exc:
            raise _translate(exc, self.where) from None

    def head(self) -> tuple[int, str]:
        """The chain head: a cheap marker that changes with every registry write."""
        with self.read() as session:
            head = session.exec(select(AuditHead).where(AuditHead.id == 1)).one()
            return head.seq, head.hash
