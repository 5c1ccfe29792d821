"""One directory sync: read, compare, guard, apply; and the one call into the offboarding round.

``keyward directory sync`` (keyward.cli.directory_sync) and the daemon's own schedule
(``[directory] sync_interval``) both run ``sync`` here, so a sync from the timer and one
inside the daemon read, guard, alert and offboard alike.  Leavers go through exactly
the path ``keyward offboard`` takes (revoke in the registry, open a case, reconcile
every host under the writers' lock, confirm by read-back), and that call is made in
one function here, ``offboard_and_confirm``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyward.engine.round import Surroundings
from keyward.errors import UsageError
from keyward.logs import get_logger
from keyward.registry.change_log import log_changes

if TYPE_CHECKING:
    from keyward.directory.guard import Trip
    from keyward.directory.model import DirectoryRead, Offboard, SyncPlan
    from keyward.inventory.directory_settings import DirectorySettings
    from keyward.inventory.model import Inventory
    from keyward.registry.store import Registry, WriteTx


@dataclass
class SyncResult:
    """What one sync read, planned, found suspicious and did."""

    settings: DirectorySettings
    read: DirectoryRead
    plan: SyncPlan
    trips: list[Trip]
    blocking: list[Trip]
    dry_run: bool
    allow_mass_offboard: bool
    applied: bool = False
    skipped: list[str] = field(default_factory=list)
    cases: list[int] = field(default_factory=list)
    unconfirmed: list[str] = field(default_factory=list)
    alert_id: int | None = None

    @property
    def outcome(self) -> str:
        if self.dry_run:
            return "dry-run"
        if self.blocking:
            return "failed" if self.read.error else "refused"
        return "applied" if self.applied else "unchanged"

    @property
    def exit_code(self) -> int:
        return 1 if self.blocking or self.unconfirmed else 0

    def digest(self) -> str:
        """A fingerprint of what was read (DN, username, disabled reason of every entry)."""
        text = "\n".join(
            sorted(f"{e.dn}\t{e.username}\t{e.disabled or ''}" for e in self.read.entries)
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def details(self, applied_base_dn: str | None) -> dict[str, Any]:
        """The ``directory.sync`` event's details."""
        return {
            "url": self.settings.url,
            "base_dn": self.settings.base_dn,
            "filter": self.settings.filter,
            "outcome": self.outcome,
            "read": len(self.read.entries),
            "read_sha256": self.digest(),
            "complete": self.read.complete,
            "error": self.read.error,
            "skipped": len(self.read.skipped) + len(self.skipped),
            "counts": self.plan.counts(),
            "guard": [{"kind": t.kind, "message": t.message} for t in self.trips],
            "allow_mass_offboard": self.allow_mass_offboard,
            "applied_base_dn": applied_base_dn,
            "cases": self.cases,
            "unconfirmed_hosts": self.unconfirmed,
        }


def directory_settings(inv: Inventory) -> DirectorySettings:
    """``[directory]`` of the inventory; ``UsageError`` without one."""
    if inv.directory is None:
        raise UsageError(
            f"no [directory] section in {inv.root / 'keyward.toml'}; see docs/directory.md"
        )
    return inv.directory


def plan(registry: Registry, settings: DirectorySettings, allow: bool) -> SyncResult:
    """Read the directory and the registry and plan the sync; change nothing."""
    from keyward.directory import guard
    from keyward.directory.diff import plan_sync
    from keyward.directory.ldap import read_directory
    from keyward.registry.directory import last_sync, load_people

    read = read_directory(settings, dict(os.environ))
    with registry.read() as session:
        people = load_people(session, settings.roles, registry.clock())
        last = last_sync(session)
    sync_plan = plan_sync(read, people, create_people=settings.create_people, roles=settings.roles)
    trips = guard.check(
        read,
        sync_plan,
        active_people=sum(1 for p in people if p.status == "active"),
        share=settings.mass_offboard_share,
        last_base_dn=(last or {}).get("applied_base_dn"),
    )
    return SyncResult(
        settings=settings,
        read=read,
        plan=sync_plan,
        trips=trips,
        blocking=guard.blocking(trips, allow),
        dry_run=True,
        allow_mass_offboard=allow,
    )


def sync(
    around: Surroundings,
    inv: Inventory,
    *,
    dry_run: bool,
    allow_mass_offboard: bool,
    on_wait: Callable[[str], None],
    holder: str = "keyward directory sync",
    component: str | None = None,
) -> SyncResult:
    """Plan, then (unless ``dry_run``) apply or refuse, and record the sync.

    ``keyward directory sync`` and the daemon's schedule (``sync_interval``) both run
    this: the same guard, the same alert, the same offboarding round.  ``on_wait`` is
    told who holds the writers' lock while an offboarding waits for it.
    """
    from keyward.registry.attribution import notify
    from keyward.registry.directory import apply_people, last_sync, raise_alert, record_sync

    settings = directory_settings(inv)
    registry = around.registry
    result = plan(registry, settings, allow_mass_offboard)
    result.dry_run = dry_run
    log = get_logger(**({"component": component} if component else {}))
    if dry_run:
        return result

    bound = {"component": component} if component else {}

    def log_events(tx: WriteTx) -> None:
        log_changes(tx, **bound)

    with registry.read() as session:
        previous = (last_sync(session) or {}).get("applied_base_dn")
    if result.blocking:
        summary = "directory sync refused: " + "; ".join(t.message for t in result.blocking)
        with registry.write(around.actor) as tx:
            result.alert_id = raise_alert(
                tx,
                summary[:500],
                {"url": settings.url, "guard": [t.kind for t in result.blocking]},
            )
            record_sync(tx, settings.url, result.details(previous))
        log_events(tx)
        log.error("directory_sync_refused", guard=[t.kind for t in result.blocking])
        notify(registry, around.actor, (result.alert_id,), inv.policy.alert_command)
        return result
    if not result.plan.empty:
        # Leavers first: the round reads the inventory and the agent key before it changes
        # anything, so a broken inventory stops the sync before any other change.
        if result.plan.offboards:
            result.cases, result.unconfirmed = offboard_and_confirm(
                around, inv.root, result.plan.offboards, holder, on_wait, log_events
            )
        with registry.write(around.actor) as tx:
            result.skipped = apply_people(tx, result.plan)
        log_events(tx)
        result.applied = True
    with registry.write(around.actor) as tx:
        record_sync(tx, settings.url, result.details(settings.base_dn))
    log_events(tx)
    log.info("directory_sync", outcome=result.outcome, **result.plan.counts())
    return result


def offboard_and_confirm(
    around: Surroundings,
    inventory_dir: Path,
    leavers: Sequence[Offboard],
    holder: str,
    on_wait: Callable[[str], None],
    log_events: Callable[[WriteTx], None],
) -> tuple[list[int], list[str]]:
    """Offboard ``leavers`` the way ``keyward offboard`` does; (case ids, unconfirmed hosts).

    The one place a directory sync enters the offboarding round: the registry
    is read for every managed file (the case's targets), the leavers are revoked
    and their cases opened in one transaction (with ``directory.person-offboarded``
    naming each entry's DN), then every host is reconciled under the writers' lock
    and the cases confirmed by read-back.
    """
    from sqlmodel import col, select

    from keyward.engine.inputs import load_inputs
    from keyward.engine.offboarding import case_targets, confirm_round
    from keyward.registry.directory import offboard_people
    from keyward.registry.models import OffboardingCase, OffboardingTarget

    registry = around.registry
    before = load_inputs(registry, around.clock, inventory_dir, None, None)
    targets = {leaver.username: case_targets(before, leaver.username) for leaver in leavers}
    with registry.write(around.actor) as tx:
        cases = [case.id or 0 for case in offboard_people(tx, leavers, targets)]
    log_events(tx)
    confirm_round(around, before, holder, on_wait)
    with registry.read() as session:
        open_hosts = session.exec(
            select(OffboardingTarget.host)
            .join(OffboardingCase, col(OffboardingCase.id) == col(OffboardingTarget.case_id))
            .where(
                col(OffboardingCase.id).in_(cases), col(OffboardingTarget.confirmed_at).is_(None)
            )
        ).all()
    return cases, sorted(set(open_hosts))
