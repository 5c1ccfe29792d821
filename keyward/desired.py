"""The desired state: registry + inventory + now → the exact lines of every managed file.

A pure function.  For each (host, account, file) it lists the lines keyward
wants there, in a deterministic order: the agent's own key (on the login
account), break-glass keys, then people's keys.  A person's key is deployed
when, at ``now``:

- the person is active, the key is neither revoked nor expired,
- the key's attestation meets the environment's ``min_attestation``,
- an ``[[access]]`` rule covering the host and account names a role the
  person holds through a grant that has not lapsed (and whose customer, if
  any, is the host's customer).

Every person line carries ``expiry-time`` (the key's expiry or the grant's
``until``, whichever is earlier), so sshd itself refuses it when time is up
even if the agent never runs again.  The cost is one pass over the registry
per access rule, not per host: hosts that share rules share the work.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Literal

from keyward.attestation import ATTESTATION_LEVELS, attestation_rank
from keyward.inventory.model import AccessRule, Host, Inventory, Mode
from keyward.keys import PublicKey
from keyward.memo import computed_once
from keyward.options import expiry_time_option, render_options
from keyward.state import GrantRecord, KeyRecord, RegistrySnapshot

RANKS: dict[str, int] = {level: rank for rank, level in enumerate(ATTESTATION_LEVELS)}
LineKind = Literal["agent", "break-glass", "person"]
KIND_ORDER: Mapping[str, int] = {"agent": 0, "break-glass": 1, "person": 2}

HEADER = (
    "# This file is managed by keyward. Do not edit it by hand: lines that keyward\n"
    "# did not write are removed at the next reconcile (see 'keyward plan').\n"
)
BLOCK_BEGIN = "# keyward:begin (managed by keyward; do not edit inside this block)"
BLOCK_END = "# keyward:end"
COMMENT_PREFIX = "keyward:"
_LABEL_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@dataclass(frozen=True, init=False)
class DesiredLine:
    """One authorized_keys line keyward wants: a key, its options, and whose it is."""

    key: PublicKey
    options: tuple[str, ...]
    owner: str
    kind: LineKind
    expires_at: datetime | None
    roles: tuple[str, ...]

    def __init__(
        self,
        key: PublicKey,
        options: tuple[str, ...],
        owner: str,
        kind: LineKind,
        expires_at: datetime | None = None,
        roles: tuple[str, ...] = (),
    ) -> None:
        # One dict update instead of the six ``object.__setattr__`` calls a frozen
        # dataclass makes: a large fleet builds one of these per key per access rule.
        self.__dict__.update(
            key=key, options=options, owner=owner, kind=kind, expires_at=expires_at, roles=roles
        )

    @computed_once
    def identity(self) -> tuple[bytes, tuple[str, ...]]:
        """sshd treats lines with the same key but other options as alternatives."""
        return (self.key.blob, self.options)

    def render(self) -> str:
        return self.rendered

    @computed_once
    def rendered(self) -> str:
        """The line as written to hosts (computed once: many files share one line object)."""
        label = "break-glass" if self.kind == "break-glass" else self.owner
        if self.kind == "agent":
            label = "agent"
        if not _LABEL_RE.fullmatch(label):
            raise ValueError(f"refusing to render a line for owner {label!r}")
        comment = f"{COMMENT_PREFIX}{label}:{self.key.short_fingerprint}"
        body = f"{self.key.openssh()} {comment}"
        if self.options:
            return f"{_render_options(self.options)} {body}"
        return body

    @computed_once
    def order(self) -> tuple[int, str, str, tuple[str, ...]]:
        """Deterministic file order: agent, break-glass, then people by name and key."""
        return (KIND_ORDER[self.kind], self.owner, self.key.fingerprint, self.options)

    def sort_key(self) -> tuple[int, str, str, tuple[str, ...]]:
        return self.order


@dataclass(frozen=True)
class FileTarget:
    """One managed file: an AuthorizedKeysFile pattern for one account on one host."""

    host: str
    account: str
    pattern: str


@dataclass(frozen=True)
class DesiredFile:
    target: FileTarget
    mode: Mode
    lines: tuple[DesiredLine, ...]
    is_login: bool = False
    # Rendered once per distinct set of lines by compute_desired and shared by every file
    # with that set; computed on demand when a DesiredFile is built by hand.
    rendered: bytes | None = field(default=None, compare=False, repr=False)
    digest: str | None = field(default=None, compare=False, repr=False)

    def exclusive_content(self) -> bytes:
        return self.rendered if self.rendered is not None else render_lines(self.lines)

    def content_digest(self) -> str:
        """SHA-256 of the exclusive content: what the file must hold, in constant time."""
        if self.digest is not None:
            return self.digest
        return hashlib.sha256(self.exclusive_content()).hexdigest()


_EXPIRY_RE = re.compile(r'expiry-time="\d{14}Z"')


def _render_options(options: tuple[str, ...]) -> str:
    """``render_options`` with the allowlist check done once per distinct option set.

    keyward appends its own ``expiry-time`` last; that value is generated, not
    user input, and differs per key, so it is checked by a strict pattern instead.
    """
    if options and _EXPIRY_RE.fullmatch(options[-1]):
        head = options[:-1]
        return (_render_checked(head) + "," if head else "") + options[-1]
    return _render_checked(options)


@functools.lru_cache(maxsize=1024)
def _render_checked(options: tuple[str, ...]) -> str:
    return render_options(options)


@functools.lru_cache(maxsize=2048)
def render_lines(lines: tuple[DesiredLine, ...]) -> bytes:
    """Header plus lines; hosts with the same access share one tuple, so one rendering."""
    return (HEADER + "".join(line.render() + "\n" for line in lines)).encode()


def _person_lines(
    rule: AccessRule,
    min_attestation: str,
    customer: str | None,
    snapshot: RegistrySnapshot,
    keys_by_owner: Mapping[str, tuple[KeyRecord, ...]],
    grants_by_role: Mapping[str, tuple[GrantRecord, ...]],
    now: datetime,
    made: _Made,
) -> tuple[DesiredLine, ...]:
    """Lines a rule gives, computed once per (rule, customer) and shared by its hosts.

    ``made`` is shared by all the rules of one call: a person's usable keys are
    filtered once per attestation minimum, and a line that several rules give alike
    is one object, so it is rendered and sorted once.
    """
    minimum = attestation_rank(min_attestation)
    # For each (key, options) the latest end among the grants that give it.
    best: dict[tuple[bytes, tuple[str, ...]], tuple[KeyRecord, datetime, set[str]]] = {}
    for grant in (g for role in dict.fromkeys(rule.roles) for g in grants_by_role.get(role, ())):
        if not grant.active_at(now):
            continue
        if grant.customer is not None and grant.customer != customer:
            continue
        if grant.environment is not None and grant.environment != rule.environment:
            continue
        person = snapshot.people.get(grant.username)
        if person is None or person.status != "active":
            continue
        allowed_from = snapshot.restricted.get(grant.username)
        if allowed_from is not None and not allowed_from:
            continue  # failure mode "suspend" (or "restrict" with no known address)
        usable = made.usable.get((grant.username, minimum))
        if usable is None:
            usable = made.usable[(grant.username, minimum)] = tuple(
                record
                for record in keys_by_owner.get(grant.username, ())
                if record.usable_at(now) and RANKS.get(record.attestation, -1) >= minimum
            )
        for record in usable:
            end = record.expires_at if grant.until is None else min(record.expires_at, grant.until)
            options = rule.options
            if allowed_from:
                # Failure mode "restrict": only the addresses this person was seen using.
                options = (
                    *(o for o in options if not o.lower().startswith("from=")),
                    'from="' + ",".join(sorted(allowed_from)) + '"',
                )
            if record.attestation == "sk" and "verify-required" not in options:
                options = (*options, "verify-required")
            ident = (record.key.blob, options)
            previous = best.get(ident)
            if previous is None:
                best[ident] = (record, end, {grant.role})
            else:
                roles = previous[2] | {grant.role}
                best[ident] = (record, max(previous[1], end), roles)
    lines: list[DesiredLine] = []
    for (_, options), (record, end, roles) in best.items():
        sorted_roles = tuple(sorted(roles))
        # The snapshot keeps every record alive for the call, so its id is a safe key.
        key = (id(record), options, end, sorted_roles)
        line = made.lines.get(key)
        if line is None:
            line = made.lines[key] = DesiredLine(
                key=record.key,
                options=(*options, _expiry_option(end)),
                owner=record.owner,
                kind="person",
                expires_at=end,
                roles=sorted_roles,
            )
        lines.append(line)
    lines.sort(key=_ORDER)
    return tuple(lines)


@dataclass
class _Made:
    """What one ``compute_desired`` call has already built, for its rules to share."""

    usable: dict[tuple[str, int], tuple[KeyRecord, ...]] = field(default_factory=dict)
    lines: dict[tuple[int, tuple[str, ...], datetime, tuple[str, ...]], DesiredLine] = field(
        default_factory=dict
    )


# Many keys share an end (a grant's ``until``, keys added the same day): format each once.
_expiry_option = functools.lru_cache(maxsize=4096)(expiry_time_option)


_ORDER = attrgetter("order")
_RENDERED = attrgetter("rendered")


def _merge(parts: Sequence[tuple[DesiredLine, ...]]) -> tuple[DesiredLine, ...]:
    """One file's lines: the parts' union without repeated identities, in file order.

    Each part is already in file order (``_person_lines`` sorts once per rule), so
    a single part needs no work and several are merged from sorted runs.
    """
    if len(parts) == 1:
        return parts[0]
    unique: dict[tuple[bytes, tuple[str, ...]], DesiredLine] = {}
    for part in parts:
        for line in part:
            unique.setdefault(line.identity, line)
    return tuple(sorted(unique.values(), key=_ORDER))


@contextmanager
def _without_cycle_collection() -> Iterator[None]:
    """Pause Python's cyclic garbage collector, restoring its previous state after.

    ``compute_desired`` allocates hundreds of thousands of small objects for a large
    organisation and creates no reference cycles, so the collections those allocations
    trigger (each full one walking the whole registry snapshot) find nothing to free;
    they were a quarter of its time. Reference counting still frees everything at once.
    If two threads overlap, the collector may come back on early: slower, never wrong.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compute_desired(
    snapshot: RegistrySnapshot,
    inventory: Inventory,
    hosts: Sequence[Host],
    agent_key: PublicKey | None,
    now: datetime,
) -> dict[FileTarget, DesiredFile]:
    """Every managed file of ``hosts`` with the lines it must hold at ``now``."""
    with _without_cycle_collection():
        return _compute(snapshot, inventory, hosts, agent_key, now)


def _compute(
    snapshot: RegistrySnapshot,
    inventory: Inventory,
    hosts: Sequence[Host],
    agent_key: PublicKey | None,
    now: datetime,
) -> dict[FileTarget, DesiredFile]:
    keys_by_owner = snapshot.keys_of()
    grants_by_role: dict[str, list[GrantRecord]] = {}
    for grant in snapshot.grants:
        grants_by_role.setdefault(grant.role, []).append(grant)
    by_role = {role: tuple(grants) for role, grants in grants_by_role.items()}
    rule_cache: dict[tuple[int, str | None], tuple[DesiredLine, ...]] = {}
    made = _Made()
    merged_cache: dict[tuple[object, ...], tuple[tuple[DesiredLine, ...], bytes, str]] = {}
    result: dict[FileTarget, DesiredFile] = {}
    for host in hosts:
        env = inventory.environment(host.environment)
        rules = inventory.access_for(host)
        glass = inventory.break_glass_for(host)
        for account in host.managed_accounts:
            parts: list[tuple[DesiredLine, ...]] = []
            signature: list[object] = [env.name, host.customer]
            if agent_key is not None and account == host.login:
                parts.append((DesiredLine(agent_key, (), "agent", "agent"),))
                signature.append("agent")
            for entry in glass:
                if account in entry.accounts:
                    parts.append(
                        (DesiredLine(entry.key, entry.options, "break-glass", "break-glass"),)
                    )
                    signature.append(("glass", id(entry)))
            for rule in rules:
                if account not in rule.accounts:
                    continue
                cache_key = (id(rule), host.customer)
                if cache_key not in rule_cache:
                    rule_cache[cache_key] = _person_lines(
                        rule,
                        env.min_attestation,
                        host.customer,
                        snapshot,
                        keys_by_owner,
                        by_role,
                        now,
                        made,
                    )
                parts.append(rule_cache[cache_key])
                signature.append(("rule", id(rule)))
            sig = tuple(signature)
            if sig not in merged_cache:
                merged_cache[sig] = _rendered(_merge(parts))
            lines, rendered, digest = merged_cache[sig]
            for index, pattern in enumerate(host.authorized_keys):
                target = FileTarget(host.name, account, pattern)
                # sshd reads every listed file; keyward puts the lines in the first and
                # keeps the others empty, so a key hidden in authorized_keys2 is removed.
                first = index == 0
                result[target] = DesiredFile(
                    target=target,
                    mode=host.mode,
                    lines=lines if first else (),
                    is_login=account == host.login,
                    rendered=rendered if first else EMPTY[1],
                    digest=digest if first else EMPTY[2],
                )
    return result


def _rendered(lines: tuple[DesiredLine, ...]) -> tuple[tuple[DesiredLine, ...], bytes, str]:
    body = "\n".join(map(_RENDERED, lines))
    content = (HEADER + body + "\n" if lines else HEADER).encode()
    return lines, content, hashlib.sha256(content).hexdigest()


EMPTY = _rendered(())
