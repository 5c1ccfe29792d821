"""Helpers that several command modules share: bounded input files, the inventory's key
policy, logging a transaction's audit events, and the JSON shapes of keys and memberships.

Command modules import these from here, never from one another, so that each command group
loads alone from its one module (``main.COMMANDS``) and owns all its subcommands.  Nothing
heavy at import: ``key check`` loads this module and must not pay for the registry
(tests/test_startup.py).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from keyward.cli.context import AppContext
from keyward.errors import UsageError
from keyward.registry import views

if TYPE_CHECKING:
    from keyward.inventory.policy import PolicySettings
    from keyward.keys import KeyPolicy
    from keyward.registry.store import WriteTx

MAX_INPUT_BYTES = 64 * 1024


def read_small_file(path: str, what: str) -> bytes:
    """Read a key or signature file ('-' for stdin), bounded in size."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        else:
            with open(path, "rb") as handle:
                data = handle.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise UsageError(f"{what} {path} is larger than {MAX_INPUT_BYTES} bytes")
    return data


def key_policy(app: AppContext) -> KeyPolicy:
    """The key policy: the inventory's ``[policy]`` when there is an inventory, else defaults."""
    from keyward.keys import DEFAULT_POLICY

    root = app.inventory_dir()
    if not root.is_dir():
        return DEFAULT_POLICY
    from keyward.inventory.policy import load_policy

    return load_policy(root).key_policy()


def key_policy_settings(app: AppContext) -> PolicySettings:
    """The inventory's ``[policy]`` (defaults without an inventory)."""
    from keyward.inventory.policy import PolicySettings
    from keyward.keys import DEFAULT_POLICY

    root = app.inventory_dir()
    if not root.is_dir():
        return PolicySettings(DEFAULT_POLICY.max_key_age_days, DEFAULT_POLICY.min_rsa_bits, None)
    from keyward.inventory.policy import load_policy

    return load_policy(root)


def customer_hosts(app: AppContext, customer: str) -> set[str]:
    """Names of the inventory's hosts that belong to ``customer``."""
    from keyward.inventory import load_inventory

    inv = load_inventory(app.inventory_dir())
    return {h.name for h in inv.hosts() if h.customer == customer}


def log_events(tx: WriteTx) -> None:
    """Log the changes a command's transaction committed (``registry_change`` lines)."""
    from keyward.registry.change_log import log_changes

    log_changes(tx)


# One shape for the CLI and the server (keyward.registry.views): re-exported for the commands.
key_status = views.key_status
key_json = views.key_json
membership_json = views.membership_json
