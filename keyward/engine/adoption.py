"""Adopting a fleet, as commands drive it: scan, report, suggest, apply.

``scan`` reads every selected host through the agent (read-only) and records the result
in one registry transaction; ``report`` and ``suggestions`` read the records back and hand
them, with the registry snapshot and the inventory, to the pure ``keyward.adoption``;
``apply`` grants the suggested roles in one transaction. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from keyward import event_loop
from keyward.engine.inputs import checked_credentials, load_agent_key
from keyward.engine.round import Progress, Surroundings, new_run_id, no_progress
from keyward.errors import UsageError
from keyward.logs import get_logger

if TYPE_CHECKING:
    from keyward.adoption.lines import HostScan
    from keyward.adoption.report import KeyKind, Report, ScanData
    from keyward.adoption.suggest import Suggestion, Suggestions
    from keyward.inventory.model import Inventory


@dataclass(frozen=True)
class ScanOutcome:
    run_id: str
    hosts: tuple[HostScan, ...]
    counts: dict[str, int]
    read_seconds: float = 0.0  # reading the hosts
    record_seconds: float = 0.0  # recording what they hold, one transaction


def scan(
    surroundings: Surroundings,
    inventory_dir: Path,
    env: str | None,
    host: str | None,
    concurrency: int | None = None,
    progress: Progress = no_progress,
) -> ScanOutcome:
    """Read every managed file of the selected hosts and record what is there."""
    from keyward.agent.adopt import scan_fleet
    from keyward.agent.limits import fds_needed, raise_fd_limit
    from keyward.inventory import load_inventory
    from keyward.registry.adoption import record_scan

    inv = load_inventory(inventory_dir)
    hosts = inv.select_hosts(env, host)
    creds = checked_credentials(inv, load_agent_key(inv))
    run_id = new_run_id("a")
    log = get_logger(run_id=run_id)
    limit = concurrency or inv.agent.concurrency
    raise_fd_limit(fds_needed(limit))
    log.info("adopt_scan_started", hosts=len(hosts), concurrency=limit)
    with progress(len(hosts), "adopt scan") as advance:

        def done(result: HostScan) -> None:
            advance(result.error is not None)

        started = time.monotonic()
        results = event_loop.run(scan_fleet(hosts, creds, limit, done))
    read = time.monotonic() - started
    with surroundings.registry.write(surroundings.actor) as tx:
        counts = record_scan(tx, results, {"env": env, "host": host, "run_id": run_id})
    recorded = time.monotonic() - started - read
    log.info("adopt_scan_finished", **counts, read_s=round(read, 2), record_s=round(recorded, 2))
    return ScanOutcome(run_id, tuple(results), counts, round(read, 2), round(recorded, 2))


def special_keys(inv: Inventory) -> dict[str, KeyKind]:
    """The agent's and the break-glass keys' fingerprints: known, though not registered."""
    out: dict[str, KeyKind] = {}
    for environment in inv.environments:
        for entry in environment.break_glass:
            out[entry.key.fingerprint] = "break-glass"
    with contextlib.suppress(UsageError):  # no agent key file here: report without it
        out[load_agent_key(inv).fingerprint] = "agent"
    return out


def _selected(data: ScanData, names: set[str]) -> ScanData:
    return replace(
        data,
        hosts=tuple(h for h in data.hosts if h.host in names),
        sightings=tuple(s for s in data.sightings if s.where.host in names),
        unhonoured=tuple(u for u in data.unhonoured if u.where.host in names),
    )


def report(surroundings: Surroundings, inventory_dir: Path, env: str | None) -> Report:
    """The adoption report over the recorded scans (of ``env``, or every host scanned)."""
    from keyward.adoption.report import build_report
    from keyward.desired import compute_desired
    from keyward.inventory import load_inventory
    from keyward.registry.adoption import last_logins, load_decisions, load_scan
    from keyward.registry.snapshot import load_snapshot

    inv = load_inventory(inventory_dir)
    selected = {h.name for h in inv.select_hosts(env, None)}
    now = surroundings.clock()
    with surroundings.registry.read() as session:
        snapshot = load_snapshot(session)
        data = load_scan(session)
        if env is not None:
            data = _selected(data, selected)
        decisions = load_decisions(session)
        logins = last_logins(session, {s.fingerprint for s in data.sightings})
    hosts = [h for h in inv.hosts() if h.name in {x.host for x in data.hosts}]
    special = special_keys(inv)
    agent = next((fp for fp, kind in special.items() if kind == "agent"), None)
    agent_key = load_agent_key(inv) if agent is not None else None
    desired = compute_desired(snapshot, inv, hosts, agent_key, now)
    return build_report(
        data, snapshot, inv.policy.key_policy(), special, decisions, logins, desired, now
    )


def suggestions(surroundings: Surroundings, inventory_dir: Path) -> Suggestions:
    """Role grants that keep claimed people where their keys are today."""
    from keyward.adoption.suggest import suggest
    from keyward.inventory import load_inventory
    from keyward.registry.adoption import load_scan
    from keyward.registry.snapshot import load_snapshot

    inv = load_inventory(inventory_dir)
    with surroundings.registry.read() as session:
        snapshot = load_snapshot(session)
        data = load_scan(session)
    return suggest(data.sightings, snapshot, inv, surroundings.clock())


def apply(surroundings: Surroundings, grants: tuple[Suggestion, ...]) -> int:
    """Grant every suggested role in one transaction (all or none); the number granted."""
    from keyward.adoption.suggest import ADOPTED_REASON
    from keyward.registry import ops
    from keyward.registry.change_log import log_changes

    with surroundings.registry.write(surroundings.actor) as tx:
        for grant in grants:
            ops.grant_role(tx, grant.role, grant.person, ADOPTED_REASON, None)
    log_changes(tx)
    return len(grants)
