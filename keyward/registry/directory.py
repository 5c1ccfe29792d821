"""The registry side of a directory sync: what it reads, what it writes, what it remembers.

A sync keeps no table of its own: the audit trail is its memory. Which person
belongs to which directory entry is the DN of their latest
``directory.person-linked`` or ``directory.person-created`` event; the last
sync (time, outcome, counts, base DN) is the latest ``directory.sync`` event.
Every change a sync makes is the ordinary registry operation (``person.add``,
``person.edit``, ``role.grant``, ``person.offboard``, ...) followed by a
``directory.*`` event naming the entry's DN, so ``audit log`` shows both what
changed and which directory entry caused it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, or_, select

from keyward.directory.model import Offboard, RegistryPerson, SyncPlan
from keyward.registry import lifecycle, ops
from keyward.registry.models import Alert, AuditEvent, Membership, OffboardingCase, Person, Role
from keyward.registry.store import WriteTx
from keyward.registry.subjects import FLEET, Subject

SYNC = "directory.sync"
LINKED = "directory.person-linked"
CREATED = "directory.person-created"
UPDATED = "directory.person-updated"
OFFBOARDED = "directory.person-offboarded"
ROLE_GRANTED = "directory.role-granted"
ROLE_REVOKED = "directory.role-revoked"
ALERT_KIND = "directory_guard"


def subject(url: str) -> Subject:
    """The subject of ``directory.sync`` events: the directory, by its URL."""
    return Subject("directory", url)


# -- reading --------------------------------------------------------------------------


def load_people(session: Session, roles: Iterable[str], now: datetime) -> list[RegistryPerson]:
    """Every person, with the DN a sync linked them to and which of ``roles`` they hold."""
    links: dict[str, str] = {}
    for subject_text, details in session.exec(
        select(AuditEvent.subject, AuditEvent.details)
        .where(col(AuditEvent.action).in_([LINKED, CREATED]))
        .order_by(col(AuditEvent.seq))
    ):
        kind, _, username = subject_text.partition(":")
        dn = json.loads(details).get("dn")
        if kind == "person" and isinstance(dn, str):
            links[username] = dn
    held: dict[int, set[str]] = {}
    wanted = list(roles)
    if wanted:
        for person_id, role_name in session.exec(
            select(Membership.person_id, Role.name)
            .join(Role, col(Role.id) == col(Membership.role_id))
            .where(
                col(Role.name).in_(wanted),
                col(Membership.ended_at).is_(None),
                or_(col(Membership.until).is_(None), col(Membership.until) > now),
            )
        ):
            held.setdefault(person_id, set()).add(role_name)
    return [
        RegistryPerson(
            username=person.username,
            full_name=person.full_name,
            email=person.email,
            status=person.status,
            dn=links.get(person.username),
            roles=frozenset(held.get(person.id or 0, ())),
        )
        for person in session.exec(select(Person))
    ]


def last_sync(session: Session) -> dict[str, Any] | None:
    """The latest ``directory.sync`` event's details, with ``at`` and ``actor``; or None.

    Each event carries ``applied_base_dn`` forward (the base DN of the latest sync
    that changed the registry), so the guard needs only this one event.
    """
    event = session.exec(
        select(AuditEvent).where(AuditEvent.action == SYNC).order_by(col(AuditEvent.seq).desc())
    ).first()
    if event is None:
        return None
    details: dict[str, Any] = json.loads(event.details)
    return {"at": event.at.strftime("%Y-%m-%dT%H:%M:%SZ"), "actor": event.actor, **details}


# -- writing --------------------------------------------------------------------------


def apply_people(tx: WriteTx, plan: SyncPlan) -> list[str]:
    """Links, creations, name/e-mail updates and role changes; returns what was skipped."""
    skipped: list[str] = []
    tx.audit_many((LINKED, Subject.person(link.username), {"dn": link.dn}) for link in plan.links)
    for create in plan.creates:
        entry = create.entry
        person = ops.add_person(tx, entry.username, entry.name or entry.username, entry.email)
        tx.audit(
            CREATED,
            Subject.person(entry.username),
            {"dn": entry.dn, "full_name": person.full_name, "email": entry.email},
        )
    for update in plan.updates:
        person = ops.find_person(tx.session, update.username)
        if person.full_name == lifecycle.PURGED_NAME:
            continue
        ops.edit_person(tx, update.username, update.full_name, update.email)
        tx.audit(
            UPDATED, Subject.person(update.username), {"dn": update.dn, "changes": update.changes}
        )
    existing = {role.name for role in tx.session.exec(select(Role))}
    for change in plan.roles:
        if change.role not in existing:
            skipped.append(f"role {change.role!r} is not in the registry ('keyward role add')")
            continue
        if change.username == tx.actor:
            skipped.append(f"{change.username}: a person cannot change their own roles")
            continue
        member = "member" if change.grant else "no longer a member"
        reason = f"directory: {member} of {change.group}"[:500]  # the reason column
        if change.grant:
            ops.grant_role(tx, change.role, change.username, reason, None)
        else:
            ops.revoke_role(tx, change.role, change.username, reason)
        tx.audit(
            ROLE_GRANTED if change.grant else ROLE_REVOKED,
            Subject.person(change.username),
            {"dn": change.dn, "role": change.role, "group": change.group},
        )
    return skipped


def offboard_people(
    tx: WriteTx,
    leavers: Sequence[Offboard],
    targets: Mapping[str, list[tuple[str, str, str, bool]]],
) -> list[OffboardingCase]:
    """Offboard each leaver exactly as ``keyward offboard`` does, naming the entry's DN."""
    cases = []
    for leaver in leavers:
        case = lifecycle.offboard(tx, leaver.username, leaver.reason, targets[leaver.username])
        tx.audit(
            OFFBOARDED,
            Subject.person(leaver.username),
            {"dn": leaver.dn, "reason": leaver.reason, "case_id": case.id},
        )
        cases.append(case)
    return cases


def record_sync(tx: WriteTx, url: str, details: Mapping[str, Any]) -> None:
    """The sync's own event: what it read, its outcome, and what it changed."""
    tx.audit(SYNC, subject(url), details)


def raise_alert(tx: WriteTx, summary: str, details: Mapping[str, Any]) -> int:
    """An open alert (and its ``alert.raise`` event) for a sync the guard stopped."""
    row = Alert(
        kind=ALERT_KIND,
        summary=summary,
        details=json.dumps(dict(details), sort_keys=True),
        created_at=tx.now,
    )
    tx.session.add(row)
    tx.session.flush()
    tx.audit("alert.raise", FLEET, {"alert_id": row.id, "kind": ALERT_KIND, "summary": summary})
    return row.id or 0
