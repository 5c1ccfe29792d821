"""``adopt suggest`` (pure): role grants that keep claimed people where their keys are today.

For every active person, each (host, account) where the scan found one of their valid
registered keys is a place they log in to now. A role "covers" such a place when an
``[[access]]`` rule of the inventory gives it that account on that host. Places already
covered by a role the person holds need nothing; for the rest the suggestion picks roles
greedily: the role covering most of the person's remaining places first (ties: the one
granting fewest places the person has no key on today, then by name), until every place
a rule can cover is covered. Places no rule covers are listed so the inventory can be
fixed, and so are keys whose attestation is below an environment's ``min_attestation``
(a grant would not deploy them there). The administrator reviews, then applies them with
``adopt suggest --apply``; each grant's reason is ``adopted from host state``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from keyward.adoption.lines import Sighting
from keyward.attestation import attestation_rank
from keyward.inventory.model import Host, Inventory
from keyward.state import RegistrySnapshot

ADOPTED_REASON = "adopted from host state"

Place = tuple[str, str]  # (host, account)


@dataclass(frozen=True)
class Suggestion:
    """Grant ``role`` to ``person``: it covers ``places`` where their keys are today."""

    person: str
    role: str
    places: tuple[Place, ...]
    beyond: int  # places of the scanned hosts this role would also open to them


@dataclass(frozen=True)
class Uncovered:
    """A place where a person's key is today that no grant can keep, and why."""

    person: str
    host: str
    account: str
    why: str


@dataclass(frozen=True)
class Suggestions:
    grants: tuple[Suggestion, ...]
    uncovered: tuple[Uncovered, ...]


def _role_places(inventory: Inventory, hosts: Iterable[Host]) -> dict[str, set[Place]]:
    """Every (host, account) of ``hosts`` each role may reach through the inventory's rules."""
    out: dict[str, set[Place]] = {}
    for host in hosts:
        for rule in inventory.access_for(host):
            for role in rule.roles:
                for account in rule.accounts:
                    out.setdefault(role, set()).add((host.name, account))
    return out


def suggest(
    sightings: Sequence[Sighting], snapshot: RegistrySnapshot, inventory: Inventory, now: datetime
) -> Suggestions:
    """The grants to suggest and the places none can cover (deterministic order)."""
    hosts = {h.name: h for h in inventory.hosts()}
    scanned = [hosts[name] for name in sorted({s.where.host for s in sightings}) if name in hosts]
    role_places = _role_places(inventory, scanned)
    held: dict[str, set[str]] = {}
    for grant in snapshot.grants:
        if grant.active_at(now) and grant.environment is None:
            held.setdefault(grant.username, set()).add(grant.role)
    needs: dict[str, set[Place]] = {}
    uncovered: list[Uncovered] = []
    for s in sightings:
        record = snapshot.by_fingerprint.get(s.fingerprint)
        if record is None or not record.usable_at(now):
            continue
        owner = snapshot.people.get(record.owner)
        if owner is None or owner.status != "active":
            continue
        host = hosts.get(s.where.host)
        if host is None:
            uncovered.append(
                Uncovered(record.owner, s.where.host, s.where.account, "host not in inventory")
            )
            continue
        needs.setdefault(record.owner, set()).add((host.name, s.where.account))
        minimum = inventory.environment(host.environment).min_attestation
        if attestation_rank(record.attestation) < attestation_rank(minimum):
            uncovered.append(
                Uncovered(
                    record.owner,
                    host.name,
                    s.where.account,
                    f"key {s.fingerprint} has attestation {record.attestation}, below "
                    f"{host.environment}'s min_attestation {minimum}: raise it "
                    "(keyward key attest) or it is not deployed there",
                )
            )
    grants: list[Suggestion] = []
    for person in sorted(needs):
        mine = held.get(person, set())
        covered = set().union(*(role_places.get(r, set()) for r in mine)) if mine else set()
        remaining = needs[person] - covered
        while remaining:
            best = min(
                (r for r in role_places if r not in mine and role_places[r] & remaining),
                key=lambda r: (
                    -len(role_places[r] & remaining),
                    len(role_places[r] - needs[person]),
                    r,
                ),
                default=None,
            )
            if best is None:
                break
            places = tuple(sorted(role_places[best] & remaining))
            grants.append(Suggestion(person, best, places, len(role_places[best] - needs[person])))
            mine = mine | {best}
            remaining -= role_places[best]
        for host_name, account in sorted(remaining):
            uncovered.append(
                Uncovered(
                    person,
                    host_name,
                    account,
                    f"no [[access]] rule gives any role account {account!r} on {host_name}",
                )
            )
    unique = sorted(set(uncovered), key=lambda u: (u.person, u.host, u.account, u.why))
    return Suggestions(tuple(grants), tuple(unique))
