"""``keyward inventory``: check and show the inventory (``inventory import`` is
attached from ``inventory_import``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from keyward.cli import inventory_import
from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, printable
from keyward.errors import InventoryError

if TYPE_CHECKING:
    from keyward.inventory.model import Environment, Inventory

pass_app = click.make_pass_decorator(AppContext)


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
            if h["become"]:
                extra += f"  become {h['become']}"
            if h["jump"]:
                extra += f"  via {' -> '.join(hop['name'] for hop in h['jump'])}"
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


def register(cli: click.Group) -> None:
    inventory_import.attach(inventory)
    cli.add_command(inventory)
