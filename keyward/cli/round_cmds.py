"""``keyward plan`` and ``keyward reconcile``: one round over the fleet, and how its
per-host results are printed, logged and turned into an exit code (shared by both)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, printable, progress
from keyward.cli.rounds import (
    EXIT_FAILED,
    EXIT_IN_SYNC,
    EXIT_PENDING,
    load_inputs,
    say_lock_wait,
    surroundings,
)
from keyward.logs import get_logger

if TYPE_CHECKING:
    from keyward.agent.reconcile import HostResult

pass_app = click.make_pass_decorator(AppContext)

# A daemon holds the lock only for a push; a one-shot reconcile waits that long.
LOCK_WAIT = 120.0


# -- a round's results, for people and for programs --------------------------


def result_json(result: HostResult, adoption: AdoptionLogins | None = None) -> dict[str, Any]:
    """One host's result as JSON; on a host an adoption scan has read (``adoption``),
    each removal also carries ``last_login`` (ISO time, or null: never seen logging in)."""
    scanned = adoption is not None and result.host.name in adoption.hosts
    files = []
    for f in result.files:
        p = f.plan
        files.append(
            {
                "account": p.target.account,
                "pattern": p.target.pattern,
                "path": p.path,
                "action": p.action,
                "written": f.written,
                "error": f.error,
                "error_code": p.error_code,
                "changes": [
                    {
                        "action": c.action,
                        "fingerprint": c.fingerprint,
                        "owner": c.owner,
                        "reason": c.reason,
                        "options": list(c.options),
                        **(
                            {"last_login": _iso(adoption, c.fingerprint)}
                            if scanned and adoption is not None and c.action == "remove"
                            else {}
                        ),
                    }
                    for c in p.changes
                ],
            }
        )
    if result.error or any(f.error for f in result.files):
        status = "error"
    elif result.plan is not None and result.plan.pending:
        status = "pending"
    else:
        status = "in-sync"
    return {
        "host": result.host.name,
        "environment": result.host.environment,
        "status": status,
        "error": result.error,
        "warnings": list(result.warnings),
        "files": files,
    }


def _iso(adoption: AdoptionLogins, fingerprint: str | None) -> str | None:
    seen = adoption.last_login.get(fingerprint or "")
    return seen.isoformat() if seen is not None else None


def _expiry_text(value: str | None) -> str:
    """``20261231235959Z`` as ``2026-12-31 23:59 UTC``; anything else as written."""
    if value is None:
        return "never"
    if len(value) == 15 and value[:14].isdigit() and value.endswith("Z"):
        return f"{value[:4]}-{value[4:6]}-{value[6:8]} {value[8:10]}:{value[10:12]} UTC"
    return printable(value)


@dataclass(frozen=True)
class PlanSummary:
    """The numbers of the plan's last line, and of its ``plan_finished`` log event."""

    hosts: int
    to_change: int
    in_sync: int
    failed: int
    additions: int
    removals: int
    updates: int

    def line(self) -> str:
        def n(count: int, one: str, many: str) -> str:
            return f"{count} {one if count == 1 else many}"

        return (
            f"plan: {n(self.hosts, 'host', 'hosts')}, {self.to_change} to change "
            f"({n(self.additions, 'addition', 'additions')}, "
            f"{n(self.removals, 'removal', 'removals')}, {n(self.updates, 'update', 'updates')}), "
            f"{self.in_sync} in sync, {self.failed} failed"
        )


def plan_summary(results: list[HostResult]) -> PlanSummary:
    from keyward.plan import shown_changes

    statuses = [result_json(r)["status"] for r in results]
    counts = {"add": 0, "remove": 0, "update": 0}
    for result in results:
        for f in result.files:
            for shown in shown_changes(f.plan.changes):
                counts[shown.action] += 1
    return PlanSummary(
        hosts=len(results),
        to_change=statuses.count("pending"),
        in_sync=statuses.count("in-sync"),
        failed=statuses.count("error"),
        additions=counts["add"],
        removals=counts["remove"],
        updates=counts["update"],
    )


def _login_text(value: datetime | None) -> str:
    return f"last login {value:%Y-%m-%d %H:%M} UTC" if value else "never logged in"


def print_plan(
    results: list[HostResult], applied: bool, adoption: AdoptionLogins | None = None
) -> None:
    """The plan for people: per host and file, each line change, then one summary line.

    On hosts ``keyward adopt scan`` has read, every removal also says when its key last
    logged in (``adoption``), so the switch-over is decided with that in view.
    """
    from keyward.plan import EXPIRY_OPTION, shown_changes

    for result in results:
        data = result_json(result)
        click.echo(f"{data['host']} ({data['environment']}): {data['status']}")
        if result.error:
            click.echo(f"  error: {result.error}")
        for warning in result.warnings:
            click.echo(f"  warning: {warning}")
        for f, file_result in zip(data["files"], result.files, strict=True):
            if f["action"] == "in-sync" and not f["error"]:
                continue
            verb = f["action"] + (" (written)" if f["written"] else "")
            click.echo(f"  {f['account']}  {f['path'] or f['pattern']}  {verb}")
            if f["error"]:
                click.echo(f"    error: {f['error']}")
            for c in shown_changes(file_result.plan.changes):
                owner = c.owner or "(unknown key)"
                fp = c.fingerprint or "(unparsable line)"
                if c.action == "update":
                    rest = [o for o in c.options if not o.lower().startswith(EXPIRY_OPTION)]
                    opts = f"  [{printable(','.join(rest))}]" if rest else ""
                    click.echo(
                        f"    ~ {owner:<14} {fp}  expiry {_expiry_text(c.old_expiry)} -> "
                        f"{_expiry_text(c.new_expiry)}{opts}"
                    )
                    continue
                sign = "+" if c.action == "add" else "-"
                opts = f"  [{printable(','.join(c.options))}]" if c.options else ""
                login = ""
                if adoption and c.action == "remove" and result.host.name in adoption.hosts:
                    seen = adoption.last_login.get(c.fingerprint or "")
                    login = f"  ({_login_text(seen)})"
                click.echo(f"    {sign} {owner:<14} {fp}  {c.reason}{opts}{login}")
    click.echo(plan_summary(results).line())


def log_plan(results: list[HostResult]) -> None:
    """Log the plan as it is printed: one ``change_planned`` per printed change (an expiry
    change is one ``update``, as on screen), then ``plan_finished`` with the summary's
    numbers.  So the structured log says what the screen said."""
    from keyward.plan import shown_changes

    log = get_logger()
    for result in results:
        for f in result.files:
            for c in shown_changes(f.plan.changes):
                extra: dict[str, Any] = {}
                if c.action == "update":
                    extra = {"old_expiry": c.old_expiry, "new_expiry": c.new_expiry}
                log.info(
                    "change_planned",
                    host=result.host.name,
                    account=f.plan.target.account,
                    path=f.plan.path or f.plan.target.pattern,
                    action=c.action,
                    fingerprint=c.fingerprint,
                    person=c.owner,
                    reason=c.reason,
                    **extra,
                )
    log.info("plan_finished", **dataclasses.asdict(plan_summary(results)))


def exit_code(results: list[HostResult]) -> int:
    if any(not r.ok for r in results):
        return EXIT_FAILED
    if any(r.plan is not None and r.plan.pending for r in results):
        return EXIT_PENDING
    return EXIT_IN_SYNC


@dataclass(frozen=True)
class AdoptionLogins:
    """Hosts an adoption scan has read, and the last login of each key a plan removes."""

    hosts: frozenset[str]
    last_login: Mapping[str, datetime]


def adoption_logins(app: AppContext, results: list[HostResult]) -> AdoptionLogins:
    from sqlmodel import select

    from keyward.registry.adoption import last_logins
    from keyward.registry.models import AdoptHost

    with app.registry().read() as session:
        hosts = frozenset(session.exec(select(AdoptHost.host)).all())
        removed = {
            c.fingerprint
            for r in results
            if r.host.name in hosts
            for f in r.files
            for c in f.plan.changes
            if c.action == "remove" and c.fingerprint
        }
        return AdoptionLogins(hosts, last_logins(session, removed) if removed else {})


# -- plan / reconcile ---------------------------------------------------------


@click.command()
@click.option("--env", default=None, help="Only this environment.")
@click.option("--host", default=None, help="Only this host.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@click.pass_context
def plan(
    ctx: click.Context, app: AppContext, env: str | None, host: str | None, as_json: bool
) -> None:
    """Show what reconcile would change on each host; change nothing.

    Exit 0: everything in sync; 3: changes pending; 1: a host failed; 2: bad input.
    """
    from keyward.engine.round import RoundSettings, run_round

    settings = RoundSettings(dry_run=True, check_sshd=True)
    results = run_round(surroundings(app), load_inputs(app, env, host), settings, progress)
    log_plan(results)
    adoption = adoption_logins(app, results)
    if as_json:
        emit_json([result_json(r, adoption) for r in results])
    else:
        print_plan(results, applied=False, adoption=adoption)
    ctx.exit(exit_code(results))


@click.command()
@click.option("--env", default=None, help="Only this environment.")
@click.option("--host", default=None, help="Only this host.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 2000),
    default=None,
    help="Hosts at once (default: [agent] concurrency).",
)
@click.option("--dry-run", is_flag=True, help="Plan only; write nothing.")
@click.option("--no-logins", is_flag=True, help="Do not collect sshd login events in this run.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-host result as JSON.")
@pass_app
@click.pass_context
def reconcile(
    ctx: click.Context,
    app: AppContext,
    env: str | None,
    host: str | None,
    concurrency: int | None,
    dry_run: bool,
    no_logins: bool,
    as_json: bool,
) -> None:
    """Make every managed authorized_keys file match the registry and inventory.

    Exit 0: all hosts done; 1: some host failed (the others were still done).
    """
    from keyward.engine.round import RoundSettings, run_round, writers_lock

    around = surroundings(app)
    settings = RoundSettings(concurrency, dry_run, collect=not no_logins)
    with writers_lock(around, "keyward reconcile", LOCK_WAIT, say_lock_wait):
        results = run_round(around, load_inputs(app, env, host), settings, progress)
    if as_json:
        emit_json([result_json(r) for r in results])
    else:
        failed = [r for r in results if not r.ok]
        changed = sum(1 for r in results if any(f.written for f in r.files))
        click.echo(
            f"{len(results)} hosts: {changed} changed, {len(failed)} failed"
            + (" (dry run)" if dry_run else "")
        )
        for r in failed:
            for problem in r.problems:
                click.echo(f"  {r.host.name}: {problem}")
    code = exit_code(results)
    ctx.exit(EXIT_FAILED if code == EXIT_FAILED else 0)


def register(cli: click.Group) -> None:
    for command in (plan, reconcile):
        cli.add_command(command)
