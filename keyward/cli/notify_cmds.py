"""``keyward notify``: renewal reminders and expired access, and a test of the channels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from keyward.cli.context import AppContext
from keyward.cli.output import chatter, emit_json, printable

if TYPE_CHECKING:
    from keyward.notify.message import Notification

pass_app = click.make_pass_decorator(AppContext)


@click.group()
def notify() -> None:
    """Notifications ([notify] in keyward.toml): renewal reminders, expired access, a test."""


def _row(note: Notification) -> dict[str, Any]:
    return note.payload()


def _print(notes: list[Notification], as_json: bool, **summary: Any) -> None:
    if as_json:
        emit_json({"notifications": [_row(n) for n in notes], **summary})
        return
    for note in notes:
        names = ",".join(r.username for r in note.recipients) or "-"
        click.echo(f"{note.event}  {names}  {printable(note.text)}")


@notify.command("reminders")
@click.option("--dry-run", is_flag=True, help="Show what is due; record and send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def reminders(app: AppContext, dry_run: bool, as_json: bool) -> None:
    """Record expired access and send due renewal reminders, each once (the daemon does too).

    Exit 1 when a notification could not be delivered (it is recorded as sent anyway and
    not repeated; see the log's notification_failed).
    """
    from keyward.inventory.settings import load_notify_settings
    from keyward.notify.deliver import Deliverer
    from keyward.notify.sweep import sweep

    settings = load_notify_settings(app.inventory_dir())
    deliverer = Deliverer.from_settings(settings) if settings.channels else None
    registry = app.registry()
    report = sweep(registry, settings, deliverer, app.actor, registry.clock(), dry_run=dry_run)
    _print(
        report.notifications,
        as_json,
        dry_run=dry_run,
        delivered=report.delivered,
        failed=report.failed,
    )
    if not as_json:
        if not settings.channels:
            chatter("no [notify] command or webhook: reminders are not sent", err=True)
        verb = "due" if dry_run else "recorded"
        chatter(
            f"{len(report.expired)} expired access, {len(report.reminders)} reminders {verb}"
            + ("" if dry_run else f"; {report.delivered} delivered, {report.failed} failed"),
            err=True,
        )
    if report.failed:
        click.get_current_context().exit(1)


@notify.command("test")
@click.option("--to", "username", default=None, metavar="USERNAME", help="Name a recipient.")
@pass_app
def test(app: AppContext, username: str | None) -> None:
    """Send one test notification through every configured channel; exit 1 if one failed."""
    from keyward.errors import UsageError
    from keyward.inventory.settings import load_notify_settings
    from keyward.notify.deliver import Deliverer
    from keyward.notify.message import Notification, Recipient

    settings = load_notify_settings(app.inventory_dir())
    if not settings.channels:
        raise UsageError("no [notify] command or webhook in keyward.toml")
    recipients = (Recipient(username),) if username else ()
    note = Notification(
        "test", app.clock(), recipients, "test notification from keyward notify test", {}
    )
    if not Deliverer.from_settings(settings).deliver(note):
        chatter("a channel failed (see notification_failed in the log)", err=True)
        click.get_current_context().exit(1)
    chatter("delivered", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(notify)
