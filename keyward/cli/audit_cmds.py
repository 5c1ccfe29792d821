"""``keyward audit``: the tamper-evident audit trail (log, verify, checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from keyward.cli.checkpoints import check_and_checkpoint, checkpoint_options, report
from keyward.cli.common import customer_hosts, log_events
from keyward.cli.context import AppContext
from keyward.cli.output import emit_json
from keyward.errors import AuditChainBroken, UsageError
from keyward.logs import get_logger, human_value
from keyward.timeparse import start_of_day

pass_app = click.make_pass_decorator(AppContext)


@click.group()
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command("log")
@click.option("--since", default=None, metavar="DATE", help="Only events from this date (UTC).")
@click.option("--person", "username", default=None, help="Only events about this person.")
@click.option("--action", default=None, help="Only this action (e.g. key.revoke).")
@click.option(
    "--customer", default=None, help="Only events about this customer's hosts and grants."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def audit_log(
    app: AppContext,
    since: str | None,
    username: str | None,
    action: str | None,
    customer: str | None,
    as_json: bool,
) -> None:
    """Show audit events, oldest first."""
    api = app.api()
    if api is not None:
        from urllib.parse import urlencode

        query = {"since": since, "person": username, "action": action, "customer": customer}
        wanted = urlencode({k: v for k, v in query.items() if v is not None})
        rows = api.call("GET", "/api/v1/audit/events" + (f"?{wanted}" if wanted else ""))
    else:
        rows = _local_rows(app, since, username, action, customer)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        details = " ".join(
            f"{k}={human_value(v)}" for k, v in sorted(r["details"].items()) if v is not None
        )
        about = f"{r['subject_kind']}:{r['subject']}" if r["subject_kind"] else r["subject"]
        click.echo(
            f"{r['seq']:>6}  {r['at']}  {r['actor']:<12} {r['action']:<22} {about:<16} {details}"
        )
    if not rows:
        click.echo("(no events)")


def _local_rows(
    app: AppContext,
    since: str | None,
    username: str | None,
    action: str | None,
    customer: str | None,
) -> list[dict[str, Any]]:
    from keyward.registry import views

    with app.registry().read() as session:
        rows = views.audit_rows(
            session, start_of_day(since, "--since") if since else None, username, action
        )
    if customer is not None:
        hosts = customer_hosts(app, customer)
        rows = [
            r
            for r in rows
            if (r["subject_kind"] == "host" and r["subject"] in hosts)
            or r["details"].get("customer") == customer
        ]
    return rows


@audit.command("verify")
@checkpoint_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def audit_verify(
    app: AppContext, checkpoint_dir: str | None, trusted_keys: tuple[str, ...], as_json: bool
) -> None:
    """Check the whole audit chain and its signed checkpoints; exit 1 naming the first bad event.

    Then sign a checkpoint of the head (outside the registry) if it moved.  Through a
    keyward server (KEYWARD_URL) the server checks the chain; signed checkpoints are
    checked where 'keyward audit checkpoint' runs.
    """
    api = app.api()
    if api is not None:
        ctx = click.get_current_context()
        given = (ctx.get_parameter_source(n) for n in ("checkpoint_dir", "trusted_keys"))
        if click.core.ParameterSource.COMMANDLINE in given:
            raise UsageError(
                "checkpoints are checked on the registry machine: no --checkpoint-dir or "
                "--trusted-key through the server"
            )
        checked = api.call("GET", "/api/v1/audit/verify")
        if as_json:
            emit_json(checked)
        if not checked["ok"]:
            raise AuditChainBroken(f"audit chain broken at {checked['problem']}")
        if not as_json:
            click.echo(
                f"audit chain ok: {checked['events']} events, head {checked['head'][:16]}; "
                f"checked by the server at {api.url}"
            )
        return
    report(check_and_checkpoint(app, checkpoint_dir, trusted_keys, must_write=False), as_json)


@audit.command("checkpoint")
@checkpoint_options
@click.option(
    "--reset",
    is_flag=True,
    help="Set this registry's earlier checkpoints aside and start again from the current "
    "head (after restoring by hand or re-creating the registry); recorded as an audit event.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def audit_checkpoint(
    app: AppContext,
    checkpoint_dir: str | None,
    trusted_keys: tuple[str, ...],
    reset: bool,
    as_json: bool,
) -> None:
    """Verify the chain, then sign a checkpoint of its head outside the registry.

    Run it from a timer (e.g. hourly): events after the newest checkpoint are the ones
    a database writer could still delete or rewrite unnoticed.
    """
    if reset:
        _reset(app, checkpoint_dir, trusted_keys)
    report(check_and_checkpoint(app, checkpoint_dir, trusted_keys, must_write=True), as_json)


def _reset(app: AppContext, checkpoint_dir: str | None, trusted_keys: tuple[str, ...]) -> None:
    """Retire the checkpoints of this registry, if its chain holds together on its own."""
    from keyward.registry import checkpoint as cp
    from keyward.registry.subjects import Subject
    from keyward.registry.verify import verify_session

    keyring = cp.open_keyring(cp.resolve_dir(checkpoint_dir), trusted_keys)
    if keyring.signing_key not in keyring.trusted:
        raise UsageError("--reset needs the checkpoint directory's own key to be trusted")
    registry = app.registry()
    store = cp.Store(keyring, cp.registry_identity(registry.url))
    with registry.read() as session:
        verified = verify_session(session)
    assert verified is not None
    if verified[2] is not None:
        raise AuditChainBroken(f"not resetting: audit chain broken at {verified[2]}")
    try:
        old = store.load()
        disagreement: str | None = None
        with registry.read() as session:
            against = verify_session(session, old)
        if against is not None and against[2] is not None:
            disagreement = str(against[2])
    except (AuditChainBroken, UsageError) as exc:
        old, disagreement = [], exc.message
    retired = store.retire(registry.clock())
    with registry.write(app.actor) as tx:
        tx.audit(
            "audit.checkpoint-reset",
            Subject("registry", registry.backend),
            {
                "retired": str(retired) if retired else None,
                "newest_retired_seq": old[-1].seq if old else None,
                "disagreement": disagreement,
            },
        )
    log_events(tx)
    get_logger().warning(
        "audit_checkpoints_reset",
        retired=str(retired) if retired else None,
        disagreement=disagreement,
    )
    if retired is not None:
        click.echo(f"earlier checkpoints set aside in {Path(retired)}", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(audit)
