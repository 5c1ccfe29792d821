"""A round's inputs: the inventory, the agent's identity, the registry read once, and the
desired state computed from them.

Every driver loads them the same way: the CLI's ``plan``, ``reconcile`` and ``offboard``
through :func:`load_inputs` / :func:`refresh`, the daemon through :func:`read_registry` and
:func:`agent_identity` (it keeps its inventory between rounds and reloads it on change).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from keyward.clock import Clock
from keyward.errors import UsageError

if TYPE_CHECKING:
    from sqlmodel import Session

    from keyward.agent.connection import Credentials
    from keyward.desired import DesiredFile, FileTarget
    from keyward.inventory.model import Host, Inventory
    from keyward.keys import PublicKey
    from keyward.registry.store import Registry
    from keyward.state import RegistrySnapshot

# Open offboarding cases: case id -> the fingerprints a read-back must see gone.
CaseWatch = dict[int, frozenset[str]]


@dataclass(frozen=True)
class RoundInputs:
    """Everything a round plans from, read at one moment (``now``)."""

    inventory: Inventory
    hosts: tuple[Host, ...]
    snapshot: RegistrySnapshot
    desired: dict[FileTarget, DesiredFile]
    agent_key: PublicKey
    now: datetime


def load_agent_key(inv: Inventory) -> PublicKey:
    """The agent's public key, which every desired state keeps on the login accounts."""
    from keyward.keys import parse_public_key

    try:
        text = inv.agent.identity_pub.read_text()
    except OSError as exc:
        raise UsageError(
            f"cannot read the agent's public key {inv.agent.identity_pub}: {exc.strerror}"
        ) from None
    return parse_public_key(text)


def credentials(inv: Inventory) -> Credentials:
    """The agent's private key and pinned host keys, as the inventory names them."""
    from keyward.agent.connection import Credentials

    return Credentials.load(
        inv.agent.identity, inv.agent.known_hosts, inv.agent.connect_timeout, inv.agent.python
    )


def checked_credentials(inv: Inventory, agent_key: PublicKey) -> Credentials:
    """The credentials, refused unless the private key is the one the desired state keeps:
    writing another key as the agent's would lock the agent out."""
    creds = credentials(inv)
    if creds.agent_fingerprint != agent_key.fingerprint:
        raise UsageError(
            f"the agent identity {inv.agent.identity} does not match "
            f"{inv.agent.identity_pub}; refusing to run (it could lock the agent out)"
        )
    return creds


def load_inputs(
    registry: Registry, clock: Clock, inventory_dir: Path, env: str | None, host: str | None
) -> RoundInputs:
    """Load the inventory, select the hosts (``env``/``host``), read the registry."""
    from keyward.inventory import load_inventory

    inv = load_inventory(inventory_dir)
    hosts = inv.select_hosts(env, host)
    return refresh(registry, clock, inv, hosts, load_agent_key(inv))


def refresh(
    registry: Registry,
    clock: Clock,
    inv: Inventory,
    hosts: tuple[Host, ...],
    agent_key: PublicKey,
) -> RoundInputs:
    """Read the registry now, with an inventory already loaded.

    Offboarding reads the registry before revoking (to list the targets) and after
    (to reconcile), but the inventory only once; so does the pass after failure mode.
    """
    from keyward.registry.snapshot import load_snapshot

    now = clock()
    with registry.read() as session:
        snapshot = load_snapshot(session)
    return compute_inputs(snapshot, inv, hosts, agent_key, now)


def compute_inputs(
    snapshot: RegistrySnapshot,
    inv: Inventory,
    hosts: tuple[Host, ...],
    agent_key: PublicKey,
    now: datetime,
) -> RoundInputs:
    """The desired state of ``hosts`` at ``now`` (pure; the daemon runs it off its loop)."""
    from keyward.desired import compute_desired

    desired = compute_desired(snapshot, inv, hosts, agent_key, now)
    return RoundInputs(inv, hosts, snapshot, desired, agent_key, now)


def case_watch(session: Session) -> CaseWatch:
    """Open offboarding cases and the fingerprints each must see gone."""
    from keyward.registry.lifecycle import open_cases

    return {
        case.id or 0: frozenset(json.loads(case.fingerprints)) for case, _ in open_cases(session)
    }


def open_case_watch(registry: Registry) -> CaseWatch:
    """:func:`case_watch` in a read of its own."""
    with registry.read() as session:
        return case_watch(session)


def read_registry(session: Session) -> tuple[RegistrySnapshot, CaseWatch]:
    """The snapshot and the open cases from one read (the daemon's, in its own session)."""
    from keyward.registry.snapshot import load_snapshot

    return load_snapshot(session), case_watch(session)


def agent_identity(inv: Inventory) -> tuple[PublicKey, Credentials]:
    """The agent's public key and its checked credentials (the daemon, on each reload)."""
    agent_key = load_agent_key(inv)
    return agent_key, checked_credentials(inv, agent_key)
