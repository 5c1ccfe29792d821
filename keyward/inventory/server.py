"""``[server]`` in ``keyward.toml``: who administers, audits and approves through the server.

Authorization comes from the registry itself: the roles named here are ordinary
keyward roles, so granting and revoking them is audited like any other grant.

    [server]
    admin_role = "keyward-admin"        # may read everything (people, all requests)
    auditor_role = "keyward-auditor"    # read-only: the same reads, no decisions
    min_attestation = "admin"           # weakest key attestation that may sign in
    session_hours = 8                   # lifetime of a `keyward auth login` session

    [server.approvers]                  # per role: who may approve or deny requests for it
    devops = ["role:security", "person:alice"]
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from keyward.attestation import ATTESTATION_LEVELS
from keyward.inventory.reader import Reader, short

DEFAULT_ADMIN_ROLE = "keyward-admin"
DEFAULT_AUDITOR_ROLE = "keyward-auditor"
DEFAULT_MIN_ATTESTATION = "admin"
DEFAULT_SESSION_HOURS = 8
_FIELDS = ("admin_role", "auditor_role", "min_attestation", "session_hours", "approvers")
_APPROVER_RE = re.compile(r"(role|person):[A-Za-z0-9._@+-]{1,64}")


@dataclass(frozen=True)
class ServerSettings:
    admin_role: str = DEFAULT_ADMIN_ROLE
    auditor_role: str = DEFAULT_AUDITOR_ROLE
    min_attestation: str = DEFAULT_MIN_ATTESTATION
    session_hours: int = DEFAULT_SESSION_HOURS
    approvers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Role name -> ``role:NAME`` / ``person:USERNAME`` entries that may decide its requests."""


def read_server_settings(data: Mapping[str, Any], reader: Reader) -> ServerSettings:
    """The ``[server]`` table of a parsed ``keyward.toml``; problems go to ``reader``."""
    table = reader.table(data, "", "server") or {}
    reader.fields(table, "server", _FIELDS)
    minimum = (
        reader.string(table, "server", "min_attestation", DEFAULT_MIN_ATTESTATION)
        or DEFAULT_MIN_ATTESTATION
    )
    if minimum not in ATTESTATION_LEVELS:
        reader.add("server.min_attestation", f"must be one of {', '.join(ATTESTATION_LEVELS)}")
        minimum = DEFAULT_MIN_ATTESTATION
    approvers: dict[str, tuple[str, ...]] = {}
    for role, entries in (reader.table(table, "server", "approvers") or {}).items():
        where = f"server.approvers.{role}"
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            reader.add(where, 'must be an array like ["role:security", "person:alice"]')
            continue
        for entry in entries:
            if not _APPROVER_RE.fullmatch(entry):
                reader.add(where, f"{short(entry)} is not role:NAME or person:USERNAME")
        approvers[role] = tuple(e for e in entries if _APPROVER_RE.fullmatch(e))
    return ServerSettings(
        admin_role=reader.string(table, "server", "admin_role", DEFAULT_ADMIN_ROLE)
        or DEFAULT_ADMIN_ROLE,
        auditor_role=reader.string(table, "server", "auditor_role", DEFAULT_AUDITOR_ROLE)
        or DEFAULT_AUDITOR_ROLE,
        min_attestation=minimum,
        session_hours=reader.integer(
            table, "server", "session_hours", DEFAULT_SESSION_HOURS, 1, 24
        ),
        approvers=approvers,
    )
