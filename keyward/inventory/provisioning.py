"""What the two ways of provisioning people configure alike: an LDAP sync (``[directory]``)
and SCIM (``[scim]``).

Both may offboard people without anyone typing a command, so both carry the same guard,
a largest share of people they may offboard at once, read and checked here once; and both
may map directory groups to keyward roles, read here with the same rule for role names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from keyward.inventory.reader import Reader, short

DEFAULT_MASS_SHARE = 0.10
ROLE_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")  # the registry's role names (registry.validate)


def mass_offboard_share(reader: Reader, table: Mapping[str, Any], where: str) -> float:
    """``mass_offboard_share`` of ``[where]``: above 0 and at most 1 (default 0.10)."""
    value = table.get("mass_offboard_share", DEFAULT_MASS_SHARE)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        reader.add(f"{where}.mass_offboard_share", "must be a share above 0 up to 1 (0.10)")
        return DEFAULT_MASS_SHARE
    return float(value)


def group_roles(reader: Reader, parent: Mapping[str, Any], where: str) -> dict[str, str]:
    """``[where.roles]``: keyward role -> the directory group whose members hold it."""
    table = reader.table(parent, where, "roles") or {}
    roles: dict[str, str] = {}
    for role in table:
        if not ROLE_RE.fullmatch(role):
            reader.add(f"{where}.roles", f"{short(role)} is not a valid role name")
            continue
        group = reader.string(table, f"{where}.roles", role)
        if group:
            roles[role] = group
    return roles
