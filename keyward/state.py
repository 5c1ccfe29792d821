"""The registry as plain frozen values: what the pure core reads.

``keyward.registry.snapshot`` builds a ``RegistrySnapshot`` with a fixed
number of queries, whatever the size of the fleet; ``keyward.desired``
turns it (with the inventory and the time) into file contents.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from keyward.keys import PublicKey


@dataclass(frozen=True)
class PersonRecord:
    username: str
    full_name: str
    status: str  # active | offboarded


@dataclass(frozen=True)
class KeyRecord:
    key: PublicKey
    owner: str
    attestation: str
    added_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None

    @property
    def fingerprint(self) -> str:
        return self.key.fingerprint

    def usable_at(self, now: datetime) -> bool:
        return self.revoked_at is None and self.expires_at > now


@dataclass(frozen=True)
class GrantRecord:
    """An open membership (not ended); it may still have lapsed by ``until``."""

    username: str
    role: str
    granted_by: str
    granted_at: datetime
    reason: str
    until: datetime | None = None
    customer: str | None = None
    environment: str | None = None  # set for an approved access request: one environment only
    request_id: int | None = None

    def active_at(self, now: datetime) -> bool:
        return self.until is None or self.until > now


@dataclass(frozen=True)
class AdoptionGuard:
    """What ``keyward adopt scan`` found, as the switch-over guard needs it.

    ``sighted``: per scanned host, the fingerprints its latest scan found; ``complete``:
    the hosts whose latest scan read every managed file.  ``decided``: keys an
    administrator ignored or confirmed for removal (``adopt ignore``/``adopt remove``).
    ``last_login``: the newest accepted login of each sighted key the registry does not
    hold, for the refusal message.  Empty for a fleet that was never scanned: no guard.
    """

    sighted: Mapping[str, frozenset[str]] = field(default_factory=dict)
    complete: frozenset[str] = frozenset()
    decided: frozenset[str] = frozenset()
    last_login: Mapping[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class RegistrySnapshot:
    """Everything the desired state needs from the registry, read in one go."""

    people: Mapping[str, PersonRecord]
    keys: tuple[KeyRecord, ...]
    grants: tuple[GrantRecord, ...]
    head_seq: int = 0
    # People in failure mode: username -> addresses they may still log in from
    # (an empty set means suspended: none of their keys is deployed).
    restricted: Mapping[str, frozenset[str]] = field(default_factory=dict)
    by_fingerprint: Mapping[str, KeyRecord] = field(default_factory=dict)
    adoption: AdoptionGuard = field(default_factory=AdoptionGuard)

    def __post_init__(self) -> None:
        if not self.by_fingerprint:
            object.__setattr__(self, "by_fingerprint", {k.fingerprint: k for k in self.keys})

    def keys_of(self) -> Mapping[str, tuple[KeyRecord, ...]]:
        grouped: dict[str, list[KeyRecord]] = {}
        for record in self.keys:
            grouped.setdefault(record.owner, []).append(record)
        return {owner: tuple(records) for owner, records in grouped.items()}
