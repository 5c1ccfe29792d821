"""Who is told: the approvers of a role, a requester, a key's owner (from the registry)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlmodel import Session, col, select

from keyward.clock import as_utc
from keyward.notify.message import Recipient
from keyward.registry.models import Membership, Person, Role


def recipient(person: Person) -> Recipient:
    return Recipient(person.username, person.email)


def approvers_of(
    session: Session,
    approvers: Mapping[str, tuple[str, ...]],
    role: str,
    now: datetime,
    exclude: str | None = None,
) -> tuple[Recipient, ...]:
    """The active people who may decide ``role``'s requests (``[server.approvers]``),
    as ``keyward.server.authz`` decides it: ``person:NAME``, or holding ``role:NAME``
    through an active grant. ``exclude`` (the requester) is never one of them."""
    entries = approvers.get(role, ())
    people = {e.partition(":")[2] for e in entries if e.startswith("person:")}
    roles = {e.partition(":")[2] for e in entries if e.startswith("role:")}
    if roles:
        rows = session.exec(
            select(Person.username, Membership.until)
            .join(Membership, col(Membership.person_id) == col(Person.id))
            .join(Role, col(Role.id) == col(Membership.role_id))
            .where(col(Role.name).in_(sorted(roles)), col(Membership.ended_at).is_(None))
        ).all()
        people |= {name for name, until in rows if until is None or as_utc(until) > now}
    people.discard(exclude or "")
    if not people:
        return ()
    found = session.exec(
        select(Person)
        .where(col(Person.username).in_(sorted(people)), Person.status == "active")
        .order_by(col(Person.username))
    ).all()
    return tuple(recipient(p) for p in found)
