"""One round over a set of hosts: read, plan, apply, confirm by read-back, record.

``keyward plan`` (a dry run), ``keyward reconcile`` and ``keyward offboard`` are this
function with different settings. Hosts are recorded as they finish (see ``batches``);
what the registry would not take is retried under the recorder's one policy. When the
round's logins put someone into failure mode, a second pass applies the stricter options
at once instead of at the next round.

The engine prints nothing: progress goes to a ``progress`` callback, lock waits to
``on_wait``; the clock, the sleep between retries and the registry are passed in.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from keyward.clock import Clock
from keyward.engine.inputs import (
    CaseWatch,
    RoundInputs,
    checked_credentials,
    open_case_watch,
    refresh,
)
from keyward.engine.recorder import RETRY, LoginSink, Recorder, RetryPolicy
from keyward.logs import get_logger

if TYPE_CHECKING:
    from keyward.agent.reconcile import HostResult, RunContext
    from keyward.agent.transport import Connector
    from keyward.registry.store import Registry

Advance = Callable[[bool], None]  # called once per finished host: advance(failed)
Progress = Callable[[int, str], AbstractContextManager[Advance]]  # (hosts, "plan"/"reconcile")


@dataclass(frozen=True)
class Surroundings:
    """What a round uses from outside itself, passed explicitly."""

    registry: Registry
    actor: str
    clock: Clock
    sleep: Callable[[float], None]


@dataclass(frozen=True)
class RoundSettings:
    concurrency: int | None = None  # hosts at once; default: the inventory's [agent] setting
    dry_run: bool = False  # plan only: write nothing, record nothing
    collect: bool = True  # read and attribute new sshd log lines (never on a dry run)
    check_sshd: bool = False  # warn about sshd settings keyward relies on (``plan``)


@contextmanager
def no_progress(total: int, what: str) -> Iterator[Advance]:
    """The default progress callback: none."""
    yield lambda failed: None


@contextmanager
def writers_lock(
    surroundings: Surroundings, holder: str, wait: float, on_wait: Callable[[str], None]
) -> Iterator[None]:
    """Hold the writers' lock (shared with the daemon) for a round that writes.

    ``on_wait(holder)`` is called when another writer holds it; ``wait`` bounds the wait.
    """
    from keyward.registry.lock import Holder, reconcile_lock

    with reconcile_lock(
        surroundings.registry,
        wait=wait,
        holder=Holder(holder, surroundings.actor),
        on_wait=on_wait,
    ):
        yield


def new_run_id(prefix: str = "") -> str:
    """A round's id in logs and audit events: 12 characters (the daemon's start with ``d``)."""
    return prefix + uuid.uuid4().hex[: 12 - len(prefix)]


def host_context(
    inputs: RoundInputs,
    connector: Connector,
    clock: Clock,
    run_id: str,
    watch: CaseWatch,
    settings: RoundSettings,
    auth_positions: Mapping[str, dict[str, Any]],
) -> RunContext:
    """What each host of a round is handled with (``settings.collect`` taken as given)."""
    from keyward.agent.reconcile import RunContext

    return RunContext(
        snapshot=inputs.snapshot,
        desired=inputs.desired,
        connector=connector,
        now=inputs.now,
        agent_fingerprint=inputs.agent_key.fingerprint,
        run_id=run_id,
        clock=clock,
        dry_run=settings.dry_run,
        log=get_logger(),
        watch=dict(watch),
        collect=settings.collect,
        auth_positions=dict(auth_positions),
        check_sshd=settings.check_sshd,
    )


def run_round(
    surroundings: Surroundings,
    inputs: RoundInputs,
    settings: RoundSettings,
    progress: Progress = no_progress,
    retry: RetryPolicy = RETRY,
) -> list[HostResult]:
    """One pass over ``inputs.hosts``; results in host order, one per host.

    Raises for what stops the round as a whole (bad credentials, a registry that cannot
    record the hosts even after retries); a host's own failure is in its result.
    """
    from keyward import event_loop
    from keyward.agent.limits import fds_needed, raise_fd_limit
    from keyward.agent.reconcile import reconcile_fleet
    from keyward.engine.batches import BatchRecorder
    from keyward.registry.attribution import saved_positions

    registry = surroundings.registry
    watch = open_case_watch(registry)
    creds = checked_credentials(inputs.inventory, inputs.agent_key)
    run_id = new_run_id()
    log = get_logger(run_id=run_id)
    dry_run = settings.dry_run
    collecting = settings.collect and not dry_run
    ctx = host_context(
        inputs,
        creds,
        surroundings.clock,
        run_id,
        watch,
        replace(settings, collect=collecting),
        saved_positions(registry) if collecting else {},
    )
    limit = settings.concurrency or inputs.inventory.agent.concurrency
    # Concurrency bounds the open connections; the soft fd limit must cover them.
    fd_soft, _ = raise_fd_limit(fds_needed(limit))
    recorder = Recorder(
        registry,
        surroundings.actor,
        surroundings.clock,
        run_id,
        tuple(watch),
        log,
        LoginSink.of(inputs),
    )

    async def run_and_record() -> list[HostResult]:
        batches: BatchRecorder[HostResult] = BatchRecorder(recorder.record)

        batches.start()
        with progress(len(inputs.hosts), "plan" if dry_run else "reconcile") as advance:

            def done(result: HostResult) -> None:
                advance(not result.ok)
                if not dry_run:
                    batches.add(result)

            try:
                return await reconcile_fleet(inputs.hosts, ctx, limit, done)
            finally:
                await batches.close()

    log.info(
        "run_started",
        hosts=len(inputs.hosts),
        dry_run=dry_run,
        concurrency=limit,
        fd_limit=fd_soft,
    )
    results = event_loop.run(run_and_record())
    # A dry run writes nothing: its changes are the plan's (``plan_finished``), not a count
    # of zero that would contradict what ``keyward plan`` prints.
    log.info(
        "run_finished",
        hosts=len(results),
        failed=sum(1 for r in results if not r.ok),
        **({"dry_run": True} if dry_run else {"changes": sum(r.changes for r in results)}),
    )
    recorder.retry(surroundings.sleep, retry)
    recorder.notify(inputs.inventory.policy.alert_command)
    if recorder.failure_modes:
        log.warning("failure_mode_applied", people=recorder.failure_modes)
        again = refresh(
            registry, surroundings.clock, inputs.inventory, inputs.hosts, inputs.agent_key
        )
        return run_round(
            surroundings, again, replace(settings, collect=False, check_sshd=False), progress, retry
        )
    return results
