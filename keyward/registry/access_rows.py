"""Access requests as the rows ``keyward access list`` prints and the server returns.

One shape for both, so ``keyward access`` prints the same whether it reads the
database itself or asks ``keyward server``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from keyward.registry.models import AccessRequest, Person, Role


def _ts(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def request_json(a: AccessRequest, p: Person, r: Role) -> dict[str, Any]:
    return {
        "id": a.id,
        "person": p.username,
        "role": r.name,
        "environment": a.environment,
        "duration_seconds": a.duration_seconds,
        "reason": a.reason,
        "requested_at": _ts(a.requested_at),
        "status": a.status,
        "decided_by": a.decided_by,
        "decided_at": _ts(a.decided_at),
        "until": _ts(a.until),
        "ended_at": _ts(a.ended_at),
    }


def list_requests(
    session: Session, now: datetime, only_open: bool, person: str | None = None
) -> list[dict[str, Any]]:
    """Every request (or ``person``'s only), oldest first; ``only_open``: pending or in force."""
    query = (
        select(AccessRequest, Person, Role)
        .join(Person, col(Person.id) == col(AccessRequest.person_id))
        .join(Role, col(Role.id) == col(AccessRequest.role_id))
        .order_by(col(AccessRequest.id))
    )
    if person is not None:
        query = query.where(Person.username == person)
    return [
        request_json(a, p, r)
        for a, p, r in session.exec(query)
        if not only_open
        or a.status == "pending"
        or (a.status == "approved" and a.ended_at is None and a.until and a.until > now)
    ]
