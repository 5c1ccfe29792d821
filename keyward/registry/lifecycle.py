"""Lifecycle operations: key rotation, short-lived access, and offboarding.

Each is one registry transaction with its audit events, like ``ops``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import Table
from sqlmodel import Session, col, or_, select

from keyward.errors import RegistryError, UsageError
from keyward.keys import PublicKey
from keyward.registry import ops, subjects, validate
from keyward.registry.bulk import insert_many
from keyward.registry.models import (
    AccessRequest,
    Membership,
    OffboardingCase,
    OffboardingTarget,
    Person,
    Role,
    SshKey,
)
from keyward.registry.store import WriteTx
from keyward.registry.subjects import Subject

TARGET_TABLE: Table = OffboardingTarget.__table__  # type: ignore[attr-defined]

MAX_REQUEST = timedelta(days=7)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# -- rotation -----------------------------------------------------------------


def rotate_key(
    tx: WriteTx,
    username: str,
    new_key: PublicKey,
    claim: ops.KeyClaim,
    grace: timedelta,
    old_fingerprint: str | None = None,
) -> tuple[SshKey, SshKey]:
    """Add ``new_key`` and let the old key live only for ``grace``; one event links them."""
    person = ops.find_person(tx.session, username)
    ops.require_active(person)
    active = [
        k
        for k in tx.session.exec(select(SshKey).where(SshKey.person_id == person.id))
        if k.revoked_at is None and k.expires_at > tx.now
    ]
    if old_fingerprint is not None:
        old = next((k for k in active if k.fingerprint == old_fingerprint), None)
        if old is None:
            raise RegistryError(f"{username!r} has no active key {old_fingerprint}")
    elif len(active) == 1:
        old = active[0]
    elif not active:
        raise RegistryError(f"{username!r} has no active key to rotate; use 'key add'")
    else:
        raise UsageError(f"{username!r} has {len(active)} active keys; name one with --old")
    if grace < timedelta(0) or grace > timedelta(days=30):
        raise UsageError("--grace must be between 0 and 30 days")
    new = ops.add_key(tx, username, new_key, claim, record=False)
    old_expiry = old.expires_at
    old.expires_at = min(old.expires_at, tx.now + grace)
    old.rotated_to_id = new.id
    tx.session.add(old)
    tx.audit(
        "key.rotate",
        Subject.person(username),
        {
            "old_fingerprint": old.fingerprint,
            "new_fingerprint": new.fingerprint,
            "new_type": new.key_type,
            "new_attestation": new.attestation,
            "new_expires_at": _iso(new.expires_at),
            "old_expires_at": _iso(old.expires_at),
            "old_previous_expires_at": _iso(old_expiry),
            "grace_seconds": int(grace.total_seconds()),
        },
    )
    return old, new


# -- short-lived access -------------------------------------------------------


def request_access(
    tx: WriteTx, role_name: str, environment: str, duration: timedelta, reason: str
) -> AccessRequest:
    """The acting person asks for ``role_name`` in ``environment`` for ``duration``."""
    reason = validate.line("reason", reason)
    if duration <= timedelta(0) or duration > MAX_REQUEST:
        raise UsageError("--for must be between 1 minute and 7 days")
    person = tx.session.exec(select(Person).where(Person.username == tx.actor)).first()
    if person is None:
        raise RegistryError(
            f"the requester {tx.actor!r} is not a person in the registry (set --actor)"
        )
    ops.require_active(person)
    role = ops.find_role(tx.session, role_name)
    request = AccessRequest(
        person_id=person.id or 0,
        role_id=role.id or 0,
        environment=environment,
        duration_seconds=int(duration.total_seconds()),
        reason=reason,
        requested_at=tx.now,
    )
    tx.session.add(request)
    tx.session.flush()
    tx.audit(
        "access.request",
        Subject.person(person.username),
        {
            "request_id": request.id,
            "role": role_name,
            "environment": environment,
            "duration_seconds": request.duration_seconds,
            "reason": reason,
        },
    )
    return request


def decide_access(tx: WriteTx, request_id: int, approve: bool, note: str = "") -> AccessRequest:
    request = tx.session.get(AccessRequest, request_id)
    if request is None:
        raise RegistryError(f"no access request {request_id}")
    if request.status != "pending":
        raise RegistryError(f"access request {request_id} is {request.status}, not pending")
    person = tx.session.get(Person, request.person_id)
    assert person is not None
    if person.username == tx.actor:
        raise RegistryError("a request must be approved by someone other than the requester")
    ops.require_active(person)
    request.status = "approved" if approve else "denied"
    request.decided_by = tx.actor
    request.decided_at = tx.now
    if approve:
        request.until = tx.now + timedelta(seconds=request.duration_seconds)
    tx.session.add(request)
    role = tx.session.get(Role, request.role_id)
    tx.audit(
        "access.approve" if approve else "access.deny",
        Subject.person(person.username),
        {
            "request_id": request.id,
            "role": role.name if role else None,
            "environment": request.environment,
            "until": _iso(request.until),
            "note": validate.line("note", note, required=False) or None,
        },
    )
    return request


# -- offboarding --------------------------------------------------------------


def offboard(
    tx: WriteTx,
    username: str,
    reason: str,
    targets: Iterable[tuple[str, str, str, bool]],
) -> OffboardingCase:
    """Offboard ``username`` in one transaction and open a case over ``targets``.

    ``targets`` are (host, account, pattern, had_access) for every managed file
    that must be confirmed free of the person's keys.
    """
    reason = validate.line("reason", reason)
    person = ops.find_person(tx.session, username)
    if person.status == "offboarded":
        raise RegistryError(f"{username!r} is already offboarded; see 'keyward offboard status'")
    keys = list(tx.session.exec(select(SshKey).where(SshKey.person_id == person.id)))
    for key in keys:
        if key.revoked_at is None:
            key.revoked_at = tx.now
            key.revoked_by = tx.actor
            key.revoke_reason = f"offboarded: {reason}"
            tx.session.add(key)
            tx.audit(
                "key.revoke",
                Subject.person(username),
                {"fingerprint": key.fingerprint, "reason": key.revoke_reason},
            )
    for membership, role in tx.session.exec(
        select(Membership, Role)
        .join(Role, col(Role.id) == col(Membership.role_id))
        .where(Membership.person_id == person.id, col(Membership.ended_at).is_(None))
    ):
        membership.ended_at = tx.now
        membership.ended_by = tx.actor
        membership.end_reason = f"offboarded: {reason}"
        tx.session.add(membership)
        tx.audit(
            "role.revoke",
            Subject.person(username),
            {"role": role.name, "reason": membership.end_reason},
        )
    for request in tx.session.exec(
        select(AccessRequest).where(
            AccessRequest.person_id == person.id,
            col(AccessRequest.status).in_(["pending", "approved"]),
            col(AccessRequest.ended_at).is_(None),
        )
    ):
        request.ended_at = tx.now
        request.end_reason = f"offboarded: {reason}"
        if request.status == "pending":
            request.status = "denied"
        tx.session.add(request)
        tx.audit(
            "access.end",
            Subject.person(username),
            {"request_id": request.id, "reason": request.end_reason},
        )
    person.status = "offboarded"
    person.changed_at = tx.now
    tx.session.add(person)
    fingerprints = sorted(k.fingerprint for k in keys)
    case = OffboardingCase(
        person_id=person.id or 0,
        requested_by=tx.actor,
        reason=reason,
        started_at=tx.now,
        fingerprints=json.dumps(fingerprints),
    )
    tx.session.add(case)
    tx.session.flush()
    # One row per managed file of the fleet: inserted in one statement, not one ORM
    # object each, since a large fleet has thousands.
    rows = [
        {
            "case_id": case.id or 0,
            "host": host,
            "account": account,
            "pattern": pattern,
            "had_access": had_access,
            "removed": 0,
        }
        for host, account, pattern, had_access in targets
    ]
    insert_many(tx.session.connection(), TARGET_TABLE, rows)
    count = len(rows)
    tx.audit(
        "person.offboard",
        Subject.person(username),
        {
            "case_id": case.id,
            "reason": reason,
            "fingerprints": fingerprints,
            "targets": count,
        },
    )
    return case


# -- re-hire ------------------------------------------------------------------


def rehire(
    tx: WriteTx,
    username: str,
    reason: str,
    full_name: str | None = None,
    email: str | None = None,
) -> Person:
    """Make an offboarded person active again under the same username: a new employment period.

    The row (and so the history: keys, grants, logins, audit events) is kept; the
    keys of the earlier period stay revoked and the roles ended, so nothing comes
    back by itself: new keys are added and roles granted like for a new person.
    Refused while an offboarding case is still open, so the evidence that the
    earlier period's keys are gone from every host is complete first.
    """
    reason = validate.line("reason", reason)
    person = ops.find_person(tx.session, username)
    if person.status != "offboarded":
        raise RegistryError(
            f"{username!r} is {person.status}; only an offboarded person is rehired"
        )
    if tx.session.exec(
        select(OffboardingCase).where(
            OffboardingCase.person_id == person.id, OffboardingCase.status == "open"
        )
    ).first():
        raise RegistryError(
            f"{username!r} still has an open offboarding case; it must be confirmed on every "
            f"host first ('keyward offboard status {username}')"
        )
    if full_name is not None:
        person.full_name = validate.line("full name", full_name, max_length=200)
    elif person.full_name == PURGED_NAME:
        raise UsageError(f"{username!r} was purged; give --name (and --email) again")
    if email is not None:
        person.email = validate.email(email) if email.strip() else None
    person.status = "active"
    person.changed_at = tx.now
    tx.session.add(person)
    tx.audit(
        "person.rehire",
        Subject.person(username),
        {"reason": reason, "full_name": person.full_name, "email": person.email},
    )
    return person


PERIOD_START = ("person.add", "person.rehire")
PERIOD_END = "person.offboard"


def employment_periods(session: Session, person: Person) -> list[dict[str, str | None]]:
    """The person's periods of employment, oldest first, read from the audit trail.

    Each ``person.add`` or ``person.rehire`` starts one and ``person.offboard`` ends
    it; the chain covers these events, and a purge keeps their time and action
    (only details are redacted), so the periods survive a purge too.
    """
    from keyward.registry.models import AuditEvent

    subject = Subject.person(person.username)
    candidates = session.exec(
        select(AuditEvent)
        .where(
            subjects.matches(subject),
            col(AuditEvent.action).in_([*PERIOD_START, PERIOD_END]),
        )
        .order_by(col(AuditEvent.seq))
    ).all()
    periods: list[dict[str, str | None]] = []
    for event in subjects.about(session, candidates, subject):
        stamp = event.at.strftime("%Y-%m-%dT%H:%M:%SZ")
        if event.action in PERIOD_START:
            periods.append(
                {"started_at": stamp, "started_by": event.actor, "ended_at": None, "ended_by": None}
            )
        elif periods and periods[-1]["ended_at"] is None:
            periods[-1]["ended_at"] = stamp
            periods[-1]["ended_by"] = event.actor
    if not periods:  # a registry restored without its history: the row is all there is
        periods.append(
            {
                "started_at": person.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "started_by": None,
                "ended_at": None,
                "ended_by": None,
            }
        )
    return periods


def open_cases(session: Session) -> list[tuple[OffboardingCase, Person]]:
    return list(
        session.exec(
            select(OffboardingCase, Person)
            .join(Person, col(Person.id) == col(OffboardingCase.person_id))
            .where(OffboardingCase.status == "open")
        )
    )


# -- retention ----------------------------------------------------------------

PURGED_NAME = "(purged)"


def purge_person(tx: WriteTx, username: str, keep_days: int) -> list[int]:
    """Reduce an offboarded person to what the audit chain needs; returns redacted event seqs.

    The person's name, email and key comments are blanked, the source addresses of
    their logins removed, and the details of every audit event about them
    redacted: events whose subject is this person, never those of a host, role or
    backup that happens to share the name (see ``keyward.registry.subjects``).
    The chain stays verifiable: each event keeps its details digest, and one
    ``audit.redact`` event (itself in the chain) lists what was redacted.
    """
    from keyward.registry.audit import REDACT_ACTION
    from keyward.registry.models import AuditEvent, LoginEvent, LoginSource

    person = ops.find_person(tx.session, username)
    if person.status != "offboarded":
        raise RegistryError(f"{username!r} is {person.status}; only offboarded people are purged")
    if person.full_name == PURGED_NAME:
        raise RegistryError(f"{username!r} is already purged")
    cases = tx.session.exec(
        select(OffboardingCase).where(OffboardingCase.person_id == person.id)
    ).all()
    if any(c.status != "confirmed" for c in cases):
        raise RegistryError(
            f"{username!r} still has an unconfirmed offboarding case; its evidence is needed"
        )
    left = max((c.closed_at or c.started_at for c in cases), default=person.changed_at)
    if tx.now < left + timedelta(days=keep_days):
        raise RegistryError(
            f"{username!r} left on {left:%Y-%m-%d}; details are kept for {keep_days} days "
            f"(until {left + timedelta(days=keep_days):%Y-%m-%d}, policy purge_after_days)"
        )
    person.full_name = PURGED_NAME
    person.email = None
    person.changed_at = tx.now
    tx.session.add(person)
    fingerprints: list[str] = []
    for key in tx.session.exec(select(SshKey).where(SshKey.person_id == person.id)):
        key.comment = ""
        fingerprints.append(key.fingerprint)
        tx.session.add(key)
    for login in tx.session.exec(select(LoginEvent).where(LoginEvent.person == username)):
        login.addr = "redacted"
        tx.session.add(login)
    # The addresses the person's keys came from are theirs too; the new-address memory
    # forgets them (their keys are revoked, so it is never consulted for them again).
    for source in tx.session.exec(
        select(LoginSource).where(
            or_(col(LoginSource.person) == username, col(LoginSource.fingerprint).in_(fingerprints))
        )
    ):
        tx.session.delete(source)
    # Only the person's own events: a host, role or backup of the same name is not them.
    subject = Subject.person(username)
    candidates = tx.session.exec(
        select(AuditEvent).where(subjects.matches(subject), AuditEvent.redacted == False)  # noqa: E712
    ).all()
    seqs: list[int] = []
    for event in subjects.about(tx.session, candidates, subject):
        event.details = json.dumps({"redacted": True})
        event.redacted = True
        tx.session.add(event)
        seqs.append(event.seq)
    tx.session.flush()
    tx.audit(REDACT_ACTION, subject, {"seqs": sorted(seqs), "reason": "person purge"})
    tx.audit("person.purge", subject, {"kept_days": keep_days})
    return sorted(seqs)
