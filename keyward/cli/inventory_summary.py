"""The text ``keyward inventory check`` prints for a valid inventory: totals, then each environment.

Presentation only, so it lives with the command line rather than in
``keyward.inventory``, which loads and checks and never prints.
"""

from __future__ import annotations

from keyward.inventory.model import Inventory


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def summarize(inventory: Inventory) -> str:
    """A few lines for ``keyward inventory check``: totals, then one line per environment."""
    hosts = inventory.hosts()
    accounts = sum(len(host.managed_accounts) for host in hosts)
    rules = sum(len(env.access) for env in inventory.environments)
    glass = sum(len(env.break_glass) for env in inventory.environments)
    lines = [
        f"inventory {inventory.root}: {_count(len(inventory.environments), 'environment')}, "
        f"{_count(len(hosts), 'host')}, {_count(accounts, 'managed account')}, "
        f"{_count(rules, 'access rule')}, {_count(glass, 'break-glass key')}"
    ]
    for env in inventory.environments:
        customer = f", customer {env.customer}" if env.customer else ""
        roles = sorted({role for rule in env.access for role in rule.roles})
        lines.append(
            f"  {env.name} ({env.source_file}): min_attestation {env.min_attestation}{customer}; "
            f"{_count(len(env.hosts), 'host')}, "
            f"{_count(sum(len(h.managed_accounts) for h in env.hosts), 'managed account')}, "
            f"{_count(len(env.access), 'access rule')}, "
            f"{_count(len(env.break_glass), 'break-glass key')}; "
            f"roles: {', '.join(roles) or 'none'}"
        )
    return "\n".join(lines)
