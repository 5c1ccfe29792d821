"""What a proven caller may do, decided from the registry and ``[server]`` in keyward.toml.

- every active person with a valid key: see themselves, their own access requests,
  and request access for themselves;
- approvers of a role (``[server.approvers]``): decide that role's requests, never
  their own (the two-person rule, now with proven identities), and see all requests;
- auditors (holders of ``auditor_role``): read everything, decide nothing;
- administrators (holders of ``admin_role``): read everything.  Being an administrator
  does not make one an approver: who decides requests is named per role, so the
  administrators cannot quietly grant each other access.

Roles count while the grant is active (not ended, ``until`` not passed).  A role held
through an approved access request does not count: temporary access to hosts is not
a right to administer keyward.

``MATRIX`` is the answer each kind of caller gets from each endpoint, as docs/server.md
states it; tests/test_server.py checks both the real server and the doc against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from keyward.clock import as_utc
from keyward.errors import KeywardError
from keyward.inventory.server import ServerSettings
from keyward.registry.models import Membership, Person, Role
from keyward.server.identity import Identity


class Forbidden(KeywardError):
    """A proven caller asked for something they may not do; the server answers 403."""


@dataclass(frozen=True)
class Caller:
    """A proven identity with what the registry says they hold."""

    identity: Identity
    roles: frozenset[str]
    admin: bool
    auditor: bool
    approves: frozenset[str]
    """The roles whose requests this caller may decide (never their own requests)."""

    @property
    def username(self) -> str:
        return self.identity.username

    @property
    def reads_everything(self) -> bool:
        return self.admin or self.auditor or bool(self.approves)

    def may_decide(self, role: str) -> bool:
        return role in self.approves


def held_roles(session: Session, username: str, now: datetime) -> frozenset[str]:
    """The roles ``username`` holds now through an active grant."""
    rows = session.exec(
        select(Role.name, Membership.until)
        .join(Membership, col(Membership.role_id) == col(Role.id))
        .join(Person, col(Person.id) == col(Membership.person_id))
        .where(Person.username == username, col(Membership.ended_at).is_(None))
    ).all()
    return frozenset(name for name, until in rows if until is None or as_utc(until) > now)


def approvers_match(entries: tuple[str, ...], username: str, roles: frozenset[str]) -> bool:
    """True when ``role:NAME`` names a role held, or ``person:USERNAME`` names the caller."""
    for entry in entries:
        kind, _, name = entry.partition(":")
        if (kind == "person" and name == username) or (kind == "role" and name in roles):
            return True
    return False


def caller_for(
    session: Session, identity: Identity, settings: ServerSettings, now: datetime
) -> Caller:
    roles = held_roles(session, identity.username, now)
    return Caller(
        identity=identity,
        roles=roles,
        admin=settings.admin_role in roles,
        auditor=settings.auditor_role in roles,
        approves=frozenset(
            role
            for role, entries in settings.approvers.items()
            if approvers_match(entries, identity.username, roles)
        ),
    )


# -- the documented answers ------------------------------------------------------

CALLERS = (
    "anonymous",
    "member",
    "approver of another role",
    "approver",
    "auditor",
    "administrator",
    "offboarded person",
    "revoked key",
    "replayed request",
    "tampered body",
    "expired timestamp",
)

ENDPOINTS = (
    "GET /api/v1/whoami",
    "POST /api/v1/auth/login",
    "POST /api/v1/auth/browser",
    "GET /api/v1/access-requests",
    "POST /api/v1/access-requests",
    "POST /api/v1/access-requests/{id}/approve",
    "POST /api/v1/access-requests/{id}/deny",
    "GET /api/v1/people",
    "POST /api/v1/people",
    "GET /api/v1/people/{username}",
    "PATCH /api/v1/people/{username}",
    "POST /api/v1/people/{username}/rehire",
    "POST /api/v1/people/{username}/clear-alert",
    "POST /api/v1/people/{username}/purge",
    "GET /api/v1/explain/{username}",
    "GET /api/v1/keys",
    "POST /api/v1/keys",
    "POST /api/v1/keys/rotate",
    "POST /api/v1/keys/attest",
    "POST /api/v1/keys/revoke",
    "GET /api/v1/roles",
    "POST /api/v1/roles",
    "POST /api/v1/roles/{name}/grant",
    "POST /api/v1/roles/{name}/revoke",
    "GET /api/v1/status",
    "GET /api/v1/audit/events",
    "GET /api/v1/audit/verify",
    "GET /api/v1/reports/access",
    "GET /api/v1/reports/offboarding/{username}",
    "POST /api/v1/offboard",
    "GET /api/v1/offboard/{username}",
    "GET /api/v1/logins",
    "GET /api/v1/alerts",
    "POST /api/v1/alerts/{id}/clear",
)

_REFUSED = {
    "anonymous": 401,
    "offboarded person": 401,
    "revoked key": 401,
    "replayed request": 401,
    "tampered body": 401,
    "expired timestamp": 401,
}


def _row(**allowed: int) -> dict[str, int]:
    names = {
        "member": "member",
        "other": "approver of another role",
        "approver": "approver",
        "auditor": "auditor",
        "admin": "administrator",
    }
    return {**_REFUSED, **{names[k]: v for k, v in allowed.items()}}


def _admins(status: int) -> dict[str, int]:
    return _row(member=403, other=403, approver=403, auditor=403, admin=status)


_READERS = _row(member=403, other=403, approver=403, auditor=200, admin=200)
"""Administrators and auditors read; the matrix asks about a third person (``rita``)."""

MATRIX: dict[str, dict[str, int]] = {
    "GET /api/v1/whoami": _row(member=200, other=200, approver=200, auditor=200, admin=200),
    "POST /api/v1/auth/login": _row(member=200, other=200, approver=200, auditor=200, admin=200),
    "POST /api/v1/auth/browser": _row(member=400, other=400, approver=400, auditor=400, admin=400),
    "GET /api/v1/access-requests": _row(
        member=200, other=200, approver=200, auditor=200, admin=200
    ),
    "POST /api/v1/access-requests": _row(
        member=201, other=201, approver=201, auditor=201, admin=201
    ),
    "POST /api/v1/access-requests/{id}/approve": _row(
        member=403, other=403, approver=200, auditor=403, admin=403
    ),
    "POST /api/v1/access-requests/{id}/deny": _row(
        member=403, other=403, approver=200, auditor=403, admin=403
    ),
    "GET /api/v1/people": _READERS,
    "POST /api/v1/people": _admins(201),
    "GET /api/v1/people/{username}": _READERS,
    "PATCH /api/v1/people/{username}": _admins(200),
    "POST /api/v1/people/{username}/rehire": _admins(200),
    "POST /api/v1/people/{username}/clear-alert": _admins(200),
    "POST /api/v1/people/{username}/purge": _admins(200),
    "GET /api/v1/explain/{username}": _READERS,
    "GET /api/v1/keys": _READERS,
    "POST /api/v1/keys": _admins(201),
    "POST /api/v1/keys/rotate": _admins(200),
    "POST /api/v1/keys/attest": _admins(200),
    "POST /api/v1/keys/revoke": _admins(200),
    "GET /api/v1/roles": _row(member=200, other=200, approver=200, auditor=200, admin=200),
    "POST /api/v1/roles": _admins(201),
    "POST /api/v1/roles/{name}/grant": _admins(200),
    "POST /api/v1/roles/{name}/revoke": _admins(200),
    "GET /api/v1/status": _READERS,
    "GET /api/v1/audit/events": _READERS,
    "GET /api/v1/audit/verify": _READERS,
    "GET /api/v1/reports/access": _row(member=200, other=200, approver=200, auditor=200, admin=200),
    "GET /api/v1/reports/offboarding/{username}": _READERS,
    "POST /api/v1/offboard": _admins(200),
    "GET /api/v1/offboard/{username}": _READERS,
    "GET /api/v1/logins": _READERS,
    "GET /api/v1/alerts": _READERS,
    "POST /api/v1/alerts/{id}/clear": _admins(200),
}
"""Endpoint -> kind of caller -> HTTP status; the request in the approve/deny rows is a
pending one of a third person, for the role the "approver" decides; the browser row is
sent without a code (400: every proven caller may confirm one, nobody a missing one).
The people, key, role, offboarding, login and alert rows act on a third person (rita,
or a person made for the one request), so "member" means "someone else's"; a person's
own record, keys and logins are in tests/test_server_api.py."""
