"""The switch-over guard: exclusive mode never removes a line an adoption scan found
until someone has accounted for it.

Which hosts it covers: only hosts ``keyward adopt scan`` has read (a fleet that was never
scanned behaves exactly as before). On such a host, a line a plan would remove as
``drift`` (a key the registry does not hold) is refused when its key was found by the
host's latest scan, or, if that scan did not read every managed file, whatever its key,
unless the key was ignored or confirmed for removal (``adopt ignore``/``adopt remove``).
A claimed key is registered, so its lines are accounted for. Lines that appeared after a
complete scan are ordinary drift and go, as exclusive mode always removes them; lines
sshd does not honour grant nothing and are not held back (the report lists them).

The refusal is one line per host naming every held-back line with its last login, and the
host's files are left as they are; other hosts proceed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from keyward.plan import HostPlan
from keyward.state import AdoptionGuard


@dataclass(frozen=True)
class HeldLine:
    """A line the guard will not let exclusive mode remove yet."""

    account: str
    path: str
    lineno: int | None
    fingerprint: str
    last_login: datetime | None


def held_lines(host: str, plan: HostPlan, guard: AdoptionGuard) -> list[HeldLine]:
    """The removals of ``plan`` that nobody has accounted for (empty: go ahead)."""
    if host not in guard.sighted:
        return []
    sighted = guard.sighted[host]
    complete = host in guard.complete
    out: list[HeldLine] = []
    for file_plan in plan.files:
        for change in file_plan.changes:
            fingerprint = change.fingerprint
            if change.action != "remove" or change.reason != "drift" or fingerprint is None:
                continue
            if change.owner is not None or fingerprint in guard.decided:
                continue
            if complete and fingerprint not in sighted:
                continue
            out.append(
                HeldLine(
                    file_plan.target.account,
                    file_plan.path or file_plan.target.pattern,
                    change.lineno,
                    fingerprint,
                    guard.last_login.get(fingerprint),
                )
            )
    return out


def _login_text(value: datetime | None) -> str:
    return f"last login {value:%Y-%m-%d %H:%M} UTC" if value else "never logged in"


def refusal(host: str, held: Sequence[HeldLine], complete: bool = True) -> str:
    """The one-line error for a host whose switch-over is held back."""
    lines = "; ".join(
        f"{h.account} {h.path}:{h.lineno if h.lineno is not None else '?'} {h.fingerprint} "
        f"({_login_text(h.last_login)})"
        for h in held
    )
    scan = "" if complete else " (its last adoption scan did not read every file)"
    count = f"{len(held)} line{'s' if len(held) != 1 else ''}"
    return (
        f"{host}: refusing to switch to exclusive{scan}: it would remove {count} nobody "
        f"has accounted for: {lines}; claim, ignore or confirm them for removal "
        "(keyward adopt report)"
    )


def check(host: str, plan: HostPlan, guard: AdoptionGuard) -> str | None:
    """The refusal for ``host`` under ``plan``, or None when every removal is accounted for."""
    held = held_lines(host, plan, guard)
    if not held:
        return None
    return refusal(host, held, host in guard.complete)
