"""Helpers that several command modules share: bounded input files, the inventory's key
policy, logging a transaction's audit events, and the JSON shapes of keys and memberships.

Command modules import these from here, never from one another, so that each command group
loads alone from its one module (``main.COMMANDS``) and owns all its subcommands.  Nothing
heavy at import: ``key check`` loads this module and must not pay for the registry
(tests/test_startup.py).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from keyward.cli.context import AppContext
from keyward.cli.output import ts
from keyward.errors import UsageError

if TYPE_CHECKING:
    from keyward.inventory.policy import PolicySettings
    from keyward.keys import KeyPolicy
    from keyward.registry.models import Membership, Person, Role, SshKey
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


def key_status(key: SshKey, now: Any) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at <= now:
        return "expired"
    return "active"


def key_json(k: SshKey, owner: Person, now: Any) -> dict[str, Any]:
    from keyward.keys import decode_key

    public = decode_key(k.key_type, k.blob, k.comment)
    return {
        "fingerprint": k.fingerprint,
        "owner": owner.username,
        "type": k.key_type,
        "bits": public.bits,
        "comment": k.comment,
        "attestation": k.attestation,
        "attested_by": k.attested_by,
        "proof_date": k.proof_date,
        "added_by": k.added_by,
        "added_at": ts(k.added_at),
        "expires_at": ts(k.expires_at),
        "revoked_at": ts(k.revoked_at),
        "revoked_by": k.revoked_by,
        "revoke_reason": k.revoke_reason,
        "status": key_status(k, now),
    }


def membership_json(m: Membership, r: Role, now: Any) -> dict[str, Any]:
    if m.ended_at is not None:
        status = "ended"
    elif m.until is not None and m.until <= now:
        status = "lapsed"
    else:
        status = "active"
    return {
        "role": r.name,
        "granted_by": m.granted_by,
        "granted_at": ts(m.granted_at),
        "reason": m.reason,
        "until": ts(m.until),
        "customer": m.customer,
        "ended_at": ts(m.ended_at),
        "ended_by": m.ended_by,
        "end_reason": m.end_reason,
        "status": status,
    }
