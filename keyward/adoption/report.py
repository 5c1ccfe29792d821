"""``adopt report`` (pure): the scanned keys grouped by fingerprint, what each one is, and
what switching each host to ``exclusive`` would remove.

A key is ``registered`` (the registry holds it: whose, and whether that person is still
active), the ``agent``'s own, a ``break-glass`` key of the inventory, or ``unknown``.
Findings on top of that: ``weak`` (the fleet's key policy would refuse it: DSA, RSA below
``min_rsa_bits``, a type not allowed), ``shared`` (found under more than one account name:
likely a deploy or team key, which keys being personal does not allow), ``offboarded``
(the registered owner has left: a finding in its own right, the key still opens doors),
``revoked``/``expired`` (registered, no longer valid) and ``never-used`` (no accepted login
with it in the collected sshd logs). A key is accounted for when it is registered, the
agent's or break-glass, or an administrator ignored it or confirmed it for removal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from keyward.adoption.lines import Sighting, Unhonoured, Where
from keyward.desired import DesiredFile, FileTarget
from keyward.errors import KeywardError
from keyward.keys import KeyPolicy, check_policy, decode_key
from keyward.state import RegistrySnapshot

KeyKind = Literal["registered", "agent", "break-glass", "unknown"]
KIND_ORDER = {"unknown": 0, "registered": 1, "break-glass": 2, "agent": 3}


@dataclass(frozen=True)
class Decision:
    """``adopt ignore`` (``ignore``) or ``adopt remove`` (``remove``) of one key, with why."""

    fingerprint: str
    decision: Literal["ignore", "remove"]
    reason: str
    decided_by: str
    decided_at: datetime


@dataclass(frozen=True)
class SeenKey:
    """One key as the scans recorded it: when it was first and last found anywhere."""

    fingerprint: str
    key_type: str
    bits: int
    comment: str
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class ScannedHost:
    """One host's latest scan: when, whether it failed, and files it could not read."""

    host: str
    environment: str
    mode: str
    scanned_at: datetime
    error: str | None
    file_errors: tuple[tuple[str, str, str], ...] = ()  # (account, path or pattern, why)


@dataclass(frozen=True)
class ScanData:
    """Everything ``adopt scan`` has recorded, as plain values."""

    hosts: tuple[ScannedHost, ...]
    keys: tuple[SeenKey, ...]
    sightings: tuple[Sighting, ...]
    unhonoured: tuple[Unhonoured, ...]


@dataclass(frozen=True)
class Place:
    """Where a key was found: host, account, file, line, and the line's options."""

    host: str
    account: str
    path: str
    lineno: int
    options: tuple[str, ...]


@dataclass(frozen=True)
class KeyFinding:
    fingerprint: str
    key_type: str
    bits: int
    comment: str
    kind: KeyKind
    owner: str | None
    owner_status: str | None
    flags: tuple[str, ...]
    weak_reason: str | None
    first_seen: datetime
    last_seen: datetime
    last_login: datetime | None
    decision: Decision | None
    places: tuple[Place, ...]

    @property
    def accounted(self) -> bool:
        return self.kind != "unknown" or self.decision is not None


@dataclass(frozen=True)
class Removal:
    """A line switching its host to ``exclusive`` would remove."""

    account: str
    path: str
    lineno: int
    fingerprint: str | None  # None: a line sshd does not honour
    what: str  # the owner, "unknown", or sshd's reason for skipping the line
    accounted: bool
    last_login: datetime | None


@dataclass(frozen=True)
class HostFinding:
    host: ScannedHost
    removals: tuple[Removal, ...]

    @property
    def unaccounted(self) -> int:
        return sum(1 for r in self.removals if not r.accounted)


@dataclass(frozen=True)
class Report:
    keys: tuple[KeyFinding, ...]
    hosts: tuple[HostFinding, ...]
    unhonoured: tuple[Unhonoured, ...]


def _path(where: Where) -> str:
    return where.path or where.pattern


def weakness(key_type: str, blob: bytes, policy: KeyPolicy) -> str | None:
    """Why the fleet's key policy would refuse this key, or None."""
    try:
        check_policy(decode_key(key_type, blob), policy)
    except (KeywardError, ValueError) as exc:
        return str(exc)
    return None


def classify(
    seen: SeenKey,
    places: Sequence[Sighting],
    snapshot: RegistrySnapshot,
    policy: KeyPolicy,
    special: Mapping[str, KeyKind],
    decision: Decision | None,
    last_login: datetime | None,
    now: datetime,
) -> KeyFinding:
    """One key's finding (pure): its kind, owner and flags."""
    record = snapshot.by_fingerprint.get(seen.fingerprint)
    owner = record.owner if record is not None else None
    person = snapshot.people.get(owner) if owner is not None else None
    kind: KeyKind = "registered" if record is not None else special.get(seen.fingerprint, "unknown")
    flags: list[str] = []
    weak = weakness(seen.key_type, places[0].blob, policy) if places else None
    if weak is not None:
        flags.append("weak")
    if len({p.where.account for p in places}) > 1:
        flags.append("shared")
    if person is not None and person.status != "active":
        flags.append(person.status)
    if record is not None and record.revoked_at is not None:
        flags.append("revoked")
    elif record is not None and record.expires_at <= now:
        flags.append("expired")
    if last_login is None:
        flags.append("never-used")
    return KeyFinding(
        fingerprint=seen.fingerprint,
        key_type=seen.key_type,
        bits=seen.bits,
        comment=seen.comment,
        kind=kind,
        owner=owner,
        owner_status=person.status if person is not None else None,
        flags=tuple(flags),
        weak_reason=weak,
        first_seen=seen.first_seen,
        last_seen=seen.last_seen,
        last_login=last_login,
        decision=decision,
        places=tuple(
            Place(p.where.host, p.where.account, _path(p.where), p.lineno, p.options)
            for p in sorted(places, key=lambda s: (s.where.host, s.where.account, s.lineno))
        ),
    )


def build_report(
    data: ScanData,
    snapshot: RegistrySnapshot,
    policy: KeyPolicy,
    special: Mapping[str, KeyKind],
    decisions: Mapping[str, Decision],
    last_login: Mapping[str, datetime],
    desired: Mapping[FileTarget, DesiredFile],
    now: datetime,
) -> Report:
    """The whole report. ``special`` names the agent's and break-glass fingerprints;
    ``desired`` is the desired state of the scanned hosts (what exclusive mode keeps)."""
    by_key: dict[str, list[Sighting]] = {}
    for s in data.sightings:
        by_key.setdefault(s.fingerprint, []).append(s)
    findings = [
        classify(
            seen,
            by_key.get(seen.fingerprint, []),
            snapshot,
            policy,
            special,
            decisions.get(seen.fingerprint),
            last_login.get(seen.fingerprint),
            now,
        )
        for seen in data.keys
        if seen.fingerprint in by_key
    ]
    findings.sort(key=lambda f: (KIND_ORDER[f.kind], f.owner or "", f.fingerprint))
    index = {f.fingerprint: f for f in findings}
    lines: dict[str, list[Sighting]] = {}
    skipped: dict[str, list[Unhonoured]] = {}
    for s in data.sightings:
        lines.setdefault(s.where.host, []).append(s)
    for u in data.unhonoured:
        skipped.setdefault(u.where.host, []).append(u)
    hosts = tuple(
        HostFinding(
            host,
            tuple(
                _removals(
                    host.host,
                    lines.get(host.host, []),
                    skipped.get(host.host, []),
                    index,
                    desired,
                )
            ),
        )
        for host in sorted(data.hosts, key=lambda h: h.host)
    )
    return Report(tuple(findings), hosts, data.unhonoured)


def _removals(
    host: str,
    sightings: Sequence[Sighting],
    unhonoured: Sequence[Unhonoured],
    index: Mapping[str, KeyFinding],
    desired: Mapping[FileTarget, DesiredFile],
) -> list[Removal]:
    """What exclusive mode would remove from ``host``: what the desired state does not hold."""
    kept: dict[FileTarget, set[tuple[str, tuple[str, ...]]]] = {}
    used: set[tuple[FileTarget, str, tuple[str, ...]]] = set()
    out: list[tuple[str, str, int, Removal]] = []
    for s in sorted(sightings, key=lambda x: x.lineno):
        target = FileTarget(host, s.where.account, s.where.pattern)
        wanted = desired.get(target)
        if wanted is None:  # no longer managed: exclusive mode would not touch it
            continue
        if target not in kept:
            kept[target] = {(line.key.fingerprint, line.options) for line in wanted.lines}
        finding = index[s.fingerprint]
        what = finding.owner or ("unknown" if finding.kind == "unknown" else finding.kind)
        accounted = finding.accounted
        if (s.fingerprint, s.options) in kept[target]:
            if (target, s.fingerprint, s.options) not in used:
                used.add((target, s.fingerprint, s.options))
                continue
            what, accounted = f"{what} (duplicate of a line that stays)", True
        removal = Removal(
            s.where.account,
            _path(s.where),
            s.lineno,
            s.fingerprint,
            what,
            accounted,
            finding.last_login,
        )
        out.append((s.where.account, _path(s.where), s.lineno, removal))
    for u in unhonoured:
        if FileTarget(host, u.where.account, u.where.pattern) not in desired:
            continue
        removal = Removal(
            u.where.account, _path(u.where), u.lineno, None, f"not honoured: {u.reason}", True, None
        )
        out.append((u.where.account, _path(u.where), u.lineno, removal))
    out.sort(key=lambda item: item[:3])
    return [item[3] for item in out]
