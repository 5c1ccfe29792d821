"""Applying plans to hosts, concurrently: the only code that writes to servers.

For each host: one connection, one read of every managed file, a pure plan,
then compare-and-swap writes of exactly the files that differ, each read back
and checked.  A failing host never stops the others.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keyward.agent.connection import Credentials, HostConnection
from keyward.desired import DesiredFile, FileTarget
from keyward.errors import HostError
from keyward.inventory.model import Host
from keyward.logs import get_logger
from keyward.plan import FilePlan, HostPlan, Observed, plan_host, sha256
from keyward.state import RegistrySnapshot


@dataclass(frozen=True)
class FileResult:
    plan: FilePlan
    written: bool = False
    confirmed_sha256: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class HostResult:
    host: Host
    started: datetime
    finished: datetime
    plan: HostPlan | None = None
    files: tuple[FileResult, ...] = ()
    error: str | None = None

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
    creds: Credentials
    now: datetime
    agent_fingerprint: str | None
    run_id: str
    dry_run: bool = False
    log: Any = field(default_factory=get_logger)


def observed_from_reply(target: FileTarget, reply: dict[str, Any]) -> Observed:
    error = reply.get("error") or {}
    content = None
    if reply.get("content_b64") is not None:
        content = base64.b64decode(reply["content_b64"])
    return Observed(
        target=target,
        state=reply.get("state", "error"),
        path=reply.get("path"),
        content=content,
        sha256=reply.get("sha256"),
        owner_ok=bool(reply.get("owner_ok", True)),
        error_code=error.get("code"),
        error_message=error.get("message"),
    )


def files_of(host: Host, desired: dict[FileTarget, DesiredFile]) -> list[DesiredFile]:
    return [
        desired[FileTarget(host.name, account, pattern)]
        for account in host.managed_accounts
        for pattern in host.authorized_keys
    ]


async def _apply_file(conn: HostConnection, plan: FilePlan, ctx: RunContext) -> FileResult:
    assert plan.new_content is not None
    log = ctx.log.bind(host=conn.host.name, account=plan.target.account, run_id=ctx.run_id)
    reply = await conn.helper.write(
        plan.target.account, plan.target.pattern, plan.new_content, plan.expect_sha256
    )
    if not reply.get("ok"):
        error = reply.get("error") or {}
        message = str(error.get("message") or error.get("code") or "write failed")
        log.error("file_write_failed", path=plan.path, code=error.get("code"), error=message)
        return FileResult(plan, error=message)
    expected = sha256(plan.new_content)
    if reply.get("sha256") != expected:
        log.error("file_readback_mismatch", path=reply.get("path"))
        return FileResult(plan, error="read-back after writing did not match what was written")
    for change in plan.changes:
        event = {"add": "key_added", "remove": "key_removed"}[change.action]
        if change.action == "remove" and change.reason == "drift":
            event = "drift_removed"
        log.info(
            event,
            path=reply.get("path"),
            fingerprint=change.fingerprint,
            person=change.owner,
            reason=change.reason,
        )
    if plan.action == "fix-mode":
        log.info("file_mode_fixed", path=reply.get("path"))
    if reply.get("fixed_dir_mode"):
        log.info("dir_mode_fixed", path=reply.get("path"))
    return FileResult(plan, written=True, confirmed_sha256=reply.get("sha256"))


async def reconcile_host(host: Host, ctx: RunContext) -> HostResult:
    """Plan and (unless dry-run) apply one host; never raises for host problems."""
    started = ctx.now
    log = ctx.log.bind(host=host.name, run_id=ctx.run_id)
    desired = files_of(host, ctx.desired)
    conn: HostConnection | None = None
    try:
        conn = await HostConnection.open(host, ctx.creds)
        replies = await conn.helper.read([(d.target.account, d.target.pattern) for d in desired])
        observed = {
            d.target: observed_from_reply(d.target, reply)
            for d, reply in zip(desired, replies, strict=True)
        }
        plan = plan_host(host.name, desired, observed, ctx.snapshot, ctx.now, ctx.agent_fingerprint)
        if plan.refused:
            log.error("plan_refused", reason=plan.refused)
            return HostResult(host, started, _now(ctx), plan, error=plan.refused)
        results: list[FileResult] = []
        for file_plan in plan.files:
            if file_plan.action == "error":
                log.warning(
                    "file_unsafe",
                    account=file_plan.target.account,
                    path=file_plan.path,
                    code=file_plan.error_code,
                    error=file_plan.error,
                )
                results.append(FileResult(file_plan, error=file_plan.error))
            elif file_plan.writes and not ctx.dry_run:
                results.append(await _apply_file(conn, file_plan, ctx))
            else:
                results.append(FileResult(file_plan))
        return HostResult(host, started, _now(ctx), plan, tuple(results))
    except HostError as exc:
        log.error("host_failed", error=exc.message)
        return HostResult(host, started, _now(ctx), error=exc.message)
    except (OSError, ValueError, KeyError) as exc:
        message = f"{host.name}: {type(exc).__name__}: {exc}"
        log.error("host_failed", error=message)
        return HostResult(host, started, _now(ctx), error=message)
    finally:
        if conn is not None:
            await conn.close()


def _now(ctx: RunContext) -> datetime:
    from keyward.clock import system_clock

    return max(system_clock(), ctx.now)


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
