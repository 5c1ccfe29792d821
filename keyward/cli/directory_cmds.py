"""``keyward directory``: people from the company directory (LDAP, Active Directory)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from keyward.cli.context import AppContext
from keyward.cli.output import chatter, emit_json

if TYPE_CHECKING:
    from keyward.cli.directory_sync import SyncResult

pass_app = click.make_pass_decorator(AppContext)


@click.group()
def directory() -> None:
    """Sync people from the company directory (LDAP): joiners, changes and leavers.

    \b
    keyward directory sync [--dry-run]   create, update and offboard from [directory]
    keyward directory status             the last sync and what the next would change
    """


def _print_plan(result: SyncResult) -> None:
    plan = result.plan
    read = result.read
    if read.error is None:
        state = "complete" if read.complete else "CUT SHORT"
        click.echo(
            f"directory {result.settings.url}: {len(read.entries)} entries under "
            f"{read.base_dn} ({state})"
        )
    for create in plan.creates:
        click.echo(f"  create    {create.entry.username} ({create.entry.dn})")
    for link in plan.links:
        click.echo(f"  link      {link.username} ({link.dn})")
    for update in plan.updates:
        what = ", ".join(
            f"{field} {change['from']!r} -> {change['to']!r}"
            for field, change in update.changes.items()
        )
        click.echo(f"  update    {update.username}: {what}")
    for leaver in plan.offboards:
        click.echo(f"  offboard  {leaver.username}: {leaver.reason}")
    for role in plan.roles:
        verb = "grant " if role.grant else "revoke"
        click.echo(f"  {verb}    {role.role} {'to' if role.grant else 'from'} {role.username}")
    for note in (*plan.notes, *result.skipped):
        click.echo(f"  note      {note}")
    if plan.empty and read.error is None:
        click.echo("  nothing to change")
    for trip in result.trips:
        blocking = trip in result.blocking
        refused = "WOULD BE REFUSED" if result.dry_run else "REFUSED"
        label = refused if blocking else "allowed"
        click.echo(f"{label}: {trip.message}", err=blocking and not result.dry_run)


@directory.command("sync")
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option(
    "--allow-mass-offboard",
    is_flag=True,
    help="Go ahead although the guard found a suspicious read (too many leavers, an empty or "
    "partial result, a changed base DN). For an administrator who checked the directory.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@click.pass_context
def directory_sync(
    ctx: click.Context, app: AppContext, dry_run: bool, allow_mass_offboard: bool, as_json: bool
) -> None:
    """Create, update and offboard people from the directory (exit 1 when refused or failed).

    Leavers are offboarded like 'keyward offboard': revoked, every host
    reconciled and the removal confirmed. A sync that would offboard more than
    mass_offboard_share of the people, or that read an empty, partial or failed
    result or a changed base DN, changes nothing, raises an alert and exits 1.
    """
    from keyward.cli.directory_sync import result_json, sync
    from keyward.inventory import load_inventory

    inv = load_inventory(app.inventory_dir())
    result = sync(app, inv, dry_run=dry_run, allow_mass_offboard=allow_mass_offboard)
    if as_json:
        emit_json(result_json(result))
    else:
        _print_plan(result)
        if result.read.error is not None:
            click.echo(f"directory sync failed: {result.read.error}", err=True)
        elif result.blocking and not result.dry_run:
            click.echo(
                f"directory sync refused: nothing changed; alert {result.alert_id} raised. "
                "After checking the directory: keyward directory sync --allow-mass-offboard",
                err=True,
            )
        elif result.unconfirmed:
            click.echo(
                f"UNCONFIRMED on {len(result.unconfirmed)} host(s): "
                f"{', '.join(result.unconfirmed)}; every later 'keyward reconcile' retries them",
                err=True,
            )
        elif result.applied:
            chatter(f"directory sync applied; offboarding cases: {result.cases or 'none'}")
    ctx.exit(result.exit_code)


@directory.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def directory_status(app: AppContext, as_json: bool) -> None:
    """The last sync (time, outcome, counts) and the changes the next one would make."""
    from keyward.cli.directory_sync import directory_settings, plan, result_json
    from keyward.inventory import load_inventory
    from keyward.registry.directory import last_sync

    settings = directory_settings(load_inventory(app.inventory_dir()))
    with app.registry().read() as session:
        last = last_sync(session)
    pending = plan(app, settings, allow=False)
    if as_json:
        emit_json({"last_sync": last, "pending": result_json(pending)})
        return
    if last is None:
        click.echo("last sync: never")
    else:
        counts = ", ".join(f"{k} {v}" for k, v in last.get("counts", {}).items() if v)
        applied = last["outcome"] in ("applied", "unchanged")
        changes = counts or "no changes"
        click.echo(
            f"last sync: {last['at']} by {last['actor']}: {last['outcome']}, "
            f"{last.get('read', 0)} entries read; "
            + (changes if applied else f"nothing changed (planned: {changes})")
        )
        for trip in last.get("guard", []):
            click.echo(f"  guard: {trip['message']}")
    click.echo("pending:")
    _print_plan(pending)


def register(cli: click.Group) -> None:
    cli.add_command(directory)
