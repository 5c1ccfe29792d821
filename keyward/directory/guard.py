"""The mass-accident guard: when a sync must offboard nobody (pure).

A directory answer that is empty, partial or about another subtree looks
exactly like everyone having left. Offboarding is the one change that cannot
be taken back quietly (keys are revoked on every host), so before a sync acts
it is checked here; each reason found stops the whole sync, raises an alert
and exits 1, until an administrator reruns it with ``--allow-mass-offboard``.
A failed search cannot be overridden: there is nothing to act on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from keyward.directory.model import DirectoryRead, SyncPlan


@dataclass(frozen=True)
class Trip:
    """One reason the guard stops a sync."""

    kind: str  # failed | empty | partial | base-dn-changed | too-many
    message: str
    overridable: bool = True


def check(
    read: DirectoryRead,
    plan: SyncPlan,
    *,
    active_people: int,
    share: float,
    last_base_dn: str | None,
) -> list[Trip]:
    """Every reason to stop; an empty list lets the sync go ahead.

    ``active_people`` is the number of active people in the registry; at most
    ``share`` of them (rounded down, but at least one) may be offboarded in one
    sync. ``last_base_dn`` is the base DN of the last sync that was applied.
    """
    trips: list[Trip] = []
    if read.error is not None:
        return [Trip("failed", f"the directory search failed: {read.error}", overridable=False)]
    if not read.complete:
        trips.append(
            Trip(
                "partial",
                f"the paged search was cut short after {len(read.entries)} entries",
            )
        )
    if not read.entries and not read.ambiguous:
        trips.append(Trip("empty", f"the search under {read.base_dn} returned no usable entry"))
    if last_base_dn is not None and last_base_dn.lower() != read.base_dn.lower():
        trips.append(
            Trip(
                "base-dn-changed",
                f"the base DN changed from {last_base_dn} to {read.base_dn} since the last sync",
            )
        )
    limit = max(1, math.floor(share * active_people))
    if len(plan.offboards) > limit:
        trips.append(
            Trip(
                "too-many",
                f"{len(plan.offboards)} of {active_people} active people would be offboarded; "
                f"mass_offboard_share {share:g} allows {limit}",
            )
        )
    return trips


def blocking(trips: list[Trip], allow_mass_offboard: bool) -> list[Trip]:
    """The trips that still stop the sync, given ``--allow-mass-offboard``."""
    return [t for t in trips if not (allow_mass_offboard and t.overridable)]
