"""``keyward directory sync`` and ``status``: the engine's sync with the command's surroundings.

The sync itself (read, compare, guard, apply, offboard) is ``keyward.engine.directory_sync``,
shared with the daemon's schedule; this module gives it the command's registry, actor and
lock-wait message, and turns a result into the JSON both commands print.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keyward.cli.context import AppContext
from keyward.engine.directory_sync import SyncResult, directory_settings

if TYPE_CHECKING:
    from keyward.inventory.directory_settings import DirectorySettings
    from keyward.inventory.model import Inventory

__all__ = ["SyncResult", "directory_settings", "plan", "result_json", "sync"]


def plan(app: AppContext, settings: DirectorySettings, allow: bool) -> SyncResult:
    """Read the directory and the registry and plan the sync; change nothing."""
    from keyward.engine import directory_sync

    return directory_sync.plan(app.registry(), settings, allow)


def sync(
    app: AppContext, inv: Inventory, *, dry_run: bool, allow_mass_offboard: bool
) -> SyncResult:
    """Plan, then (unless ``dry_run``) apply or refuse, and record the sync."""
    from keyward.cli.rounds import say_lock_wait, surroundings
    from keyward.engine import directory_sync

    return directory_sync.sync(
        surroundings(app),
        inv,
        dry_run=dry_run,
        allow_mass_offboard=allow_mass_offboard,
        on_wait=say_lock_wait,
    )


def result_json(result: SyncResult) -> dict[str, Any]:
    """The machine-readable form ``sync --json`` and ``status --json`` print."""
    sync_plan = result.plan
    return {
        "outcome": result.outcome,
        "url": result.settings.url,
        "base_dn": result.settings.base_dn,
        "read": {
            "entries": len(result.read.entries),
            "complete": result.read.complete,
            "error": result.read.error,
            "skipped": list(result.read.skipped),
        },
        "counts": sync_plan.counts(),
        "changes": {
            "create": [
                {
                    "username": c.entry.username,
                    "dn": c.entry.dn,
                    "name": c.entry.name,
                    "email": c.entry.email,
                }
                for c in sync_plan.creates
            ],
            "link": [{"username": k.username, "dn": k.dn} for k in sync_plan.links],
            "update": [
                {"username": u.username, "dn": u.dn, "changes": u.changes}
                for u in sync_plan.updates
            ],
            "offboard": [
                {"username": o.username, "dn": o.dn, "reason": o.reason}
                for o in sync_plan.offboards
            ],
            "roles": [
                {
                    "username": r.username,
                    "dn": r.dn,
                    "role": r.role,
                    "group": r.group,
                    "grant": r.grant,
                }
                for r in sync_plan.roles
            ],
        },
        "notes": list(sync_plan.notes),
        "guard": [
            {
                "kind": t.kind,
                "message": t.message,
                "overridable": t.overridable,
                "blocking": t in result.blocking,
            }
            for t in result.trips
        ],
        "alert_id": result.alert_id,
        "skipped": result.skipped,
        "cases": result.cases,
        "unconfirmed_hosts": result.unconfirmed,
    }
