"""Offboarding as a round: which files a case covers, and the round that confirms it.

``keyward offboard`` and ``keyward directory sync`` both take people's access away the same
way: the registry change (revoke everything, open the case) is theirs, in their own
transaction; this module says which managed files the case must see confirmed, and runs the
confirming round under the writers' lock with the registry read again, so the revocation is
in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from keyward.engine.inputs import RoundInputs, refresh
from keyward.engine.round import (
    Progress,
    RoundSettings,
    Surroundings,
    no_progress,
    run_round,
    writers_lock,
)

if TYPE_CHECKING:
    from keyward.agent.reconcile import HostResult

CaseTarget = tuple[str, str, str, bool]
"""(host, account, file pattern, whether the person had access there)."""


def case_targets(inputs: RoundInputs, username: str) -> list[CaseTarget]:
    """Every managed file of the fleet, marking those where the person had access."""
    return [
        (
            target.host,
            target.account,
            target.pattern,
            any(line.owner == username and line.kind == "person" for line in desired.lines),
        )
        for target, desired in sorted(
            inputs.desired.items(),
            key=lambda item: (item[0].host, item[0].account, item[0].pattern),
        )
    ]


def confirm_round(
    surroundings: Surroundings,
    before: RoundInputs,
    holder: str,
    on_wait: Callable[[str], None],
    progress: Progress = no_progress,
) -> list[HostResult]:
    """Reconcile every host of ``before`` after the revocation, confirming open cases.

    Waits as long as it takes for the writers' lock (an offboarding must not give up
    because a reconcile is running); the inventory and hosts are ``before``'s, the
    registry is read again.
    """
    with writers_lock(surroundings, holder, float("inf"), on_wait):
        after = refresh(
            surroundings.registry,
            surroundings.clock,
            before.inventory,
            before.hosts,
            before.agent_key,
        )
        return run_round(surroundings, after, RoundSettings(), progress)
