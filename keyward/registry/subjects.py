"""What an audit event is about: a subject that carries its kind.

A person, a host and a role may share a name (``person add h1`` next to an
inventory host ``h1``), so a bare name does not say whose event it is.  Every
event written now stores its subject as ``kind:name`` (``person:alice``,
``host:web-1``, ``role:devops``, ``case:7``, ``backup:<file>``,
``registry:sqlite``, ``fleet:*``, ``directory:<url>``); the text is covered by
the event hash like before, so the kind is as tamper-evident as the name.

Events written before this change keep their bare name (the chain hashes cover
it, so it cannot be rewritten).  Their kind follows from the action, which the
hash also covers: ``person.*``, ``key.*``, ``access.*``, ``role.grant``,
``role.revoke`` and ``audit.redact`` were about a person, ``host.*`` and
``offboard.host-confirmed`` about a host, and so on (``LEGACY_KINDS``).  The one
legacy action whose subject could be either is ``alert.raise`` (the alert's
person, else its host, else ``fleet``): its kind is read from the alert row the
event names (``alert_id``).

Telling the two forms apart is exact: usernames, host names, role names and
the other legacy subjects cannot contain ``:``, so a legacy subject never looks
typed.  The exception is a backup file name, which may; for ``backup.*``
actions only a ``backup:`` prefix counts as typed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from sqlalchemy import ColumnElement
from sqlmodel import Session, col, select

from keyward.registry.models import Alert, AuditEvent

SubjectKind = Literal["person", "host", "role", "case", "backup", "registry", "fleet", "directory"]
SUBJECT_KINDS: frozenset[str] = frozenset(get_args(SubjectKind))
MAX_SUBJECT = 200  # the audit_event.subject column

LEGACY_KINDS: dict[str, SubjectKind] = {
    "person.*": "person",
    "key.*": "person",
    "access.*": "person",
    "role.grant": "person",
    "role.revoke": "person",
    "role.add": "role",
    "audit.redact": "person",
    "host.*": "host",
    "offboard.host-confirmed": "host",
    "offboard.confirmed": "case",
    "backup.*": "backup",
    "registry.*": "registry",
}
"""The kind of a pre-typed (bare) subject, by action or ``family.*``."""

AMBIGUOUS_ACTION = "alert.raise"


@dataclass(frozen=True)
class Subject:
    """An audit subject: its kind and its name; stored as ``kind:name``."""

    kind: SubjectKind
    name: str

    def __post_init__(self) -> None:
        if self.kind not in SUBJECT_KINDS or not self.name:
            raise ValueError(f"bad audit subject {self.kind!r}:{self.name!r}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"[:MAX_SUBJECT]

    @classmethod
    def person(cls, username: str) -> Subject:
        return cls("person", username)

    @classmethod
    def host(cls, name: str) -> Subject:
        return cls("host", name)

    @classmethod
    def role(cls, name: str) -> Subject:
        return cls("role", name)

    @classmethod
    def case(cls, case_id: int | None) -> Subject:
        return cls("case", str(case_id))

    @classmethod
    def backup(cls, name: str) -> Subject:
        return cls("backup", name)


FLEET = Subject("fleet", "*")
ALL_BACKUPS = Subject("backup", "*")


def alert_subject(person: str | None, host: str | None) -> Subject:
    """An alert is about its person if it has one, else its host, else the whole fleet."""
    if person:
        return Subject.person(person)
    if host:
        return Subject.host(host)
    return FLEET


def legacy_kind(action: str) -> SubjectKind | None:
    """The kind a bare subject of ``action`` had before subjects were typed."""
    family = action.split(".", 1)[0]
    return LEGACY_KINDS.get(action) or LEGACY_KINDS.get(f"{family}.*")


def parse_subject(action: str, subject: str) -> Subject | None:
    """The subject of a stored event; None for a legacy ``alert.raise`` (see ``resolve``)."""
    kind, sep, name = subject.partition(":")
    legacy = legacy_kind(action)
    typed = sep and name and kind in SUBJECT_KINDS
    if typed and not (legacy == "backup" and kind != "backup"):
        return Subject(kind, name)  # type: ignore[arg-type]  # checked: kind in SUBJECT_KINDS
    if legacy is None or not subject:
        return None
    return Subject(legacy, subject)


def _alert_id(details: str) -> int | None:
    try:
        value = json.loads(details).get("alert_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def resolve(session: Session, events: Sequence[AuditEvent]) -> dict[int, Subject | None]:
    """Each event's subject by ``seq``, reading the alert rows legacy ``alert.raise`` names.

    None only where the kind cannot be known: a legacy alert event whose details
    were redacted or whose alert row is gone.
    """
    out: dict[int, Subject | None] = {}
    pending: dict[int, AuditEvent] = {}
    for event in events:
        out[event.seq] = parsed = parse_subject(event.action, event.subject)
        if parsed is None and event.action == AMBIGUOUS_ACTION:
            alert_id = _alert_id(event.details)
            if alert_id is not None:
                pending[alert_id] = event
    ids = sorted(pending)
    for start in range(0, len(ids), 500):
        for alert in session.exec(select(Alert).where(col(Alert.id).in_(ids[start : start + 500]))):
            event = pending[alert.id or 0]
            if alert.person and alert.person == event.subject:
                out[event.seq] = Subject.person(event.subject)
            elif not alert.person and alert.host and alert.host == event.subject:
                out[event.seq] = Subject.host(event.subject)
            elif not alert.person and not alert.host and event.subject == "fleet":
                out[event.seq] = FLEET
    return out


def stored_forms(subject: Subject) -> list[str]:
    """The subject texts an event about ``subject`` may carry: typed, and legacy bare name."""
    return [str(subject), subject.name]


def matches(subject: Subject) -> ColumnElement[bool]:
    """A SQL pre-filter for events about ``subject``; confirm each row with ``about``."""
    return col(AuditEvent.subject).in_(stored_forms(subject))


def about(session: Session, events: Iterable[AuditEvent], subject: Subject) -> list[AuditEvent]:
    """The events (already pre-filtered by ``matches``) really about ``subject``, in order."""
    rows = list(events)
    kinds = resolve(session, rows)
    return [e for e in rows if kinds.get(e.seq) == subject]
