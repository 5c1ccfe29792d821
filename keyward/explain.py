"""Why a person can or cannot log in somewhere: the desired state, read backwards.

A pure module: it takes the registry as a ``RegistrySnapshot``, the checked
``Inventory``, what the agent last recorded per host (``HostSync``), and the
time.  "Can log in" is decided by ``keyward.desired.compute_desired`` itself,
the very computation reconcile deploys, so an explanation can never disagree
with what a host gets.  Only when the person's key is *not* among a file's
desired lines are the reasons walked, in a fixed order (offboarded or failure
mode; no usable key; no rule or grant; grant for another customer or
environment; attestation below the environment's minimum; grant lapsed), each
with the command that fixes it where there is one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from keyward.attestation import meets
from keyward.desired import DesiredFile, DesiredLine, FileTarget, compute_desired
from keyward.errors import UsageError
from keyward.inventory.model import AccessRule, Host, Inventory
from keyward.keys import PublicKey
from keyward.state import GrantRecord, KeyRecord, RegistrySnapshot

SyncStatus = Literal["in-sync", "pending", "never-reconciled"]

# The order reasons are reported in: the first one is what to fix first.
REASON_ORDER: tuple[str, ...] = (
    "offboarded",
    "failure-mode",
    "no-key",
    "keys-unusable",
    "no-access-rule",
    "no-grant",
    "other-customer",
    "other-environment",
    "attestation",
    "grant-lapsed",
    "unexplained",
)


@dataclass(frozen=True)
class RecordedFile:
    """What the agent last wrote or confirmed in one managed file (``host_state.files``)."""

    sha256: str | None
    fingerprints: frozenset[str]


@dataclass(frozen=True)
class HostSync:
    """A host's last recorded reconcile, as plain values (from ``host_state``).

    ``files`` is keyed ``account:pattern`` like ``host_state.files``.
    """

    host: str
    last_success: datetime | None = None
    last_attempt: datetime | None = None
    last_error: str | None = None
    files: Mapping[str, RecordedFile] = field(default_factory=dict)


@dataclass(frozen=True)
class Reason:
    """One thing that keeps the person out; ``code`` is stable (JSON), ``fix`` a command."""

    code: str
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class Access:
    """One desired line of the person's in a file: which key, through what, with which options."""

    fingerprint: str
    key_type: str
    attestation: str
    roles: tuple[str, ...]
    via: tuple[str, ...]
    options: tuple[str, ...]
    expires_at: datetime | None


@dataclass(frozen=True)
class Sync:
    """Whether the host holds what is desired, as far as the last recorded run tells."""

    status: SyncStatus
    last_success: datetime | None
    last_error: str | None
    message: str
    # The person's desired keys missing from the recorded file, and their keys on it that
    # are no longer desired (they still let the person in until the next reconcile).
    missing: tuple[str, ...] = ()
    lingering: tuple[str, ...] = ()


@dataclass(frozen=True)
class Place:
    """One (host, account): can the person log in there, how, or why not."""

    host: str
    environment: str
    account: str
    can_login: bool
    access: tuple[Access, ...]
    reasons: tuple[Reason, ...]
    notes: tuple[str, ...]
    sync: Sync


def explain(
    snapshot: RegistrySnapshot,
    inventory: Inventory,
    username: str,
    host_states: Mapping[str, HostSync],
    now: datetime,
    host: str | None = None,
    account: str | None = None,
    agent_key: PublicKey | None = None,
) -> tuple[Place, ...]:
    """Every place asked about, in inventory order.

    Without ``host``: every (host, account) some access rule covers.  With
    ``host``: its managed accounts (or just ``account``).  Unknown names raise
    ``UsageError`` (the CLI's exit 2); everything else is an answer.
    """
    if username not in snapshot.people:
        raise UsageError(f"no person {username!r} in the registry")
    if host is None:
        if account is not None:
            raise UsageError("an ACCOUNT needs a HOST")
        hosts = inventory.hosts()
        wanted = {
            h.name: tuple(
                a
                for a in h.managed_accounts
                if any(a in rule.accounts for rule in inventory.access_for(h))
            )
            for h in hosts
        }
    else:
        found = inventory.host(host)
        hosts = (found,)
        if account is not None and account not in found.managed_accounts:
            raise UsageError(
                f"account {account!r} is not managed on {found.name} "
                f"(managed: {', '.join(found.managed_accounts)})"
            )
        wanted = {found.name: (account,) if account else found.managed_accounts}
    chosen = tuple(h for h in hosts if wanted[h.name])
    desired = compute_desired(snapshot, inventory, chosen, agent_key, now)
    walker = _Walker(snapshot, inventory, username, now, agent_key is not None)
    return tuple(
        walker.place(h, a, desired[FileTarget(h.name, a, h.authorized_keys[0])], host_states)
        for h in chosen
        for a in wanted[h.name]
    )


class _Walker:
    """The per-person facts shared by every place: keys and grants, looked up once."""

    def __init__(
        self,
        snapshot: RegistrySnapshot,
        inventory: Inventory,
        username: str,
        now: datetime,
        agent_known: bool,
    ) -> None:
        # Without the agent's key the login account's desired content is not known
        # exactly, so its sync is judged by the person's fingerprints alone.
        self.agent_known = agent_known
        self.snapshot = snapshot
        self.inventory = inventory
        self.username = username
        self.now = now
        self.person = snapshot.people[username]
        self.keys = tuple(k for k in snapshot.keys if k.owner == username)
        self.fingerprints = frozenset(k.fingerprint for k in self.keys)
        self.grants = tuple(g for g in snapshot.grants if g.username == username)

    def place(
        self, host: Host, account: str, file: DesiredFile, host_states: Mapping[str, HostSync]
    ) -> Place:
        mine = tuple(
            line for line in file.lines if line.kind == "person" and line.owner == self.username
        )
        env = self.inventory.environment(host.environment)
        if mine:
            access = tuple(self._access(host, line) for line in mine)
            deployed = {line.key.fingerprint for line in mine}
            notes = tuple(
                f"key {k.fingerprint} is not deployed: {self._key_problem(k, env.min_attestation)}"
                for k in self.keys
                if k.fingerprint not in deployed and k.usable_at(self.now)
            )
            reasons: tuple[Reason, ...] = ()
        else:
            access, notes = (), ()
            reasons = self._reasons(host, account)
        sync = self._sync(host, account, file, mine, host_states.get(host.name))
        return Place(host.name, host.environment, account, bool(mine), access, reasons, notes, sync)

    # -- can log in -----------------------------------------------------------

    def _access(self, host: Host, line: DesiredLine) -> Access:
        record = self.snapshot.by_fingerprint[line.key.fingerprint]
        via = tuple(
            _describe_grant(g)
            for g in self.grants
            if g.role in line.roles and self._grant_fits(g, host) and g.active_at(self.now)
        )
        return Access(
            line.key.fingerprint,
            line.key.key_type,
            record.attestation,
            line.roles,
            via,
            line.options,
            line.expires_at,
        )

    def _key_problem(self, record: KeyRecord, minimum: str) -> str:
        if record.revoked_at is not None:
            return f"revoked {_when(record.revoked_at)}"
        if record.expires_at <= self.now:
            return f"expired {_when(record.expires_at)}"
        if not meets(record.attestation, minimum):
            return f"attestation {record.attestation} is below min_attestation {minimum}"
        return "no rule here gives it"  # pragma: no cover - the key would be deployed

    # -- cannot log in --------------------------------------------------------

    def _reasons(self, host: Host, account: str) -> tuple[Reason, ...]:
        name = self.username
        if self.person.status != "active":
            return (Reason("offboarded", f"{name} is {self.person.status}"),)
        allowed = self.snapshot.restricted.get(name)
        if allowed is not None and not allowed:
            return (
                Reason(
                    "failure-mode",
                    f"{name} is in failure mode (suspended): none of their keys is deployed",
                    f"keyward person clear-alert {name} --reason TEXT",
                ),
            )
        env = self.inventory.environment(host.environment)
        found: list[Reason] = []
        usable = tuple(k for k in self.keys if k.usable_at(self.now))
        if not self.keys:
            found.append(
                Reason("no-key", f"{name} has no registered key", f"keyward key add {name} KEY.pub")
            )
        elif not usable:
            gone = ", ".join(
                f"{k.fingerprint} {self._key_problem(k, env.min_attestation)}" for k in self.keys
            )
            found.append(
                Reason(
                    "keys-unusable",
                    f"every key of {name} is revoked or expired ({gone})",
                    f"keyward key add {name} KEY.pub",
                )
            )
        rules = tuple(r for r in self.inventory.access_for(host) if account in r.accounts)
        if not rules:
            found.append(
                Reason(
                    "no-access-rule",
                    f"no [[access]] rule of environment {env.name} lets anyone log in to "
                    f"{account} on {host.name}",
                )
            )
        else:
            found.extend(self._grant_reasons(host, account, rules))
        if usable and not any(meets(k.attestation, env.min_attestation) for k in usable):
            found.extend(_attestation_reason(k, env.name, env.min_attestation) for k in usable)
        if not found:
            found.append(
                Reason(
                    "unexplained",
                    "not deployed for a reason keyward explain does not know (please report)",
                )
            )
        found.sort(key=lambda r: REASON_ORDER.index(r.code))
        return tuple(found)

    def _grant_reasons(self, host: Host, account: str, rules: Sequence[AccessRule]) -> list[Reason]:
        roles = tuple(dict.fromkeys(role for rule in rules for role in rule.roles))
        matching = tuple(g for g in self.grants if g.role in roles)
        if not matching:
            held = sorted({g.role for g in self.grants}) or ["no role"]
            return [
                Reason(
                    "no-grant",
                    f"{account} on {host.name} is for role {' or '.join(roles)} "
                    f"({'; '.join(r.source for r in rules)}); {self.username} holds "
                    f"{', '.join(held)}",
                    f"keyward role grant {roles[0]} {self.username} --reason TEXT",
                )
            ]
        if any(self._grant_fits(g, host) and g.active_at(self.now) for g in matching):
            return []
        out: list[Reason] = []
        for g in matching:
            if g.customer is not None and g.customer != host.customer:
                out.append(
                    Reason(
                        "other-customer",
                        f"{_describe_grant(g)} is limited to customer {g.customer}; "
                        f"{host.name} {_customer(host.customer)}",
                    )
                )
            elif g.environment is not None and g.environment != host.environment:
                out.append(
                    Reason(
                        "other-environment",
                        f"{_describe_grant(g)} is for environment {g.environment}, not "
                        f"{host.environment}",
                    )
                )
            else:  # fits this host, so it must have lapsed
                fix = (
                    f"keyward access request {g.role} --env {host.environment} --for DURATION "
                    "--reason TEXT"
                    if g.request_id is not None
                    else f"keyward role grant {g.role} {self.username} --reason TEXT"
                )
                lapsed = f"{_describe_grant(g, until=False)} lapsed {_when(g.until)}"
                out.append(Reason("grant-lapsed", lapsed, fix))
        return out

    @staticmethod
    def _grant_fits(grant: GrantRecord, host: Host) -> bool:
        """The customer and environment tests of ``desired._person_lines``."""
        if grant.customer is not None and grant.customer != host.customer:
            return False
        return grant.environment is None or grant.environment == host.environment

    # -- in sync? -------------------------------------------------------------

    def _sync(
        self,
        host: Host,
        account: str,
        file: DesiredFile,
        mine: tuple[DesiredLine, ...],
        state: HostSync | None,
    ) -> Sync:
        recorded = None if state is None else state.files.get(f"{account}:{file.target.pattern}")
        last = state.last_success if state else None
        error = state.last_error if state else None
        failing = f"; the last attempt failed: {error}" if error else ""
        if recorded is None:
            return Sync(
                "never-reconciled",
                last,
                error,
                f"{host.name} has no recorded reconcile of this file yet{failing}",
            )
        wanted = {line.key.fingerprint for line in mine}
        present = recorded.fingerprints & self.fingerprints
        since = f"last in sync {_when(last)}" if last else "never fully in sync"
        exact = self.agent_known or not file.is_login
        if file.mode == "exclusive" and recorded.sha256 is not None and exact:
            in_sync = recorded.sha256 == file.content_digest()
        else:
            in_sync = present == wanted
        if in_sync:
            return Sync("in-sync", last, error, f"host {since}{failing}")
        missing, lingering = tuple(sorted(wanted - present)), tuple(sorted(present - wanted))
        if missing:
            what = "not deployed yet: the next reconcile adds it"
        elif lingering:
            what = f"still on the host ({', '.join(lingering)}): the next reconcile removes it"
        else:
            what = "other changes to this file are pending reconcile"
        return Sync("pending", last, error, f"{what} (host {since}){failing}", missing, lingering)


def _attestation_reason(record: KeyRecord, env: str, minimum: str) -> Reason:
    fp = record.fingerprint
    statement = "--proof SIGFILE (a signed 'keyward key statement')"
    if minimum == "admin":
        fix = f"keyward key attest {fp} --attest admin (or {statement})"
    elif minimum == "proof":
        fix = f"keyward key attest {fp} {statement}" + (
            " (or --attest sk)" if record.key.is_sk else ""
        )
    elif record.key.is_sk:
        fix = f"keyward key attest {fp} --attest sk"
    else:
        fix = f"{env} needs a FIDO security key: keyward key add {record.owner} KEY.pub --attest sk"
    return Reason(
        "attestation",
        f"key {fp} has attestation {record.attestation}, below {env}'s min_attestation {minimum}",
        fix,
    )


def _describe_grant(grant: GrantRecord, until: bool = True) -> str:
    if grant.request_id is not None:
        text = f"access request #{grant.request_id} for role {grant.role}"
    else:
        text = f"role {grant.role} (granted by {grant.granted_by})"
    if until and grant.until is not None:
        text += f" until {_when(grant.until)}"
    return text


def _customer(customer: str | None) -> str:
    return f"belongs to customer {customer}" if customer else "belongs to no customer"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def _ts(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


# -- rendering ------------------------------------------------------------------


def describe(place: Place) -> str:
    """One human-readable line for a place."""
    where = f"{place.host} {place.account}"
    if place.can_login:
        parts = []
        for a in place.access:
            via = "; ".join(a.via) or ", ".join(a.roles)
            opts = ",".join(a.options)
            parts.append(
                f"key {a.fingerprint} ({a.key_type}, attestation {a.attestation}) via {via}"
                + (f" [{opts}]" if opts else "")
            )
        notes = "".join(f"; note: {n}" for n in place.notes)
        head = "CAN log in after the next reconcile" if place.sync.missing else "CAN log in"
        return f"{where}: {head} with {'; '.join(parts)}; {place.sync.message}{notes}"
    why = "; ".join(r.message + (f" (fix: {r.fix})" if r.fix else "") for r in place.reasons)
    if place.sync.lingering:
        # The registry says no, but the host still lets them in: say that first.
        return f"{where}: STILL CAN log in until the next reconcile: {place.sync.message}; {why}"
    sync = f"; {place.sync.message}" if place.sync.status == "pending" else ""
    return f"{where}: CANNOT log in: {why}{sync}"


def place_json(place: Place) -> dict[str, Any]:
    """The stable JSON of a place (docs/cli.md): fields are only ever added."""
    return {
        "host": place.host,
        "environment": place.environment,
        "account": place.account,
        "can_login": place.can_login,
        "access": [
            {
                "fingerprint": a.fingerprint,
                "type": a.key_type,
                "attestation": a.attestation,
                "roles": list(a.roles),
                "via": list(a.via),
                "options": list(a.options),
                "expires_at": _ts(a.expires_at),
            }
            for a in place.access
        ],
        "reasons": [{"code": r.code, "message": r.message, "fix": r.fix} for r in place.reasons],
        "notes": list(place.notes),
        "sync": {
            "status": place.sync.status,
            "last_success": _ts(place.sync.last_success),
            "last_error": place.sync.last_error,
            "message": place.sync.message,
            "missing": list(place.sync.missing),
            "lingering": list(place.sync.lingering),
        },
    }
