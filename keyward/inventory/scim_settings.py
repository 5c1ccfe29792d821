"""``[scim]`` in ``keyward.toml``: an identity provider provisions people over SCIM 2.0.

With the section, ``keyward server`` serves ``/scim/v2`` (keyward.server.scim) to one
client, the identity provider (Okta, Entra ID), which proves itself with a bearer
token.  The token is never in this file: ``token_file`` names where it is, and the
server keeps only its SHA-256.  The file may hold the hash itself
(``sha256:<64 hex>``), so the server's disk need not hold the token at all.

    [scim]
    token_file = "/etc/keyward/scim-token"   # root-owned, 0600
    mass_offboard_share = 0.10               # the guard: see docs/directory.md
    mass_offboard_window = "1h"
    create_people = true

    [scim.roles]                             # optional: a group's members hold a role
    devops = "SSH-DevOps"                    # keyward role = the group's displayName
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from keyward.errors import UsageError
from keyward.inventory.provisioning import DEFAULT_MASS_SHARE, group_roles, mass_offboard_share
from keyward.inventory.reader import Reader, short
from keyward.timeparse import duration

DEFAULT_WINDOW = "1h"
_FIELDS = ("token_file", "mass_offboard_share", "mass_offboard_window", "create_people", "roles")


@dataclass(frozen=True)
class ScimSettings:
    """The ``[scim]`` section, checked."""

    token_file: Path
    mass_offboard_share: float = DEFAULT_MASS_SHARE
    """At most this share of the active people may be offboarded over SCIM per window."""
    mass_offboard_window: timedelta = timedelta(hours=1)
    create_people: bool = True
    """Whether a new SCIM user with a valid username becomes a person."""
    roles: Mapping[str, str] = field(default_factory=dict)
    """keyward role -> SCIM group displayName (lower-cased): the group's members hold it."""


def read_scim(root: Path, reader: Reader, data: Mapping[str, Any]) -> ScimSettings | None:
    """The ``[scim]`` table of ``keyward.toml``; None when there is none."""
    table = reader.table(data, "", "scim")
    if table is None:
        return None
    reader.fields(table, "scim", _FIELDS)
    token = reader.string(table, "scim", "token_file", required=True) or "scim-token"
    path = Path(token)
    share = mass_offboard_share(reader, table, "scim")
    text = reader.string(table, "scim", "mass_offboard_window", DEFAULT_WINDOW) or DEFAULT_WINDOW
    try:
        window = duration(text, "scim.mass_offboard_window")
    except UsageError:
        reader.add("scim.mass_offboard_window", f"{short(text)} is not a duration like 1h or 30m")
        window = timedelta(hours=1)
    if window <= timedelta(0):
        reader.add("scim.mass_offboard_window", "must be longer than 0")
    return ScimSettings(
        token_file=path if path.is_absolute() else root / path,
        mass_offboard_share=share,
        mass_offboard_window=window,
        create_people=reader.boolean(table, "scim", "create_people", True),
        # SCIM groups are matched by displayName, lower-cased (keyward.registry.scim_store).
        roles={
            role: group.strip().lower()
            for role, group in group_roles(reader, table, "scim").items()
        },
    )
