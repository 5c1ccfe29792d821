"""Reading the registry into a ``RegistrySnapshot`` with a fixed handful of queries.

The cost is independent of the number of hosts: the desired state for the
whole fleet is computed from this one snapshot.
"""

from __future__ import annotations

import json

from sqlmodel import Session, col, select

from keyward.keys import decode_key
from keyward.registry.adoption import load_guard
from keyward.registry.models import (
    AccessRequest,
    AuditHead,
    FailureMode,
    Membership,
    Person,
    Role,
    SshKey,
)
from keyward.state import GrantRecord, KeyRecord, PersonRecord, RegistrySnapshot


def load_snapshot(session: Session) -> RegistrySnapshot:
    people_rows = session.exec(select(Person)).all()
    ids = {p.id: p.username for p in people_rows}
    people = {p.username: PersonRecord(p.username, p.full_name, p.status) for p in people_rows}
    keys = tuple(
        KeyRecord(
            key=decode_key(k.key_type, k.blob, k.comment),
            owner=ids[k.person_id],
            attestation=k.attestation,
            added_at=k.added_at,
            expires_at=k.expires_at,
            revoked_at=k.revoked_at,
        )
        for k in session.exec(select(SshKey).order_by(col(SshKey.id)))
    )
    grants = tuple(
        GrantRecord(
            username=ids[m.person_id],
            role=r.name,
            granted_by=m.granted_by,
            granted_at=m.granted_at,
            reason=m.reason,
            until=m.until,
            customer=m.customer,
        )
        for m, r in session.exec(
            select(Membership, Role)
            .join(Role, col(Role.id) == col(Membership.role_id))
            .where(col(Membership.ended_at).is_(None))
        )
    )
    requests = tuple(
        GrantRecord(
            username=ids[a.person_id],
            role=r.name,
            granted_by=a.decided_by or "",
            granted_at=a.decided_at or a.requested_at,
            reason=a.reason,
            until=a.until,
            environment=a.environment,
            request_id=a.id,
        )
        for a, r in session.exec(
            select(AccessRequest, Role)
            .join(Role, col(Role.id) == col(AccessRequest.role_id))
            .where(AccessRequest.status == "approved", col(AccessRequest.ended_at).is_(None))
        )
    )
    grants = grants + requests
    restricted = {
        ids[f.person_id]: frozenset(json.loads(f.addresses))
        if f.mode == "restrict"
        else frozenset()
        for f in session.exec(select(FailureMode).where(col(FailureMode.cleared_at).is_(None)))
    }
    head = session.exec(select(AuditHead).where(AuditHead.id == 1)).one()
    adoption = load_guard(session, (k.fingerprint for k in keys))
    return RegistrySnapshot(
        people=people,
        keys=keys,
        grants=grants,
        head_seq=head.seq,
        restricted=restricted,
        adoption=adoption,
    )
