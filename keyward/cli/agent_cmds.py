"""Agent commands: inventory check, hosts scan, plan, reconcile, status."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from keyward.cli import inventory_import
from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, progress, table, ts
from keyward.cli.rounds import (
    EXIT_FAILED,
    EXIT_IN_SYNC,
    EXIT_PENDING,
    load_inputs,
    say_lock_wait,
    surroundings,
)
from keyward.errors import InventoryError, UsageError
from keyward.logs import get_logger

if TYPE_CHECKING:
    from keyward.agent import scan
    from keyward.agent.reconcile import HostResult
    from keyward.inventory.model import Environment, Inventory

pass_app = click.make_pass_decorator(AppContext)

# A daemon holds the lock only for a push; a one-shot reconcile waits that long.
LOCK_WAIT = 120.0
DAEMON_STALE_AFTER = 20.0  # seconds without a heartbeat before a daemon counts as gone


# -- inventory ----------------------------------------------------------------


@click.group()
def inventory() -> None:
    """The inventory: environments, hosts, accounts, access rules."""


@inventory.command("check")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def inventory_check(app: AppContext, as_json: bool) -> None:
    """Validate the inventory; print a summary, or every problem with its file and key."""
    from keyward.cli.inventory_summary import summarize
    from keyward.inventory import check_inventory

    root = app.inventory_dir()
    inv, problems = check_inventory(root)
    if as_json:
        emit_json(inventory_check_json(root, inv, problems))
    if inv is None:
        for problem in problems:
            click.echo(str(problem), err=True)
        noun = "problem" if len(problems) == 1 else "problems"
        raise InventoryError(f"{root}: {len(problems)} {noun}")
    if not as_json:
        click.echo(summarize(inv))


def inventory_check_json(root: Path, inv: Inventory | None, problems: list[Any]) -> dict[str, Any]:
    """``inventory check --json``: the problems, or the same totals as the summary."""
    return {
        "root": str(root),
        "ok": inv is not None,
        "problems": [{"file": p.file, "key": p.key, "message": p.message} for p in problems],
        "environments": [
            {
                "name": env.name,
                "file": str(env.source_file),
                "customer": env.customer,
                "min_attestation": env.min_attestation,
                "hosts": [h.name for h in env.hosts],
                "managed_accounts": sum(len(h.managed_accounts) for h in env.hosts),
                "access_rules": len(env.access),
                "break_glass_keys": len(env.break_glass),
                "roles": sorted({role for rule in env.access for role in rule.roles}),
            }
            for env in (inv.environments if inv is not None else ())
        ],
    }


@inventory.command("show")
@click.option("--env", default=None, help="Only this environment.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def inventory_show(app: AppContext, env: str | None, as_json: bool) -> None:
    """Environments, hosts, accounts, access rules and break-glass keys, as loaded."""
    from keyward.inventory import load_inventory

    inv = load_inventory(app.inventory_dir())
    envs = (inv.environment(env),) if env is not None else inv.environments
    data = [_environment_json(e) for e in envs]
    if as_json:
        emit_json({"root": str(inv.root), "environments": data})
        return
    for e in data:
        customer = f", customer {e['customer']}" if e["customer"] else ""
        click.echo(
            f"environment {e['name']} ({e['source_file']}): "
            f"min_attestation {e['min_attestation']}{customer}"
        )
        click.echo("  hosts:")
        for h in e["hosts"]:
            extra = f" customer {h['customer']}" if h["customer"] else ""
            click.echo(
                f"    {h['name']}  {h['address']}:{h['port']}  login {h['login']}  "
                f"{h['mode']}  groups {','.join(h['groups']) or '-'}  "
                f"accounts {','.join(h['managed_accounts'])}{extra}"
            )
        click.echo("  access:")
        for r in e["access"]:
            click.echo(
                f"    {r['source']}: roles {','.join(r['roles'])} -> accounts "
                f"{','.join(r['accounts'])} on {_scope(r)}"
                + (f"  [{printable(','.join(r['options']))}]" if r["options"] else "")
            )
        if not e["access"]:
            click.echo("    (none)")
        if e["break_glass"]:
            click.echo("  break-glass:")
            for g in e["break_glass"]:
                click.echo(
                    f"    {g['source']}: {g['fingerprint']} -> accounts "
                    f"{','.join(g['accounts'])} on {_scope(g)}"
                )


def _scope(rule: dict[str, Any]) -> str:
    """Which hosts a rule covers, in words."""
    if rule["groups"] is None and rule["hosts"] is None:
        return "every host"
    parts = []
    if rule["groups"]:
        parts.append("groups " + ",".join(rule["groups"]))
    if rule["hosts"]:
        parts.append("hosts " + ",".join(rule["hosts"]))
    return " and ".join(parts) or "no host"


def _environment_json(env: Environment) -> dict[str, Any]:
    def listed(values: tuple[str, ...] | None) -> list[str] | None:
        return None if values is None else list(values)

    return {
        "name": env.name,
        "min_attestation": env.min_attestation,
        "customer": env.customer,
        "source_file": env.source_file,
        "hosts": [
            {
                "name": h.name,
                "address": h.address,
                "port": h.port,
                "login": h.login,
                "become": h.become,
                "jump": [
                    {"name": j.name, "address": j.address, "port": j.port, "login": j.login}
                    for j in h.jump
                ],
                "mode": h.mode,
                "groups": list(h.groups),
                "accounts": list(h.accounts),
                "managed_accounts": list(h.managed_accounts),
                "authorized_keys": list(h.authorized_keys),
                "customer": h.customer,
                "auth_log": h.auth_log,
                "auth_log_trusted": h.auth_log_trusted,
                "sshd_config": h.sshd_config,
            }
            for h in env.hosts
        ],
        "access": [
            {
                "roles": list(r.roles),
                "accounts": list(r.accounts),
                "groups": listed(r.groups),
                "hosts": listed(r.hosts),
                "options": list(r.options),
                "source": r.source,
            }
            for r in env.access
        ],
        "break_glass": [
            {
                "fingerprint": g.key.fingerprint,
                "accounts": list(g.accounts),
                "groups": listed(g.groups),
                "hosts": listed(g.hosts),
                "options": list(g.options),
                "source": g.source,
            }
            for g in env.break_glass
        ],
    }


# -- the engine, as the commands drive it -----------------------------------


def result_json(result: HostResult) -> dict[str, Any]:
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


def printable(text: str) -> str:
    """Show text from hosts safely: control and format characters become escapes."""
    return "".join(
        ch if ch.isprintable() and ch not in "\u2028\u2029" else ascii(ch)[1:-1] for ch in text
    )


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


def print_plan(results: list[HostResult], applied: bool) -> None:
    """The plan for people: per host and file, each line change, then one summary line."""
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
                click.echo(f"    {sign} {owner:<14} {fp}  {c.reason}{opts}")
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
    if as_json:
        emit_json([result_json(r) for r in results])
    else:
        print_plan(results, applied=False)
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


# -- status -------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def status(app: AppContext, as_json: bool) -> None:
    """Per host: when it was last in sync, what failed, drift found; and the daemon, if any."""
    from sqlmodel import col, select

    from keyward.registry.models import DaemonStatus, HostState

    registry = app.registry()
    now = registry.clock()
    with registry.read() as session:
        beats = session.exec(
            select(DaemonStatus).order_by(col(DaemonStatus.heartbeat_at).desc())
        ).all()
        daemon_row = beats[0] if beats else None
        rows = [
            {
                "host": s.host,
                "environment": s.environment,
                "last_attempt": ts(s.last_attempt),
                "last_success": ts(s.last_success),
                "last_error": s.last_error,
                "last_run_id": s.last_run_id,
                "last_changes": s.last_changes,
                "drift_found": s.drift_found,
                "files": json.loads(s.files),
                "connected": None,
            }
            for s in session.exec(select(HostState).order_by(HostState.host))
        ]
    daemon: dict[str, Any] | None = None
    if daemon_row is not None:
        age = (now - daemon_row.heartbeat_at).total_seconds()
        alive = daemon_row.stopped_at is None and age < DAEMON_STALE_AFTER
        links = json.loads(daemon_row.hosts)
        # The daemon keeps its metrics endpoint's state next to the hosts, under a key no
        # host name can have (names start with a letter or digit).
        metrics = links.pop("@metrics", None)
        daemon = {
            "instance": daemon_row.id,
            "alive": alive,
            "heartbeat_at": ts(daemon_row.heartbeat_at),
            "heartbeat_age_seconds": round(age, 1),
            "started_at": ts(daemon_row.started_at),
            "stopped_at": ts(daemon_row.stopped_at),
            "hosts_total": daemon_row.hosts_total,
            "hosts_connected": daemon_row.hosts_connected,
            "last_push_at": ts(daemon_row.last_push_at),
            "propagation_lag_ms": daemon_row.last_lag_ms,
            "last_verification_at": ts(daemon_row.last_verify_at),
            "metrics": metrics,
        }
        if alive:
            for row in rows:
                link = links.get(row["host"])
                row["connected"] = bool(link and link.get("connected"))
    if as_json:
        emit_json({"daemon": daemon, "hosts": rows})
        return
    if daemon is None:
        click.echo("daemon: none has run against this registry")
    elif not daemon["alive"]:
        click.echo(f"daemon: NOT running (last heartbeat {daemon['heartbeat_at']})")
    else:
        click.echo(
            f"daemon: alive ({daemon['instance']}), {daemon['hosts_connected']}/"
            f"{daemon['hosts_total']} hosts connected, last push {daemon['last_push_at'] or '-'} "
            f"(lag {daemon['propagation_lag_ms']} ms), last verification "
            f"{daemon['last_verification_at'] or '-'}"
        )
        if metrics and metrics.get("error"):
            click.echo(
                f"daemon: metrics NOT served on {metrics.get('address')}: {metrics['error']} "
                "(enforcement goes on)"
            )
        elif metrics and metrics.get("listening"):
            click.echo(f"daemon: metrics served on {metrics.get('address')}")
        elif metrics:
            click.echo(f"daemon: metrics not served yet on {metrics.get('address')}")
    table(
        rows,
        [
            ("host", "HOST"),
            ("environment", "ENV"),
            ("connected", "CONNECTED"),
            ("last_success", "LAST IN SYNC"),
            ("last_changes", "CHANGES"),
            ("drift_found", "DRIFT"),
            ("last_error", "ERROR"),
        ],
    )


# -- hosts scan ---------------------------------------------------------------


@click.group()
def hosts() -> None:
    """Hosts and their pinned host keys."""


@hosts.command("scan")
@click.argument("names", nargs=-1)
@click.option("--env", default=None, help="Every host of this environment.")
@click.option("--all", "all_hosts", is_flag=True, help="Every host of the inventory.")
@click.option("--write", is_flag=True, help="Pin the keys of hosts seen for the first time.")
@click.option(
    "--replace",
    is_flag=True,
    help="With --write: replace the pins of hosts whose key CHANGED (needs --fingerprint).",
)
@click.option(
    "--fingerprint",
    "fingerprints",
    multiple=True,
    metavar="SHA256:...",
    help="With --write: pin only these presented keys, the ones you checked out of band.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def hosts_scan(
    app: AppContext,
    names: tuple[str, ...],
    env: str | None,
    all_hosts: bool,
    write: bool,
    replace: bool,
    fingerprints: tuple[str, ...],
    as_json: bool,
) -> None:
    """Fetch the host keys of NAMES (inventory host names), --env ENV or --all; print them.

    A key that differs from the host's pin is shown as CHANGED and never pinned next
    to the old one: an impostor must not become trusted by a routine --write.
    """
    import asyncio

    from keyward.agent import scan
    from keyward.inventory import load_inventory

    if (replace or fingerprints) and not write:
        raise UsageError("--replace and --fingerprint only make sense with --write")
    if replace and not fingerprints:
        raise UsageError("--replace needs --fingerprint naming the new key you checked")
    if (1 if names else 0) + (env is not None) + all_hosts != 1:
        raise UsageError(
            "name the hosts to scan: host NAMES, --env ENV or --all (exactly one of them)"
        )
    wanted = [scan.check_fingerprint(fp) for fp in fingerprints]
    inv = load_inventory(app.inventory_dir())
    targets = [inv.host(name) for name in names] if names else list(inv.select_hosts(env))
    path = inv.agent.known_hosts
    try:
        existing = path.read_text() if path.exists() else ""
    except OSError as exc:
        raise UsageError(f"cannot read known_hosts {path}: {exc.strerror}") from None
    with progress(len(targets), "hosts scan") as advance:
        found, failures = asyncio.run(
            scan.scan_hosts(targets, existing, inv.agent.connect_timeout, on_done=advance)
        )
    for item in found if not as_json else ():
        click.echo(item.describe())
        if item.status != "changed":  # a changed key is not offered as a line to paste
            click.echo(item.line)
    for host, error in failures:
        click.echo(f"# {host.name}: {error}", err=True)
    chosen: list[scan.Scanned] = []
    if write:
        chosen = scan.select_pins(found, replace=replace, fingerprints=wanted)
        if chosen:
            _write_pins(app, path, existing, chosen, err=as_json)
    if as_json:
        emit_json(
            {
                "hosts": [
                    {
                        "host": item.host.name,
                        "fingerprint": item.fingerprint,
                        "status": item.status,
                        "pinned": list(item.pinned),
                        # a changed key is not offered as a line to paste
                        "line": item.line if item.status != "changed" else None,
                        "written": item in chosen,
                    }
                    for item in found
                ],
                "failures": [{"host": host.name, "error": error} for host, error in failures],
            }
        )
    if failures:
        sys.exit(EXIT_FAILED)


def _write_pins(
    app: AppContext, path: Path, existing: str, chosen: list[scan.Scanned], err: bool = False
) -> None:
    """Write the chosen pins; a replaced pin is audited in the same registry transaction.

    ``err``: say what was written on stderr (stdout carries the JSON).

    The file is replaced atomically inside the transaction; if the audit record
    cannot be committed the old file is put back, so a replacement is never
    unaudited.
    """
    from keyward.agent import scan
    from keyward.registry.subjects import Subject

    log = get_logger()
    text = scan.updated_known_hosts(existing, chosen)
    replaced = [item for item in chosen if item.status == "changed"]
    if replaced:
        written = False
        try:
            with app.registry().write(app.actor) as tx:
                for item in replaced:
                    tx.audit(
                        "host.key-replace",
                        Subject.host(item.host.name),
                        {
                            "old_fingerprints": list(item.pinned),
                            "fingerprint": item.fingerprint,
                            "known_hosts": str(path),
                        },
                    )
                scan.write_known_hosts(path, text)
                written = True
        except BaseException:
            if written:  # the audit record did not commit: put the old pins back
                scan.write_known_hosts(path, existing)
            raise
    else:
        scan.write_known_hosts(path, text)
    for item in chosen:
        if item.status == "changed":
            log.warning(
                "host_key_replaced",
                host=item.host.name,
                old_fingerprints=list(item.pinned),
                fingerprint=item.fingerprint,
                known_hosts=str(path),
            )
            click.echo(
                f"replaced the pinned host key of {item.host.name} "
                f"({', '.join(item.pinned)} -> {item.fingerprint})",
                err=err,
            )
        else:
            log.info(
                "host_key_pinned",
                host=item.host.name,
                fingerprint=item.fingerprint,
                known_hosts=str(path),
            )
    added = len(chosen) - len(replaced)
    if added:
        click.echo(f"added {added} host keys to {path}", err=err)


def register(cli: click.Group) -> None:
    inventory_import.attach(inventory)
    for command in (inventory, plan, reconcile, status, hosts):
        cli.add_command(command)
