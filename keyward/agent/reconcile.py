"""Applying plans to hosts, concurrently: the only code that writes to servers.

For each host: one connection, one read of every managed file, a pure plan,
then compare-and-swap writes of exactly the files that differ, each read back
and checked, all sent to the host in one request (``write_many``).  A failing
host never stops the others.  Hosts are reached through
``keyward.agent.transport``: over SSH in production, in memory in fast tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncssh

from keyward.adoption import guard as adoption_guard
from keyward.agent.transport import (
    Connector,
    FileRead,
    HostTransport,
    WriteRequest,
    WriteResult,
)
from keyward.clock import Clock
from keyward.desired import DesiredFile, FileTarget
from keyward.errors import HostError
from keyward.inventory.model import Host
from keyward.logins import LOGIN_MARKERS, LogLine
from keyward.logs import get_logger
from keyward.plan import (
    FilePlan,
    HostPlan,
    Observed,
    PlanMemo,
    parse_cached,
    plan_host,
    sha256,
)
from keyward.state import RegistrySnapshot


@dataclass(frozen=True)
class FileResult:
    plan: FilePlan
    written: bool = False
    confirmed_sha256: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Confirmation:
    """Read-back evidence for one offboarding case on one managed file."""

    case_id: int
    account: str
    pattern: str
    path: str | None
    clean: bool
    removed: int = 0
    error: str | None = None


@dataclass(frozen=True)
class AuthBatch:
    """New sshd log lines from one host and where reading stopped."""

    source: str  # "journal" or "file", as the host's helper read it
    lines: tuple[LogLine, ...]
    position: dict[str, Any] | None
    error: str | None = None

    @property
    def kind(self) -> str:
        """``journal`` or ``file:<path>``: what the lines came from, which decides whether
        they may be attributed (see ``keyward.logins.trusted_source``)."""
        if self.source == "journal":
            return "journal"
        path = (self.position or {}).get("path")
        return f"file:{path}" if isinstance(path, str) else "file"


@dataclass(frozen=True)
class HostResult:
    host: Host
    started: datetime
    finished: datetime
    plan: HostPlan | None = None
    files: tuple[FileResult, ...] = ()
    error: str | None = None
    confirmations: tuple[Confirmation, ...] = ()
    auth: AuthBatch | None = None
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None and all(f.error is None for f in self.files)

    @property
    def changes(self) -> int:
        return sum(len(f.plan.changes) or 1 for f in self.files if f.written)

    @property
    def problems(self) -> list[str]:
        out = [self.error] if self.error else []
        out += [
            f"{f.plan.target.account} {f.plan.path or f.plan.target.pattern}: {f.error}"
            for f in self.files
            if f.error
        ]
        return out


@dataclass
class RunContext:
    """Everything a run needs, passed explicitly."""

    snapshot: RegistrySnapshot
    desired: dict[FileTarget, DesiredFile]
    # How hosts are reached: the SSH ``Credentials``, or a fake fleet in tests.
    connector: Connector
    now: datetime
    agent_fingerprint: str | None
    run_id: str
    clock: Clock  # when each host's work starts and ends (``now`` stays the plan's moment)
    dry_run: bool = False
    log: Any = field(default_factory=get_logger)
    # Open offboarding cases: case id -> the person's fingerprints, confirmed by read-back.
    watch: Mapping[int, frozenset[str]] = field(default_factory=dict)
    # Login collection: host -> saved read position ({"cursor": ...} or {"inode", "offset"}).
    collect: bool = False
    auth_positions: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    check_sshd: bool = False  # plan: warn about sshd settings keyward relies on
    # Asked immediately before each write: (host, removal_only) -> None, or why not to
    # write. The daemon's lease check when several daemons share a fleet.
    fence: Callable[[str, bool], Awaitable[str | None]] | None = None
    # Plans shared by the round's files that are equal (``keyward.plan.PlanMemo``).
    plan_memo: PlanMemo = field(default_factory=PlanMemo)

    @property
    def purge(self) -> frozenset[str]:
        return frozenset().union(*self.watch.values()) if self.watch else frozenset()


# Helper codes for a file whose reads did not return in time (``busy``: still stuck from an
# earlier request on the same connection); the host's other files are handled regardless.
STUCK_CODES = frozenset({"timeout", "busy"})


def observed_from_reply(target: FileTarget, reply: FileRead) -> Observed:
    error = reply.error
    if error is None:  # the usual case, once per managed file per round: kept short
        return Observed(target, reply.state, reply.path, reply.content, reply.sha256,
                        reply.owner_ok, None, None, reply.replaceable)  # fmt: skip
    return Observed(
        target=target,
        state=reply.state,
        path=reply.path,
        content=reply.content,
        sha256=reply.sha256,
        owner_ok=reply.owner_ok,
        error_code=error.code,
        error_message=error.message,
        replaceable=reply.replaceable,
    )


def files_of(host: Host, desired: dict[FileTarget, DesiredFile]) -> list[DesiredFile]:
    return [
        desired[FileTarget(host.name, account, pattern)]
        for account in host.managed_accounts
        for pattern in host.authorized_keys
    ]


def _removal_only(plan: FilePlan) -> bool:
    return plan.action != "create" and all(c.action == "remove" for c in plan.changes)


async def _fenced(
    conn: HostTransport, plans: Sequence[FilePlan], ctx: RunContext
) -> tuple[list[bool], str]:
    """Which of ``plans`` the fence (``RunContext.fence``) lets be written now, and why the
    others are not.

    Every write path asks it immediately before the request that writes (``write_many``):
    nothing but this check may stand between it and the write. One answer covers the whole
    request, asked as removal-only when every file of it only removes keys; when it refuses
    a request that mixes both, the removals alone are asked about again (the fence lets
    removals through when it cannot confirm the lease: they must not wait for an addition).
    """
    if ctx.fence is None:
        return [True] * len(plans), ""
    removal = [_removal_only(p) for p in plans]
    refused = await ctx.fence(conn.host.name, all(removal))
    if refused is None:
        return [True] * len(plans), ""
    if any(removal) and not all(removal) and await ctx.fence(conn.host.name, True) is None:
        return removal, refused
    return [False] * len(plans), refused


async def _write_files(
    conn: HostTransport, plans: Sequence[FilePlan], ctx: RunContext
) -> list[WriteResult | FileResult]:
    """Write ``plans`` in one request, right after asking the fence: each plan's reply, or
    the fence's refusal as its ``FileResult``."""
    if not plans:
        return []
    allowed, refused = await _fenced(conn, plans, ctx)
    requests: list[WriteRequest] = []
    for p, ok in zip(plans, allowed, strict=True):
        if ok:
            assert p.new_content is not None  # every plan that writes has its content
            requests.append(
                WriteRequest(p.target.account, p.target.pattern, p.new_content, p.expect_sha256)
            )
    replies = iter(await conn.write_many(requests) if requests else [])
    return [
        next(replies) if ok else FileResult(plan, error=refused)
        for plan, ok in zip(plans, allowed, strict=True)
    ]


def _written(
    conn: HostTransport, plan: FilePlan, reply: WriteResult, ctx: RunContext
) -> FileResult:
    """The outcome of one write, logged."""
    assert plan.new_content is not None
    log = ctx.log.bind(host=conn.host.name, account=plan.target.account, run_id=ctx.run_id)
    if reply.error is not None:
        message = reply.error.text or "write failed"
        log.error("file_write_failed", path=plan.path, code=reply.error.code or None, error=message)
        return FileResult(plan, error=message)
    expected = sha256(plan.new_content)
    if reply.sha256 != expected:
        log.error("file_readback_mismatch", path=reply.path)
        return FileResult(plan, error="read-back after writing did not match what was written")
    for change in plan.changes:
        event = {"add": "key_added", "remove": "key_removed"}[change.action]
        if change.action == "remove" and change.reason == "drift":
            event = "drift_removed"
        log.info(
            event,
            path=reply.path,
            fingerprint=change.fingerprint,
            person=change.owner,
            reason=change.reason,
        )
    if plan.action == "fix-mode":
        log.info("file_mode_fixed", path=reply.path)
    if reply.fixed_dir_mode:
        log.info("dir_mode_fixed", path=reply.path)
    return FileResult(plan, written=True, confirmed_sha256=reply.sha256)


def known_after(result: HostResult) -> dict[FileTarget, Observed]:
    """What a successful sync leaves each of its files holding, as a read would observe it.

    A file written was read back by the helper and matched ``new_content`` byte for byte;
    a file in sync holds ``new_content`` (the plan found them equal) with the owner and
    mode a write would give it. Nothing is known after a failure.
    """
    if not result.ok:
        return {}
    known: dict[FileTarget, Observed] = {}
    for f in result.files:
        plan = f.plan
        content = plan.new_content
        if content is None or not (f.written or plan.action == "in-sync"):
            continue
        digest = f.confirmed_sha256 if f.written else None
        known[plan.target] = Observed(plan.target, "present", plan.path, content,
                                      digest or sha256(content), True)  # fmt: skip
    return known


def _plan(
    host: str, desired: list[DesiredFile], observed: Mapping[FileTarget, Observed], ctx: RunContext
) -> HostPlan:
    """The host's plan at the round's moment, sharing plans with the round's equal files."""
    return plan_host(
        host,
        desired,
        observed,
        ctx.snapshot,
        ctx.now,
        ctx.agent_fingerprint,
        ctx.purge,
        ctx.plan_memo,
    )


async def sync_known(
    conn: HostTransport,
    desired: list[DesiredFile],
    ctx: RunContext,
    known: Mapping[FileTarget, Observed],
) -> HostResult:
    """``sync_files`` for a push over a held connection whose files the caller knows.

    ``known`` is what the last sync over this same connection left in each file
    (``known_after``). Instead of reading the files again, the plan starts from that, and
    every write is a compare-and-swap against the hash it implies: a file someone changed
    since is refused by the host (nothing is written over it), and then the files not yet
    written are read and synced as ``sync_files`` does. Only a plain push uses it: while
    offboarding cases are open (their evidence must be a fresh read), when collecting logins
    or checking sshd, for a dry run, or when a file is not known, this is ``sync_files``.
    """
    if (
        ctx.watch
        or ctx.collect
        or ctx.check_sshd
        or ctx.dry_run
        or not all(d.target in known for d in desired)
    ):
        return await sync_files(conn, desired, ctx)
    host = conn.host
    started = _now(ctx)
    observed = {d.target: known[d.target] for d in desired}
    plan = _plan(host.name, desired, observed, ctx)
    if (
        plan.refused
        or plan.errors
        or adoption_guard.held_lines(host.name, plan, ctx.snapshot.adoption)
    ):
        # Refusals, errors and the switch-over guard are judged on a fresh read.
        return await sync_files(conn, desired, ctx)
    writing = [p for p in plan.files if p.writes]
    replies = iter(await _write_files(conn, writing, ctx))
    done: list[FileResult] = []
    redo: list[int] = []  # the files the host refused to write: read afresh below
    for i, file_plan in enumerate(plan.files):
        if not file_plan.writes:
            done.append(FileResult(file_plan))
            continue
        reply = next(replies)
        if isinstance(reply, FileResult):  # fenced
            done.append(reply)
        elif reply.error is not None:
            # Refused: the file is not what this connection last left there (or cannot be
            # written as it is). Read it afresh: what a read finds is then handled exactly
            # as ``sync_files`` handles it.
            done.append(FileResult(file_plan))  # replaced below
            redo.append(i)
        else:
            done.append(_written(conn, file_plan, reply, ctx))
    if not redo:
        return HostResult(host, started, _now(ctx), plan, tuple(done))
    rest = await sync_files(conn, [desired[i] for i in redo], ctx)
    if rest.files:
        for i, result in zip(redo, rest.files, strict=True):
            done[i] = result
    else:  # refused as a whole (its plan, or the adoption guard): rest.error says why
        done = [f for i, f in enumerate(done) if i not in redo]
    refused = rest.plan.refused if rest.plan is not None else None
    merged = HostPlan(host.name, tuple(f.plan for f in done), refused)
    return HostResult(host, started, rest.finished, merged, tuple(done), rest.error)


async def sync_files(
    conn: HostTransport, desired: list[DesiredFile], ctx: RunContext
) -> HostResult:
    """Read, plan and (unless dry-run) apply ``desired`` over an open connection.

    Used by one-shot reconciles (all files of a host) and by the daemon (just the
    files whose desired content changed, or all of them on a verification pass).
    """
    host = conn.host
    started = _now(ctx)
    log = ctx.log.bind(host=host.name, run_id=ctx.run_id)
    replies = await conn.read([(d.target.account, d.target.pattern) for d in desired])
    observed = {
        d.target: observed_from_reply(d.target, reply)
        for d, reply in zip(desired, replies, strict=True)
    }
    plan = _plan(host.name, desired, observed, ctx)
    if plan.refused:
        log.error("plan_refused", reason=plan.refused)
        return HostResult(host, started, _now(ctx), plan, error=plan.refused)
    held = adoption_guard.held_lines(host.name, plan, ctx.snapshot.adoption)
    if held:
        refusal = adoption_guard.refusal(
            host.name, held, host.name in ctx.snapshot.adoption.complete
        )
        log.error("adoption_refused", lines=len(held), fingerprints=[h.fingerprint for h in held])
        return HostResult(host, started, _now(ctx), plan, error=refusal)
    writing = [] if ctx.dry_run else [p for p in plan.files if p.writes]
    answers = iter(await _write_files(conn, writing, ctx))
    results: list[FileResult] = []
    for file_plan in plan.files:
        if file_plan.action == "error":
            # A file that never answered is not unsafe, it is unknown: say so, at error level.
            stuck = file_plan.error_code in STUCK_CODES
            event, emit = ("file_timeout", log.error) if stuck else ("file_unsafe", log.warning)
            emit(
                event,
                account=file_plan.target.account,
                path=file_plan.path,
                code=file_plan.error_code,
                error=file_plan.error,
            )
            results.append(FileResult(file_plan, error=file_plan.error))
        elif file_plan.writes and not ctx.dry_run:
            answer = next(answers)
            if isinstance(answer, FileResult):  # fenced
                results.append(answer)
            else:
                results.append(_written(conn, file_plan, answer, ctx))
        else:
            results.append(FileResult(file_plan))
    confirmations: tuple[Confirmation, ...] = ()
    if ctx.watch and not ctx.dry_run:
        confirmations = confirm_removal(desired, observed, results, ctx.watch)
        _log_confirmations(log, confirmations)
    auth = await collect_auth_log(conn, ctx) if ctx.collect and not ctx.dry_run else None
    warnings = await sshd_warnings(conn) if ctx.check_sshd else ()
    return HostResult(
        host, started, _now(ctx), plan, tuple(results), None, confirmations, auth, warnings
    )


async def sshd_warnings(conn: HostTransport) -> tuple[str, ...]:
    """What in the host's effective sshd configuration undermines keyward's guarantees."""
    reply = await conn.sshd_config(conn.host.login, conn.host.sshd_config)
    if reply.error is not None:
        return (f"cannot read sshd's configuration (sshd -T): {reply.error.message or None}",)
    settings = reply.settings
    out: list[str] = []
    level = str(settings.get("loglevel", "")).upper()
    if level not in ("VERBOSE", "DEBUG", "DEBUG1", "DEBUG2", "DEBUG3"):
        out.append(
            f"sshd LogLevel is {level or 'unknown'}: it does not log which key logged in; "
            "set LogLevel VERBOSE"
        )
    if str(settings.get("strictmodes", "yes")).lower() != "yes":
        out.append("sshd StrictModes is off: users' file permissions are not checked")
    if str(settings.get("permituserenvironment", "no")).lower() not in ("no", ""):
        out.append("sshd PermitUserEnvironment is on: users can set variables like LD_PRELOAD")
    return tuple(out)


async def collect_auth_log(conn: HostTransport, ctx: RunContext) -> AuthBatch:
    """Read sshd's log lines that are new since the saved position, over the open connection."""
    saved = ctx.auth_positions.get(conn.host.name, {})
    cursor, position = saved.get("cursor"), saved.get("position")
    reply = await conn.auth_log(
        conn.host.auth_log,
        cursor=cursor if isinstance(cursor, str) else None,
        position=position if isinstance(position, dict) else None,
        match=LOGIN_MARKERS,
    )
    if reply.error is not None or reply.source is None:
        message = (reply.error.text if reply.error else "") or "auth log unreadable"
        ctx.log.bind(host=conn.host.name).warning("auth_log_unreadable", error=message)
        return AuthBatch(conn.host.auth_log, (), None, message)
    if reply.source == "journal" and conn.host.auth_log not in ("auto", "journal"):
        # The journal is trusted and a file is not: the kind of a batch follows what the
        # inventory asked for, never only what the host answered.
        message = f"asked for {conn.host.auth_log}, the host answered with the journal"
        ctx.log.bind(host=conn.host.name).warning("auth_log_unreadable", error=message)
        return AuthBatch(conn.host.auth_log, (), None, message)
    new_position: dict[str, Any] = {"source": reply.source}
    if reply.source == "journal":
        new_position["cursor"] = reply.cursor
    else:
        new_position["position"] = reply.position
        new_position["path"] = reply.path
    return AuthBatch(reply.source, reply.lines, new_position)


def failed(host: Host, started: datetime, ctx: RunContext, exc: Exception) -> HostResult:
    """A HostResult for a host that could not be handled, logged as ``host_failed``."""
    if isinstance(exc, HostError):
        message = exc.message
    else:
        message = f"{host.name}: {type(exc).__name__}: {exc}"
    ctx.log.bind(host=host.name, run_id=ctx.run_id).error("host_failed", error=message)
    return HostResult(host, started, _now(ctx), error=message)


# What fails one host and not the round: keyward's own errors about the host (unreachable,
# refused, a helper answer it cannot read: HostProtocolError) and the network's. Anything
# else is a bug in keyward and raises, instead of showing up as "host failed".
HOST_FAILURES = (HostError, OSError, asyncssh.Error)


async def reconcile_host(host: Host, ctx: RunContext) -> HostResult:
    """Connect, sync every managed file of ``host``, disconnect; never raises for host problems."""
    started = _now(ctx)
    conn: HostTransport | None = None
    try:
        conn = await ctx.connector.open(host)
        return await sync_files(conn, files_of(host, ctx.desired), ctx)
    except HOST_FAILURES as exc:
        return failed(host, started, ctx, exc)
    finally:
        if conn is not None:
            await conn.close()


def confirm_removal(
    desired: Sequence[DesiredFile],
    observed: Mapping[FileTarget, Observed],
    results: Sequence[FileResult],
    watch: Mapping[int, frozenset[str]],
) -> tuple[Confirmation, ...]:
    """Evidence, per open offboarding case and file, that no watched fingerprint is left.

    It uses what this run has already read from the host, after the revocation was
    committed: a written file was read back by the helper right after the rename
    and found byte-identical to the content written (``_written`` refuses any
    other reply), so its keys are those of that content; a file left alone is
    what the run read before planning.  A file the run could not read or write
    safely is not confirmed: nothing trustworthy is known about it.
    """
    out: list[Confirmation] = []
    for d, result in zip(desired, results, strict=True):
        seen = observed[d.target]
        path = result.plan.path or seen.path
        error = result.error
        content: bytes | None = None
        if error is None and result.written:
            content = result.plan.new_content
        elif error is None and seen.state == "present":
            content = seen.content
        elif error is None and seen.state != "missing":
            error = seen.error_message or seen.error_code or "unreadable"
        present = (
            {line.key.fingerprint for line in parse_cached(content) if line.key}
            if content is not None
            else set()
        )
        for case_id, fingerprints in watch.items():
            removed = 0
            if result.written:
                removed = sum(
                    1
                    for c in result.plan.changes
                    if c.action == "remove" and c.fingerprint in fingerprints
                )
            left = present & fingerprints
            problem = f"{len(left)} of the person's keys still present" if left else error
            out.append(
                Confirmation(
                    case_id,
                    d.target.account,
                    d.target.pattern,
                    path,
                    problem is None,
                    removed,
                    problem,
                )
            )
    return tuple(out)


def _log_confirmations(log: Any, confirmations: Sequence[Confirmation]) -> None:
    for c in confirmations:
        if c.clean:
            log.info(
                "offboarding_confirmed",
                account=c.account,
                path=c.path,
                case_id=c.case_id,
                removed=c.removed,
            )
        else:
            log.error(
                "offboarding_unconfirmed",
                account=c.account,
                path=c.path,
                case_id=c.case_id,
                error=c.error,
            )


def _now(ctx: RunContext) -> datetime:
    return max(ctx.clock(), ctx.now)


async def reconcile_fleet(
    hosts: Sequence[Host],
    ctx: RunContext,
    concurrency: int,
    on_done: Callable[[HostResult], None] | None = None,
) -> list[HostResult]:
    """Reconcile every host with at most ``concurrency`` at once; results in host order."""
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def one(host: Host) -> HostResult:
        async with semaphore:
            result = await reconcile_host(host, ctx)
        if on_done is not None:
            on_done(result)
        return result

    return list(await asyncio.gather(*(one(h) for h in hosts)))
