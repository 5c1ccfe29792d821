"""The plain names an inventory uses: accounts, environments, hosts, groups and roles.

They appear on command lines, in the registry and in audit events, so they
stay plain; account names also become ``%u`` in paths on the hosts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from keyward.inventory.reader import Reader

# POSIX portable login names, as useradd accepts them by default (lowercase).
ACCOUNT_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
# Environment, host, group and role names: they appear on command lines, in
# the registry and in audit events, so they stay plain.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def what_account() -> str:
    return "account name (POSIX login: [a-z_][a-z0-9_.-]{0,31})"


def read_accounts(
    reader: Reader, table: Mapping[str, Any], where: str, *, required: bool = True
) -> tuple[str, ...]:
    """Account names; required (non-empty) for rules, optional (may be ``[]``) for hosts."""
    found = reader.names(
        table,
        where,
        "accounts",
        ACCOUNT_RE,
        what_account(),
        required=required,
        allow_empty=not required,
    )
    return found or ()
