"""The registry side of SCIM provisioning: the stored resources and what they do to people.

An identity provider owns its SCIM documents; keyward keeps each one as sent
(``scim_resource``) and acts on four facts of a user: its username, name, e-mail and
``active``.  Every change to a person is the ordinary registry operation
(``person.add``, ``person.edit``, ``person.offboard``, ``key.revoke``, ...) followed by
a ``scim.*`` event naming the SCIM id, so ``audit log`` shows both what changed and
which SCIM resource caused it:

- ``scim.person-created`` / ``scim.person-linked``: an active user became a person,
  or was matched to the active person of the same username;
- ``scim.person-updated``: a changed name or e-mail (old and new values);
- ``scim.person-offboarded``: ``active: false`` or a deleted user offboarded the
  linked person (with the case id), exactly as ``keyward offboard`` would.

**The guard.** Each SCIM request changes one user, so no single request is a mass
accident; a broken identity provider (a wrong assignment, a deleted group, a
mis-set attribute mapping) shows up as a stream of deactivations instead.  So at
most ``mass_offboard_share`` of the people (at least one) may be offboarded over
SCIM within ``mass_offboard_window``; the request over it is refused (nothing
changes), raises a ``scim_guard`` alert, and while that alert is open every SCIM
offboarding is refused.  ``keyward alerts clear ID`` lets them through again, the
window counting from the clear.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, func, or_, select

from keyward.errors import KeywardError
from keyward.registry import lifecycle, ops
from keyward.registry.models import Alert, AuditEvent, Membership, Person, Role, ScimResource
from keyward.registry.store import WriteTx
from keyward.registry.subjects import FLEET, Subject

ACTOR = "keyward-scim"
CREATED = "scim.person-created"
LINKED = "scim.person-linked"
UPDATED = "scim.person-updated"
OFFBOARDED = "scim.person-offboarded"
ROLE_GRANTED = "scim.role-granted"
ROLE_REVOKED = "scim.role-revoked"
ALERT_KIND = "scim_guard"

CaseTarget = tuple[str, str, str, bool]


@dataclass(frozen=True)
class UserFacts:
    """What keyward reads from a SCIM user; ``username`` None when it is no valid one."""

    user_name: str
    username: str | None
    full_name: str | None
    email: str | None
    active: bool


@dataclass
class Effect:
    """What one SCIM change did to the registry."""

    case_id: int | None = None
    offboarded: str | None = None
    notes: list[str] = field(default_factory=list)


class GuardRefused(KeywardError):
    """The SCIM guard refused an offboarding; nothing was changed (HTTP 503)."""

    def __init__(self, message: str, alert_id: int | None) -> None:
        super().__init__(message)
        self.alert_id = alert_id


# -- reading --------------------------------------------------------------------------


def find(session: Session, kind: str, scim_id: str) -> ScimResource | None:
    """The live (not deleted) resource ``scim_id`` of ``kind``."""
    row = session.get(ScimResource, scim_id)
    if row is None or row.kind != kind or row.deleted_at is not None:
        return None
    return row


def live(session: Session, kind: str, name: str | None = None) -> list[ScimResource]:
    """Every live resource of ``kind`` (only those called ``name``, if given), oldest first."""
    query = select(ScimResource).where(
        ScimResource.kind == kind, col(ScimResource.deleted_at).is_(None)
    )
    if name is not None:
        query = query.where(ScimResource.name == name)
    return list(session.exec(query.order_by(col(ScimResource.created_at), col(ScimResource.id))))


def name_taken(session: Session, kind: str, name: str, other_than: str | None) -> bool:
    """Whether a live resource of ``kind`` other than ``other_than`` has ``name``."""
    query = select(ScimResource.id).where(
        ScimResource.kind == kind,
        ScimResource.name == name,
        col(ScimResource.deleted_at).is_(None),
    )
    return any(found != other_than for found in session.exec(query))


def would_offboard(session: Session, row: ScimResource | None, facts: UserFacts | None) -> bool:
    """Whether storing ``facts`` (None: deleting) for ``row`` offboards its linked person."""
    if row is None or row.person is None or (facts is not None and facts.active):
        return False
    person = session.exec(select(Person).where(Person.username == row.person)).first()
    return person is not None and person.status == "active"


# -- writing --------------------------------------------------------------------------


def save(
    tx: WriteTx, row: ScimResource | None, scim_id: str, kind: str, name: str, document: str
) -> ScimResource:
    """Store a new resource or a new version of ``row``."""
    if row is None:
        row = ScimResource(
            id=scim_id,
            kind=kind,
            name=name,
            document=document,
            version=1,
            created_at=tx.now,
            changed_at=tx.now,
        )
    else:
        row.name, row.document, row.version, row.changed_at = (
            name,
            document,
            row.version + 1,
            tx.now,
        )
    tx.session.add(row)
    tx.session.flush()
    return row


def delete(tx: WriteTx, row: ScimResource) -> None:
    """Mark ``row`` deleted (the row stays, like every registry row)."""
    row.deleted_at = tx.now
    row.changed_at = tx.now
    tx.session.add(row)


def apply_user(
    tx: WriteTx,
    row: ScimResource,
    facts: UserFacts | None,
    *,
    create_people: bool,
    targets: list[CaseTarget] | None,
) -> Effect:
    """Bring the person linked to ``row`` in line with ``facts`` (None: the user was deleted).

    ``targets`` are the offboarding case's files (``case_targets``), read before the
    transaction by the caller that expects an offboarding.
    """
    effect = Effect()
    person = (
        tx.session.exec(select(Person).where(Person.username == row.person)).first()
        if row.person
        else None
    )
    if facts is None or not facts.active:
        if person is not None and person.status == "active":
            what = "user deleted" if facts is None else "active=false"
            reason = f"directory: scim {what} (id {row.id})"
            if targets is None:
                effect.notes.append("the managed files were not read; the case covers none")
            case = lifecycle.offboard(tx, person.username, reason, targets or [])
            tx.audit(
                OFFBOARDED,
                Subject.person(person.username),
                {"scim_id": row.id, "reason": reason, "case_id": case.id},
            )
            effect.case_id, effect.offboarded = case.id, person.username
        return effect
    if person is not None:
        _update(tx, row, person, facts, effect)
        return effect
    if facts.username is None:
        effect.notes.append(f"userName {facts.user_name[:64]!r} is no valid keyward username")
        return effect
    if _linked_elsewhere(tx.session, facts.username, row.id):
        effect.notes.append(f"{facts.username!r} is linked to another SCIM user")
        return effect
    existing = tx.session.exec(select(Person).where(Person.username == facts.username)).first()
    if existing is not None:
        row.person = existing.username
        tx.session.add(row)
        tx.audit(LINKED, Subject.person(existing.username), {"scim_id": row.id})
        if existing.status == "active":
            _update(tx, row, existing, facts, effect)
        else:
            effect.notes.append(f"{existing.username!r} is offboarded: rehiring is for a person")
        return effect
    if not create_people:
        return effect
    email = _valid_email(facts.email)
    person = ops.add_person(tx, facts.username, facts.full_name or facts.username, email)
    row.person = person.username
    tx.session.add(row)
    tx.audit(
        CREATED,
        Subject.person(person.username),
        {"scim_id": row.id, "full_name": person.full_name, "email": email},
    )
    return effect


def _update(
    tx: WriteTx, row: ScimResource, person: Person, facts: UserFacts, effect: Effect
) -> None:
    """A changed name or e-mail; a missing one never erases the registry's value."""
    if person.status != "active" or person.full_name == lifecycle.PURGED_NAME:
        if facts.active and person.status != "active":
            effect.notes.append(f"{person.username!r} is offboarded: rehiring is for a person")
        return
    name = facts.full_name if facts.full_name and facts.full_name != person.full_name else None
    email = _valid_email(facts.email)
    email = email if email and email != person.email else None
    if name is None and email is None:
        return
    before = {"full_name": person.full_name, "email": person.email}
    try:
        ops.edit_person(tx, person.username, name, email)
    except KeywardError as exc:
        effect.notes.append(exc.message)
        return
    tx.audit(
        UPDATED,
        Subject.person(person.username),
        {
            "scim_id": row.id,
            "changes": {
                key: {"from": before[key], "to": value}
                for key, value in (("full_name", name), ("email", email))
                if value is not None
            },
        },
    )


def _valid_email(email: str | None) -> str | None:
    from keyward.registry import validate

    if not email:
        return None
    try:
        return validate.email(email)
    except KeywardError:
        return None


def _linked_elsewhere(session: Session, username: str, scim_id: str) -> bool:
    query = select(ScimResource.id).where(
        ScimResource.person == username,
        ScimResource.kind == "User",
        col(ScimResource.deleted_at).is_(None),
    )
    return any(found != scim_id for found in session.exec(query))


def sync_roles(
    tx: WriteTx, mapping: Mapping[str, str], deleted_group: str | None = None
) -> list[str]:
    """Grant and revoke the mapped roles from the SCIM groups' members; returns notes.

    ``mapping`` is role -> group displayName (lower-cased).  One direction, and only
    for people linked to a SCIM user: a person managed by hand keeps their grants.  A
    group the identity provider never pushed changes nothing; ``deleted_group`` (being
    deleted in ``tx``) counts as having no members.
    """
    notes: list[str] = []
    session = tx.session
    linked = {
        row_id: person
        for row_id, person in session.exec(
            select(ScimResource.id, ScimResource.person).where(
                ScimResource.kind == "User",
                col(ScimResource.deleted_at).is_(None),
                col(ScimResource.person).is_not(None),
            )
        )
        if person is not None
    }
    status = dict(session.exec(select(Person.username, Person.status)).all())
    groups = {row.name: row for row in live(session, "Group")}
    for role, group_name in sorted(mapping.items()):
        if session.exec(select(Role.id).where(Role.name == role)).first() is None:
            notes.append(f"role {role!r} is not in the registry ('keyward role add')")
            continue
        group = groups.get(group_name)
        if group is None and group_name != deleted_group:
            continue
        members: set[str] = set()
        if group is not None and group_name != deleted_group:
            for member in document(group).get("members") or []:
                if isinstance(member, dict) and isinstance(member.get("value"), str):
                    members.add(member["value"])
        wanted = {linked[i] for i in members if i in linked and status.get(linked[i]) == "active"}
        holders = _holders(session, role, tx.now)
        for username in sorted(wanted - holders):
            ops.grant_role(tx, role, username, f"directory: scim member of {group_name}", None)
            tx.audit(ROLE_GRANTED, Subject.person(username), {"role": role, "group": group_name})
        for username in sorted((holders & set(linked.values())) - wanted):
            if status.get(username) != "active":
                continue
            reason = f"directory: scim no longer a member of {group_name}"
            ops.revoke_role(tx, role, username, reason)
            tx.audit(ROLE_REVOKED, Subject.person(username), {"role": role, "group": group_name})
    return notes


def _holders(session: Session, role: str, now: datetime) -> set[str]:
    return set(
        session.exec(
            select(Person.username)
            .join(Membership, col(Membership.person_id) == col(Person.id))
            .join(Role, col(Role.id) == col(Membership.role_id))
            .where(
                Role.name == role,
                col(Membership.ended_at).is_(None),
                or_(col(Membership.until).is_(None), col(Membership.until) > now),
            )
        )
    )


# -- the guard ------------------------------------------------------------------------


def check_guard(tx: WriteTx, share: float, window: timedelta) -> None:
    """Refuse (``GuardRefused``, with a ``scim_guard`` alert) one offboarding too many.

    The alert and its event are written in ``tx``; the caller commits ``tx`` and
    changes nothing else.
    """
    session = tx.session
    held = session.exec(
        select(Alert.id).where(Alert.kind == ALERT_KIND, Alert.status == "open")
    ).first()
    if held is not None:
        raise GuardRefused(
            f"SCIM offboarding is held by alert {held}; after checking the identity "
            f"provider: keyward alerts clear {held}",
            None,
        )
    since = tx.now - window
    cleared = session.exec(
        select(func.max(Alert.cleared_at)).where(Alert.kind == ALERT_KIND)
    ).first()
    if isinstance(cleared, datetime) and cleared > since:
        since = cleared
    recent = session.exec(
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.action == OFFBOARDED, col(AuditEvent.at) >= since)
    ).one()
    active = session.exec(
        select(func.count()).select_from(Person).where(Person.status == "active")
    ).one()
    allowed = max(1, math.floor(share * (active + recent)))
    if recent + 1 <= allowed:
        return
    summary = (
        f"SCIM offboarding refused: {recent} people offboarded over SCIM since "
        f"{since.strftime('%Y-%m-%dT%H:%M:%SZ')}, at most {allowed} allowed "
        f"({share:.0%} of {active + recent}); nothing changed"
    )
    alert = Alert(
        kind=ALERT_KIND,
        summary=summary,
        details=json.dumps({"recent": recent, "allowed": allowed, "share": share}),
        created_at=tx.now,
    )
    session.add(alert)
    session.flush()
    tx.audit("alert.raise", FLEET, {"alert_id": alert.id, "kind": ALERT_KIND, "summary": summary})
    raise GuardRefused(
        summary + f"; after checking the identity provider: keyward alerts clear {alert.id}",
        alert.id,
    )


def document(row: ScimResource) -> dict[str, Any]:
    """The stored resource as the identity provider sent it (plus id and meta)."""
    value: dict[str, Any] = json.loads(row.document)
    return value
