"""The plan: desired files + observed files → exactly what to change, and why.

A pure diff, like Terraform's plan: it can be printed, and the agent's apply
step executes exactly it.  Every removed line is classified so the log says
what it means: a ``revoked``, ``expired`` or ``offboarded`` key, access that
``access-ended``, a line ``replaced`` by the same key with other options, or
``drift`` (a line keyward never wrote, such as a key added by hand).

For people, ``shown_changes`` pairs the removal and the addition of the same
key whose only difference is its ``expiry-time`` into one ``update``: what an
administrator sees is "alice's key now expires later", not a key taken away and
another given.  The plan itself, and what the agent applies, stays the diff.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from keyward.authorized_keys import AuthorizedLine, parse_authorized_keys
from keyward.desired import BLOCK_BEGIN, BLOCK_END, COMMENT_PREFIX, DesiredFile, FileTarget
from keyward.state import RegistrySnapshot

FileState = Literal["present", "missing", "error"]
FileAction = Literal["in-sync", "create", "update", "fix-mode", "error"]


@dataclass(frozen=True)
class Observed:
    """What the agent read about one managed file on its host."""

    target: FileTarget
    state: FileState
    path: str | None = None
    content: bytes | None = None
    sha256: str | None = None
    owner_ok: bool = True
    error_code: str | None = None
    error_message: str | None = None
    # The problem is only the final directory entry (hard link, symlink, FIFO, a file
    # owned by someone else, too large): renaming a new file over it is safe.
    replaceable: bool = False


@dataclass(frozen=True)
class LineChange:
    action: Literal["add", "remove"]
    fingerprint: str | None
    owner: str | None
    reason: str
    options: tuple[str, ...] = ()
    lineno: int | None = None


@dataclass(frozen=True)
class ShownChange:
    """One line of a printed plan: an addition, a removal, or an expiry ``update``."""

    action: Literal["add", "remove", "update"]
    fingerprint: str | None
    owner: str | None
    reason: str
    options: tuple[str, ...] = ()
    old_expiry: str | None = None
    new_expiry: str | None = None


EXPIRY_OPTION = "expiry-time="


def expiry_of(options: Sequence[str]) -> str | None:
    """The ``expiry-time`` value of a line's options (unquoted), or None."""
    for option in options:
        if option[: len(EXPIRY_OPTION)].lower() == EXPIRY_OPTION:
            return option[len(EXPIRY_OPTION) :].strip('"')
    return None


def _without_expiry(options: Sequence[str]) -> tuple[str, ...]:
    return tuple(o for o in options if o[: len(EXPIRY_OPTION)].lower() != EXPIRY_OPTION)


def shown_changes(changes: Sequence[LineChange]) -> list[ShownChange]:
    """The changes as a person reads them: a changed expiry is one ``update``.

    A removal and an addition pair up when they are the same key (fingerprint)
    with the same options apart from ``expiry-time``, and the expiry differs.  The
    update takes the removal's place; everything else is shown as it is.
    """
    adds: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for index, change in enumerate(changes):
        if change.action == "add" and change.fingerprint is not None:
            key = (change.fingerprint, _without_expiry(change.options))
            adds.setdefault(key, []).append(index)
    paired: dict[int, int] = {}  # removal index -> addition index
    for index, change in enumerate(changes):
        if change.action != "remove" or change.fingerprint is None:
            continue
        candidates = adds.get((change.fingerprint, _without_expiry(change.options)), [])
        for add_index in candidates:
            if expiry_of(changes[add_index].options) != expiry_of(change.options):
                paired[index] = add_index
                candidates.remove(add_index)
                break
    used = set(paired.values())
    out: list[ShownChange] = []
    for index, change in enumerate(changes):
        if index in used:
            continue
        if index in paired:
            new = changes[paired[index]]
            out.append(
                ShownChange(
                    "update",
                    change.fingerprint,
                    new.owner or change.owner,
                    "expiry",
                    new.options,
                    expiry_of(change.options),
                    expiry_of(new.options),
                )
            )
            continue
        out.append(
            ShownChange(
                change.action, change.fingerprint, change.owner, change.reason, change.options
            )
        )
    return out


@dataclass(frozen=True)
class FilePlan:
    target: FileTarget
    action: FileAction
    path: str | None = None
    changes: tuple[LineChange, ...] = ()
    new_content: bytes | None = None
    expect_sha256: str | None = None
    error: str | None = None
    error_code: str | None = None

    @property
    def writes(self) -> bool:
        return self.action in ("create", "update", "fix-mode")


@dataclass(frozen=True)
class HostPlan:
    host: str
    files: tuple[FilePlan, ...]
    refused: str | None = None

    @property
    def pending(self) -> bool:
        return any(f.writes for f in self.files)

    @property
    def errors(self) -> tuple[FilePlan, ...]:
        return tuple(f for f in self.files if f.action == "error")


# What decides a file's plan within one round (snapshot, moment and purge fixed): the
# desired mode and lines, and what was observed (state, content, hash, owner, replaceable).
_MemoKey = tuple[str, int, str, bytes | None, str | None, bool, bool]


@dataclass
class PlanMemo:
    """The plans already made in one round, by what decided them.

    Hosts with the same access hold byte-identical files, and a push changes them the
    same way: at ten thousand hosts, planning each file from scratch (parsing its lines,
    comparing every one) was a sixth of the daemon's push. With a memo a round plans
    each distinct (desired lines, observed content) pair once and gives every other
    file the same plan under its own target and path.

    A plan also depends on the registry snapshot, the moment and the purge set; the
    memo serves one combination and starts over when it sees another, so a memo
    carried past its round can only miss, never answer for another state.
    """

    _state: tuple[RegistrySnapshot, datetime, frozenset[str]] | None = None
    _plans: dict[_MemoKey, tuple[tuple[object, ...], FilePlan]] = field(default_factory=dict)

    def plans(
        self, snapshot: RegistrySnapshot, now: datetime, purge: frozenset[str]
    ) -> dict[_MemoKey, tuple[tuple[object, ...], FilePlan]]:
        state = self._state
        if state is None or state[0] is not snapshot or state[1] != now or state[2] != purge:
            self._state = (snapshot, now, purge)  # the snapshot is held: its id stays its own
            self._plans = {}
        return self._plans


def _memo_key(desired: DesiredFile, observed: Observed) -> _MemoKey:
    return (
        desired.mode,
        id(desired.lines),
        observed.state,
        observed.content,
        observed.sha256,
        observed.owner_ok,
        observed.replaceable,
    )


def plan_file_memo(
    desired: DesiredFile,
    observed: Observed,
    snapshot: RegistrySnapshot,
    now: datetime,
    purge: frozenset[str],
    memo: PlanMemo | None,
) -> FilePlan:
    """``plan_file``, answered from ``memo`` when an equal file was planned this round."""
    if memo is None or observed.state == "error":
        return plan_file(desired, observed, snapshot, now, purge)
    plans = memo.plans(snapshot, now, purge)
    key = _memo_key(desired, observed)
    hit = plans.get(key)
    # The lines are compared by identity (the key holds their id): the memo keeps the
    # tuple it planned, so an id reused by another tuple can never match.
    if hit is not None and hit[0] is desired.lines:
        p = hit[1]
        return FilePlan(desired.target, p.action, observed.path, p.changes, p.new_content,
                        p.expect_sha256, p.error, p.error_code)  # fmt: skip
    plan = plan_file(desired, observed, snapshot, now, purge)
    plans[key] = (desired.lines, plan)
    return plan


@functools.lru_cache(maxsize=256)
def _fingerprints_kept(mode: str, content: bytes) -> frozenset[str]:
    """The fingerprints of the lines keyward owns in ``content`` (the lockout check's
    question), once per distinct content: every host of a round asks it of the same bytes."""
    lines = _managed_lines(mode, content)
    return frozenset(line.key.fingerprint for line in lines if line.key is not None)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=4096)
def parse_cached(content: bytes) -> tuple[AuthorizedLine, ...]:
    """``parse_authorized_keys`` once per distinct content.

    Files are read again on every verification pass, and hosts with the same access
    hold byte-identical files: each distinct content parses (and decodes its keys) once.
    """
    return tuple(parse_authorized_keys(content))


def split_block(content: bytes) -> tuple[bytes, bytes, bytes]:
    """Split a managed-block file into (before, block body, after); no block: (all, b"", b"")."""
    lines = content.splitlines(keepends=True)
    begin = end = None
    for index, raw in enumerate(lines):
        text = raw.decode("utf-8", "replace").strip()
        if begin is None and text.startswith("# keyward:begin"):
            begin = index
        elif begin is not None and text.startswith(BLOCK_END):
            end = index
            break
    if begin is None or end is None:
        return content, b"", b""
    return b"".join(lines[:begin]), b"".join(lines[begin + 1 : end]), b"".join(lines[end + 1 :])


def _purge(region: bytes, purge: frozenset[str]) -> tuple[bytes, list[AuthorizedLine]]:
    """Drop lines outside keyward's block that carry a purged fingerprint (offboarding)."""
    if not purge or not region:
        return region, []
    kept: list[bytes] = []
    dropped: list[AuthorizedLine] = []
    # Split like sshd does: on "\n" only (a "\r" inside a line does not end it).
    for raw in region.split(b"\n"):
        if not raw:
            continue
        raw += b"\n"
        parsed = parse_authorized_keys(raw)
        if parsed and parsed[0].key is not None and parsed[0].key.fingerprint in purge:
            dropped.append(parsed[0])
            continue
        kept.append(raw)
    return b"".join(kept), dropped


def render(
    desired: DesiredFile, current: bytes | None, purge: frozenset[str] = frozenset()
) -> bytes:
    """The file's new content: all of it (exclusive) or just the marked block.

    In managed-block mode, lines outside the block are the host owner's, except
    that an offboarded person's keys (``purge``) are removed wherever they are.
    """
    if desired.mode == "exclusive":
        return desired.exclusive_content()
    body = "".join(line.render() + "\n" for line in desired.lines)
    block = f"{BLOCK_BEGIN}\n{body}{BLOCK_END}\n".encode()
    before, _, after = split_block(current or b"")
    before, _ = _purge(before, purge)
    after, _ = _purge(after, purge)
    if before and not before.endswith(b"\n"):
        before += b"\n"
    return before + block + after


def _managed_lines(
    mode: str, current: bytes, purge: frozenset[str] = frozenset()
) -> list[AuthorizedLine]:
    """The lines keyward owns in a file of ``mode`` (plus purged ones outside its block)."""
    if mode == "exclusive":
        return list(parse_cached(current))
    before, block, after = split_block(current)
    return parse_authorized_keys(block) + _purge(before, purge)[1] + _purge(after, purge)[1]


def _removal_reason(
    line: AuthorizedLine,
    desired_blobs: Mapping[bytes, str],
    snapshot: RegistrySnapshot,
    now: datetime,
) -> tuple[str | None, str]:
    """(owner, reason) for a line that is going away."""
    if line.key is None:
        return None, "unparsable"
    record = snapshot.by_fingerprint.get(line.key.fingerprint)
    ours = line.comment.startswith(COMMENT_PREFIX)
    if record is None:
        if line.key.blob in desired_blobs:
            return desired_blobs[line.key.blob], "replaced"
        return None, "drift"
    person = snapshot.people.get(record.owner)
    if record.revoked_at is not None:
        return record.owner, "revoked"
    if record.expires_at <= now:
        return record.owner, "expired"
    if person is not None and person.status != "active":
        return record.owner, person.status
    if line.key.blob in desired_blobs:
        return record.owner, "replaced"
    return record.owner, "access-ended" if ours else "drift"


def plan_file(
    desired: DesiredFile,
    observed: Observed,
    snapshot: RegistrySnapshot,
    now: datetime,
    purge: frozenset[str] = frozenset(),
) -> FilePlan:
    """Compare one desired file with what is on the host."""
    target = desired.target
    # Replacing an unreadable file is only safe when keyward owns all of it: in
    # managed-block mode the lines outside the block would be lost.
    replace = observed.replaceable and desired.mode == "exclusive"
    if observed.state == "error" and not replace:
        return FilePlan(
            target,
            "error",
            path=observed.path,
            error=observed.error_message or observed.error_code,
            error_code=observed.error_code,
        )
    current = observed.content if observed.state == "present" else None
    new_content = render(desired, current, purge)
    if desired.mode == "exclusive" and current is not None and new_content == current:
        # The whole file is already what keyward renders: every line is wanted, once, and
        # nothing is missing, so the comparison below would find no change. A verification
        # pass finds nearly every file so: skip parsing and comparing its lines.
        if not observed.owner_ok:
            return FilePlan(target, "fix-mode", observed.path, (), new_content, observed.sha256)
        return FilePlan(target, "in-sync", observed.path, new_content=new_content)
    existing = [] if current is None else _managed_lines(desired.mode, current, purge)
    wanted = {line.identity: line for line in desired.lines}
    desired_blobs = {line.key.blob: line.owner for line in desired.lines}
    changes: list[LineChange] = []
    seen: set[tuple[bytes, tuple[str, ...]]] = set()
    for line in existing:
        ident = (line.key.blob, line.options) if line.key is not None else None
        if ident is not None and ident in wanted and ident not in seen:
            seen.add(ident)
            continue
        owner, reason = _removal_reason(line, desired_blobs, snapshot, now)
        if ident is not None and ident in seen:
            reason = "duplicate"
        changes.append(
            LineChange(
                "remove",
                line.key.fingerprint if line.key else None,
                owner,
                reason,
                line.options,
                line.lineno,
            )
        )
    for ident, want in wanted.items():
        if ident not in seen:
            changes.append(
                LineChange("add", want.key.fingerprint, want.owner, "granted", want.options)
            )
    if observed.state == "error":  # replaceable: hard link or too large; content unknown
        changes.insert(0, LineChange("remove", None, None, observed.error_code or "unreadable"))
        return FilePlan(
            target,
            "update",
            observed.path,
            tuple(changes),
            new_content,
            "*",
            error_code=observed.error_code,
        )
    if current is None:
        return FilePlan(target, "create", observed.path, tuple(changes), new_content, None)
    if new_content != current:
        return FilePlan(
            target, "update", observed.path, tuple(changes), new_content, observed.sha256
        )
    if not observed.owner_ok:
        return FilePlan(target, "fix-mode", observed.path, (), new_content, observed.sha256)
    # In sync: new_content is what the host holds (lets the record step notice content that
    # an interrupted earlier run wrote but never recorded).
    return FilePlan(target, "in-sync", observed.path, new_content=new_content)


def plan_host(
    host: str,
    desired: Sequence[DesiredFile],
    observed: Mapping[FileTarget, Observed],
    snapshot: RegistrySnapshot,
    now: datetime,
    agent_fingerprint: str | None,
    purge: frozenset[str] = frozenset(),
    memo: PlanMemo | None = None,
) -> HostPlan:
    """Plan every managed file of one host, refusing any plan that would lock the agent out.

    ``memo`` (one per round) lets files equal to one already planned share its plan.
    """
    files = tuple(
        plan_file_memo(
            d,
            observed.get(
                d.target,
                Observed(
                    d.target, "error", error_code="not_read", error_message="file was not read"
                ),
            ),
            snapshot,
            now,
            purge,
            memo,
        )
        for d in desired
    )
    for d, f in zip(desired, files, strict=True):
        if not (d.is_login and f.writes and f.new_content is not None):
            continue
        if d.target.pattern != _first_pattern(desired, d):
            continue
        fingerprints = _fingerprints_kept(d.mode, f.new_content)
        if agent_fingerprint is None or agent_fingerprint not in fingerprints:
            return HostPlan(
                host,
                files,
                refused=(
                    f"refusing to write {d.target.account}'s {d.target.pattern}: it would no "
                    "longer hold the agent's own key (lockout)"
                ),
            )
    return HostPlan(host, files)


def _first_pattern(desired: Sequence[DesiredFile], d: DesiredFile) -> str:
    for other in desired:
        if other.target.account == d.target.account:
            return other.target.pattern
    return d.target.pattern
