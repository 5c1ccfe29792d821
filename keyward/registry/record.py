"""Recording what the agent did: host state and one audit event per change on a host."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select

from keyward.plan import FilePlan, parse_cached
from keyward.registry.models import (
    HostState,
    OffboardingCase,
    OffboardingTarget,
    Person,
    SshKey,
)
from keyward.registry.store import Registry, WriteTx
from keyward.registry.subjects import Subject

if TYPE_CHECKING:
    from keyward.agent.reconcile import HostResult

# (action, subject, details): one audit event, appended to the chain in order.
Event = tuple[str, Subject, dict[str, Any]]

AUDIT_ACTIONS = {
    "add": "host.add",
    "remove": "host.remove",
}


def record_hosts(
    registry: Registry,
    actor: str,
    results: list[HostResult],
    run_id: str,
    open_case_ids: tuple[int, ...] = (),
) -> None:
    """Update ``host_state`` and append one audit event per change on a host, for many hosts
    in one transaction (one disk sync)."""
    if not results:
        return
    with registry.write(actor) as tx:
        # A fixed number of queries per batch, not per host: a daemon round records
        # every host of the fleet in this one transaction.
        states = {
            state.host: state
            for names in _chunks(sorted({r.host.name for r in results}))
            for state in tx.session.exec(select(HostState).where(col(HostState.host).in_(names)))
        }
        owners = Owners(_key_owners(tx, results))
        # Every event of the batch, in order, goes into the chain in one insert (one
        # insert per file was a third of recording a ten-thousand-host round).
        events: list[Event] = []
        for result in results:
            name = result.host.name
            state = states.get(name)
            if state is None:  # not ``setdefault``: it would build a HostState for every host
                state = states[name] = HostState(host=name)
            _record(events, result, run_id, state, owners)
            tx.session.add(state)
        tx.audit_many(events)
        if open_case_ids:
            _record_confirmations(tx, results, run_id, open_case_ids)


def _chunks(names: list[str], size: int = 500) -> list[list[str]]:
    """Host names in groups small enough for one ``IN (...)`` on every backend."""
    return [names[i : i + size] for i in range(0, len(names), size)]


def _key_owners(tx: WriteTx, results: list[HostResult]) -> dict[str, str]:
    """Fingerprint → owner, from the registry, for every key in the files being recorded.

    A line's comment on a host is text anyone who can edit the file can write
    (``keyward:alice:...`` on somebody else's key, outside keyward's block), so the
    owner recorded with a key is the registry's, never the comment's. One query per
    500 distinct fingerprints per batch, not per file.
    """
    contents = {
        file_result.plan.new_content or b"" for result in results for file_result in result.files
    }  # hosts with the same access hold the same bytes: each distinct content once
    fingerprints = {
        line.key.fingerprint
        for content in contents
        for line in parse_cached(content)
        if line.key is not None
    }
    owners: dict[str, str] = {}
    for chunk in _chunks(sorted(fingerprints)):
        rows = tx.session.exec(
            select(SshKey.fingerprint, Person.username)
            .join(Person, col(Person.id) == col(SshKey.person_id))
            .where(col(SshKey.fingerprint).in_(chunk))
        )
        owners.update(dict(rows.all()))
    return owners


def _record(
    events: list[Event], result: HostResult, run_id: str, state: HostState, owners: Owners
) -> None:
    _update(state, "environment", result.host.environment)
    state.last_attempt = result.started
    state.last_run_id = run_id
    drift = 0
    recorded = state.files or "{}"
    files = owners.files_of(recorded)
    for file_result in result.files:
        plan = file_result.plan
        key = f"{plan.target.account}:{plan.target.pattern}"
        if plan.changes:
            drift += sum(1 for c in plan.changes if c.action == "remove" and c.reason == "drift")
        if not file_result.written and plan.action == "in-sync" and plan.new_content is not None:
            _record_late(
                events,
                result.host.name,
                plan.path,
                plan.target.account,
                key,
                plan.new_content,
                files,
                run_id,
                owners,
            )
        if file_result.written:
            written = _keys_of(plan.new_content or b"", owners)
            if key in files:
                _record_unexplained(events, result.host.name, plan, files[key], written, run_id)
            files[key] = owners.entry(plan.path, file_result.confirmed_sha256, written)
            if plan.action == "fix-mode":
                events.append(
                    (
                        "host.fix-mode",
                        Subject.host(result.host.name),
                        {"account": plan.target.account, "path": plan.path, "run_id": run_id},
                    )
                )
            # One event per key added or removed.
            events.extend(
                (
                    "host.drift-removed"
                    if change.action == "remove" and change.reason == "drift"
                    else AUDIT_ACTIONS[change.action],
                    Subject.host(result.host.name),
                    {
                        "account": plan.target.account,
                        "path": plan.path,
                        "fingerprint": change.fingerprint,
                        "person": change.owner,
                        "reason": change.reason,
                        "run_id": run_id,
                    },
                )
                for change in plan.changes
            )
    if files != owners.files_memo[recorded]:  # unchanged entries compare by identity
        state.files = owners.serialised(files)
    _update(state, "drift_found", drift)
    _update(state, "last_changes", result.changes)
    if result.ok:
        state.last_success = result.finished
        _update(state, "last_error", None)
    else:
        state.last_error = "; ".join(result.problems)[:2000]


def _update(state: HostState, name: str, value: object) -> None:
    """Set a column only when its value changes: a verification round records ten
    thousand hosts, most of whose columns stay as they were (and each assignment to a
    model goes through validation and change tracking)."""
    if getattr(state, name) != value:
        setattr(state, name, value)


class Owners(dict[str, str]):
    """Fingerprint -> owner for one batch, and what the batch works out once per distinct
    value instead of once per file: each content's key list (``_keys_of``) and digest, each
    stored ``host_state.files`` text parsed, each files entry and each files text.

    Hosts with the same access hold the same content and the same files record, and a
    daemon round records thousands of them in one batch.
    """

    def __init__(self, owners: dict[str, str]) -> None:
        super().__init__(owners)
        self.keys_memo: dict[bytes, list[list[str | None]]] = {}
        # host_state.files as stored -> as parsed; hosts with the same files store the
        # same text. Shared: a host's changes go to a copy (``files_of``).
        self.files_memo: dict[str, dict[str, dict[str, Any]]] = {}
        self.digests: dict[bytes, str] = {}
        self.entries: dict[tuple[str | None, str | None, int], dict[str, Any]] = {}
        self.texts: dict[tuple[tuple[str, int], ...], tuple[dict[str, Any], str]] = {}

    def entry(
        self, path: str | None, sha256: str | None, keys: list[list[str | None]]
    ) -> dict[str, Any]:
        """A file's ``host_state.files`` entry, one shared object per distinct entry (its
        key list is already shared, see ``_keys_of``), so that equal files dicts are made
        of the same objects and serialise once (``serialised``)."""
        index = (path, sha256, id(keys))
        found = self.entries.get(index)
        if found is None or found["keys"] is not keys:
            found = self.entries[index] = {"path": path, "sha256": sha256, "keys": keys}
        return found

    def serialised(self, files: dict[str, dict[str, Any]]) -> str:
        """``json.dumps(files, sort_keys=True)``, once per distinct set of entry objects.

        The memo holds the entries it was made from, so an id it keys on stays theirs."""
        index = tuple(sorted((name, id(entry)) for name, entry in files.items()))
        found = self.texts.get(index)
        if found is None or any(files[name] is not entry for name, entry in found[0].items()):
            found = self.texts[index] = (dict(files), json.dumps(files, sort_keys=True))
        return found[1]

    def digest(self, content: bytes) -> str:
        """SHA-256 of ``content``, once per distinct content of the batch."""
        found = self.digests.get(content)
        if found is None:
            found = self.digests[content] = hashlib.sha256(content).hexdigest()
        return found

    def files_of(self, recorded: str) -> dict[str, dict[str, Any]]:
        """``json.loads(recorded)``, parsed once per distinct text; the host gets its own
        copy of the outer dict (the recorder replaces a file's entry, never edits it)."""
        found = self.files_memo.get(recorded)
        if found is None:
            found = self.files_memo[recorded] = json.loads(recorded)
        return dict(found)


def _keys_of(content: bytes, owners: dict[str, str]) -> list[list[str | None]]:
    """(fingerprint, owner) of every key line; the owner is the registry's (None if unknown).

    Worked out once per content for ``Owners``, and then shared: callers only store it
    in ``host_state.files`` (serialised) or compare it, never change it.
    """
    if isinstance(owners, Owners):
        found = owners.keys_memo.get(content)
        if found is None:
            found = owners.keys_memo[content] = _keys_of_content(content, owners)
        return found
    return _keys_of_content(content, owners)


def _keys_of_content(content: bytes, owners: dict[str, str]) -> list[list[str | None]]:
    out: list[list[str | None]] = []
    for line in parse_cached(content):
        if line.key is None:
            continue
        out.append([line.key.fingerprint, owners.get(line.key.fingerprint)])
    return sorted(out, key=lambda item: (item[0] or "", item[1] or ""))


def _record_late(
    events: list[Event],
    host: str,
    path: str | None,
    account: str,
    key: str,
    content: bytes,
    files: dict[str, dict[str, Any]],
    run_id: str,
    owners: Owners,
) -> None:
    """Record changes an interrupted earlier run made on the host but never recorded.

    A file that is in sync but whose content is not what the registry last recorded for
    it was written by a run that was killed between writing and recording. Its key
    changes are recorded now (reason ``recorded-late``), so no key reaches or leaves a
    host without an audit event.
    """
    digest = owners.digest(content)
    before = files.get(key, {})
    if before.get("sha256") == digest:
        return
    current = _keys_of(content, owners)
    previous = before.get("keys") or []
    now_set = {tuple(item) for item in current}
    was_set = {tuple(item) for item in previous}
    for action, items in (("host.add", now_set - was_set), ("host.remove", was_set - now_set)):
        for fingerprint, owner in sorted(items, key=lambda i: (i[0] or "", i[1] or "")):
            events.append(_late(action, host, account, path, fingerprint, owner, run_id))
    files[key] = owners.entry(path, digest, current)


def _late(
    action: str,
    host: str,
    account: str,
    path: str | None,
    fingerprint: str | None,
    owner: str | None,
    run_id: str,
) -> Event:
    """A key change recorded after the fact (reason ``recorded-late``)."""
    details = {
        "account": account,
        "path": path,
        "fingerprint": fingerprint,
        "person": owner,
        "reason": "recorded-late",
        "run_id": run_id,
    }
    return (action, Subject.host(host), details)


def _record_unexplained(
    events: list[Event],
    host: str,
    plan: FilePlan,
    before: dict[str, Any],
    written: list[list[str | None]],
    run_id: str,
) -> None:
    """Key changes between the file as last recorded and as written now that this write
    does not explain: an earlier write whose record never reached the registry (a daemon
    enforcing expiries while the registry was down, or killed before recording). Recorded
    now (reason ``recorded-late``), as for a file found in sync."""
    added = {c.fingerprint for c in plan.changes if c.action == "add"}
    removed = {c.fingerprint for c in plan.changes if c.action == "remove"}
    was = {item[0]: item for item in before.get("keys") or []}
    now = {item[0]: item for item in written}
    late = (
        ("host.add", [now[f] for f in sorted(set(now) - set(was) - added, key=str)]),
        ("host.remove", [was[f] for f in sorted(set(was) - set(now) - removed, key=str)]),
    )
    for action, items in late:
        for fingerprint, owner in items:
            events.append(
                _late(action, host, plan.target.account, plan.path, fingerprint, owner, run_id)
            )


def _record_confirmations(
    tx: WriteTx, results: list[HostResult], run_id: str, case_ids: tuple[int, ...]
) -> None:
    """Store the read-back evidence for open offboarding cases; close the ones now complete.

    Every unconfirmed target on the batch's hosts is read in one query; each host
    that confirmed files gets its ``offboard.host-confirmed`` event.
    """
    pending: dict[str, dict[tuple[int, str, str], OffboardingTarget]] = {}
    for names in _chunks(sorted({r.host.name for r in results})):
        for target in tx.session.exec(
            select(OffboardingTarget).where(
                col(OffboardingTarget.host).in_(names),
                col(OffboardingTarget.case_id).in_(case_ids),
                col(OffboardingTarget.confirmed_at).is_(None),
            )
        ):
            on_host = pending.setdefault(target.host, {})
            on_host[(target.case_id, target.account, target.pattern)] = target
    events: list[tuple[str, Subject, dict[str, Any]]] = []
    for result in results:
        host = result.host.name
        targets = pending.get(host, {})
        for target in targets.values():
            if target.confirmed_at is None:
                target.last_attempt = result.started
                target.last_error = result.error or "not checked in this run"
                tx.session.add(target)
        confirmed: dict[int, list[str]] = {}
        for c in result.confirmations:
            found = targets.get((c.case_id, c.account, c.pattern))
            if found is None or found.confirmed_at is not None:
                continue
            found.path = c.path
            found.removed += c.removed
            found.last_attempt = result.started
            if c.clean:
                found.confirmed_at = result.finished
                found.confirmed_by_run = run_id
                found.last_error = None
                confirmed.setdefault(c.case_id, []).append(f"{c.account}:{c.path}")
            else:
                found.last_error = c.error
            tx.session.add(found)
        events += [
            (
                "offboard.host-confirmed",
                Subject.host(host),
                {"case_id": case_id, "files": sorted(files), "run_id": run_id},
            )
            for case_id, files in confirmed.items()
        ]
    tx.session.flush()
    tx.audit_many(events)
    for case_id in case_ids:
        case = tx.session.get(OffboardingCase, case_id)
        if case is None or case.status != "open":
            continue
        left = tx.session.exec(
            select(OffboardingTarget).where(
                OffboardingTarget.case_id == case_id,
                col(OffboardingTarget.confirmed_at).is_(None),
            )
        ).first()
        if left is None:
            case.status = "confirmed"
            case.closed_at = max(r.finished for r in results)
            tx.session.add(case)
            tx.audit(
                "offboard.confirmed", Subject.case(case_id), {"case_id": case_id, "run_id": run_id}
            )
