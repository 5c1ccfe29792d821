"""Registry operations: each validates, changes rows, and writes its audit event.

All functions take a ``WriteTx`` (for changes) or a ``Session`` (for reads)
so the caller decides the transaction boundary; one CLI command is one
transaction.  Messages never reveal who owns a key to someone registering it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from keyward import attestation as att
from keyward.errors import RegistryError, UsageError
from keyward.keys import PublicKey
from keyward.registry import validate
from keyward.registry.models import Membership, Person, Role, SshKey
from keyward.registry.store import WriteTx
from keyward.registry.subjects import Subject


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# -- people -------------------------------------------------------------------


def find_person(session: Session, username: str) -> Person:
    person = session.exec(select(Person).where(Person.username == username)).first()
    if person is None:
        raise RegistryError(f"no person {username!r} in the registry")
    return person


def add_person(tx: WriteTx, username: str, full_name: str, email: str | None) -> Person:
    validate.username(username)
    full_name = validate.line("full name", full_name, max_length=200)
    if email is not None:
        email = validate.email(email)
    existing = tx.session.exec(select(Person).where(Person.username == username)).first()
    if existing is not None and existing.status == "offboarded":
        raise RegistryError(
            f"person {username!r} already exists (offboarded); to employ them again under "
            f"the same username, use 'keyward person rehire {username} --reason TEXT'"
        )
    if existing is not None:
        raise RegistryError(f"person {username!r} already exists")
    person = Person(
        username=username,
        full_name=full_name,
        email=email,
        status="active",
        created_at=tx.now,
        changed_at=tx.now,
    )
    tx.session.add(person)
    tx.session.flush()
    tx.audit("person.add", Subject.person(username), {"full_name": full_name, "email": email})
    return person


def edit_person(tx: WriteTx, username: str, full_name: str | None, email: str | None) -> Person:
    """Correct a person's name or e-mail; the old values are audited.

    None leaves a field as it is; an empty e-mail removes it.

    A purged person's details were removed on purpose and are not put back here;
    ``person rehire --name`` does that when they return.
    """
    from keyward.registry.lifecycle import PURGED_NAME

    person = find_person(tx.session, username)
    if person.full_name == PURGED_NAME:
        raise RegistryError(f"{username!r} was purged; 'person rehire' gives them details again")
    changes: dict[str, dict[str, str | None]] = {}
    if full_name is not None:
        full_name = validate.line("full name", full_name, max_length=200)
        if full_name != person.full_name:
            changes["full_name"] = {"from": person.full_name, "to": full_name}
            person.full_name = full_name
    if email is not None:
        new_email = validate.email(email) if email.strip() else None
        if new_email != person.email:
            changes["email"] = {"from": person.email, "to": new_email}
            person.email = new_email
    if not changes:
        raise UsageError("nothing to change: give --name or --email with a new value")
    person.changed_at = tx.now
    tx.session.add(person)
    tx.audit("person.edit", Subject.person(username), changes)
    return person


def require_active(person: Person) -> None:
    if person.status != "active":
        raise RegistryError(f"person {person.username!r} is {person.status}")


# -- keys ---------------------------------------------------------------------


def find_key(session: Session, fingerprint: str) -> SshKey:
    key = session.exec(select(SshKey).where(SshKey.fingerprint == fingerprint)).first()
    if key is None:
        raise RegistryError(f"no key {fingerprint} in the registry")
    return key


SHORT_FINGERPRINT = 16
"""Characters of the fingerprint after ``SHA256:`` written on host lines (``keyward:OWNER:...``)."""

_HOST_COMMENT_RE = re.compile(r"keyward:([^:\s]+):([A-Za-z0-9+/]+)")
_PREFIX_RE = re.compile(rf"(?:SHA256:)?([A-Za-z0-9+/]{{{SHORT_FINGERPRINT},43}})")


def resolve_key(session: Session, text: str) -> SshKey:
    """The key ``text`` names: a full ``SHA256:`` fingerprint, or the short form on host lines.

    Accepted: ``SHA256:<43 chars>``; ``SHA256:<prefix>`` or ``<prefix>`` of at least
    16 characters; and the whole host-line comment ``keyward:OWNER:<prefix>``, whose
    owner must then match.  A prefix that fits more than one key is refused, naming
    them, rather than guessed.
    """
    text = text.strip()
    owner: str | None = None
    comment = _HOST_COMMENT_RE.fullmatch(text)
    if comment:
        owner, text = comment.group(1), comment.group(2)
    match = _PREFIX_RE.fullmatch(text)
    if match is None:
        raise UsageError(
            f"{text!r} is not a fingerprint: give SHA256:... or at least the "
            f"{SHORT_FINGERPRINT} characters written on host lines (keyward:OWNER:...)"
        )
    prefix = "SHA256:" + match.group(1)
    # LIKE is case-insensitive on SQLite; the exact test is done here.
    rows = session.exec(
        select(SshKey, Person)
        .join(Person, col(Person.id) == col(SshKey.person_id))
        .where(col(SshKey.fingerprint).startswith(prefix, autoescape=True))
    ).all()
    found = [(k, p) for k, p in rows if k.fingerprint.startswith(prefix)]
    if owner is not None:
        found = [(k, p) for k, p in found if p.username == owner]
    if not found:
        raise RegistryError(f"no key {prefix}{'' if len(prefix) == 50 else '...'} in the registry")
    if len(found) > 1:
        names = ", ".join(f"{k.fingerprint} ({p.username})" for k, p in found)
        raise UsageError(f"{prefix}... matches {len(found)} keys: {names}; give more of it")
    return found[0][0]


@dataclass(frozen=True)
class KeyClaim:
    """What we know about a key being added: its attestation and expiry."""

    attestation: str
    expires_at: datetime
    attested_by: str | None = None
    proof_date: str | None = None


def add_key(
    tx: WriteTx, username: str, key: PublicKey, claim: KeyClaim, *, record: bool = True
) -> SshKey:
    """Register a key; ``record=False`` lets a caller (rotation) write one combined event."""
    person = find_person(tx.session, username)
    require_active(person)
    att.attestation_rank(claim.attestation)
    if claim.attestation == "sk" and not key.is_sk:
        raise UsageError("attestation 'sk' is only for FIDO security keys (sk-* key types)")
    if claim.expires_at <= tx.now:
        raise UsageError("the expiry date is in the past")
    existing = tx.session.exec(select(SshKey).where(SshKey.fingerprint == key.fingerprint)).first()
    rank = att.attestation_rank
    if (
        existing is not None
        and existing.person_id == person.id
        and existing.revoked_at is None
        and existing.expires_at > tx.now
        and rank(claim.attestation) > rank(existing.attestation)
    ):
        # A stronger claim for the same person's key: raising it is what was meant.
        raise RegistryError(
            f"key {key.fingerprint} is already registered to {username} with attestation "
            f"{existing.attestation}; to raise it to {claim.attestation} use "
            f"'keyward key attest {key.fingerprint}'"
        )
    if existing is not None:
        # Do not say whose it is: keys are personal, and the caller may not know.
        raise RegistryError(
            f"key {key.fingerprint} is already registered; keys are personal, "
            "each person needs their own key"
        )
    comment = validate.line("key comment", key.comment, max_length=500, required=False)
    row = SshKey(
        person_id=person.id or 0,
        key_type=key.key_type,
        blob=key.blob,
        fingerprint=key.fingerprint,
        comment=comment,
        added_by=tx.actor,
        added_at=tx.now,
        expires_at=claim.expires_at,
        attestation=claim.attestation,
        attested_by=claim.attested_by,
        proof_date=claim.proof_date,
    )
    tx.session.add(row)
    tx.session.flush()
    if not record:
        return row
    tx.audit(
        "key.add",
        Subject.person(username),
        {
            "fingerprint": key.fingerprint,
            "type": key.key_type,
            "bits": key.bits,
            "attestation": claim.attestation,
            "attested_by": claim.attested_by,
            "proof_date": claim.proof_date,
            "expires_at": _iso(claim.expires_at),
        },
    )
    return row


def revoke_key(tx: WriteTx, fingerprint: str, reason: str) -> SshKey:
    """Revoke the key ``fingerprint`` names (full, or the short form of host lines)."""
    reason = validate.line("reason", reason)
    key = resolve_key(tx.session, fingerprint)
    fingerprint = key.fingerprint
    if key.revoked_at is not None:
        raise RegistryError(f"key {fingerprint} is already revoked")
    person = tx.session.get(Person, key.person_id)
    assert person is not None
    key.revoked_at = tx.now
    key.revoked_by = tx.actor
    key.revoke_reason = reason
    tx.session.add(key)
    tx.audit(
        "key.revoke",
        Subject.person(person.username),
        {"fingerprint": fingerprint, "reason": reason},
    )
    return key


def attest_key(tx: WriteTx, fingerprint: str, claim: KeyClaim, key: PublicKey) -> SshKey:
    """Raise a registered key's attestation; lowering or repeating it is refused.

    ``claim`` was established by the caller the way ``key add`` establishes it (a
    verified proof, or the acting administrator's word), so the same evidence raises
    a key whether it comes with the key or later.  One ``key.attest`` event records
    the old and new level.
    """
    row = find_key(tx.session, fingerprint)
    person = tx.session.get(Person, row.person_id)
    assert person is not None
    require_active(person)
    if row.revoked_at is not None:
        raise RegistryError(f"key {fingerprint} is revoked; register a new key instead")
    if row.expires_at <= tx.now:
        raise RegistryError(f"key {fingerprint} has expired; register a new key instead")
    new_rank = att.attestation_rank(claim.attestation)
    if claim.attestation == "sk" and not key.is_sk:
        raise UsageError("attestation 'sk' is only for FIDO security keys (sk-* key types)")
    old = row.attestation
    if new_rank <= att.attestation_rank(old):
        verb = "already has" if new_rank == att.attestation_rank(old) else "has the higher"
        raise RegistryError(
            f"key {fingerprint} {verb} attestation {old}; only raising is allowed "
            f"({' < '.join(att.ATTESTATION_LEVELS)})"
        )
    row.attestation = claim.attestation
    row.attested_by = claim.attested_by
    row.proof_date = claim.proof_date
    tx.session.add(row)
    tx.audit(
        "key.attest",
        Subject.person(person.username),
        {
            "fingerprint": fingerprint,
            "old_attestation": old,
            "new_attestation": claim.attestation,
            "attested_by": claim.attested_by,
            "proof_date": claim.proof_date,
        },
    )
    return row


# -- roles --------------------------------------------------------------------


def find_role(session: Session, name: str) -> Role:
    role = session.exec(select(Role).where(Role.name == name)).first()
    if role is None:
        raise RegistryError(f"no role {name!r} in the registry")
    return role


def add_role(tx: WriteTx, name: str, description: str) -> Role:
    validate.role_name(name)
    description = validate.line("description", description, required=False)
    if tx.session.exec(select(Role).where(Role.name == name)).first():
        raise RegistryError(f"role {name!r} already exists")
    role = Role(name=name, description=description, created_by=tx.actor, created_at=tx.now)
    tx.session.add(role)
    tx.session.flush()
    tx.audit("role.add", Subject.role(name), {"description": description})
    return role


def active_membership(session: Session, person: Person, role: Role) -> Membership | None:
    return session.exec(
        select(Membership).where(
            Membership.person_id == person.id,
            Membership.role_id == role.id,
            col(Membership.ended_at).is_(None),
        )
    ).first()


def grant_role(
    tx: WriteTx,
    role_name: str,
    username: str,
    reason: str,
    until: datetime | None,
    customer: str | None = None,
) -> Membership:
    reason = validate.line("reason", reason)
    if customer is not None:
        validate.customer(customer)
    if username == tx.actor:
        raise RegistryError("a person cannot grant a role to themselves")
    role = find_role(tx.session, role_name)
    person = find_person(tx.session, username)
    require_active(person)
    if until is not None and until <= tx.now:
        raise UsageError("--until is in the past")
    current = active_membership(tx.session, person, role)
    if current is not None and (current.until is None or current.until > tx.now):
        raise RegistryError(
            f"{username!r} already has role {role_name!r}; revoke it first to change the grant"
        )
    if current is not None:  # lapsed: close it so there is one open row at most
        current.ended_at = tx.now
        current.ended_by = tx.actor
        current.end_reason = "lapsed; replaced by a new grant"
        tx.session.add(current)
    membership = Membership(
        person_id=person.id or 0,
        role_id=role.id or 0,
        granted_by=tx.actor,
        granted_at=tx.now,
        reason=reason,
        until=until,
        customer=customer,
    )
    tx.session.add(membership)
    tx.session.flush()
    tx.audit(
        "role.grant",
        Subject.person(username),
        {"role": role_name, "reason": reason, "until": _iso(until), "customer": customer},
    )
    return membership


def revoke_role(tx: WriteTx, role_name: str, username: str, reason: str) -> Membership:
    reason = validate.line("reason", reason)
    role = find_role(tx.session, role_name)
    person = find_person(tx.session, username)
    membership = active_membership(tx.session, person, role)
    if membership is None:
        raise RegistryError(f"{username!r} does not have role {role_name!r}")
    membership.ended_at = tx.now
    membership.ended_by = tx.actor
    membership.end_reason = reason
    tx.session.add(membership)
    tx.audit("role.revoke", Subject.person(username), {"role": role_name, "reason": reason})
    return membership
