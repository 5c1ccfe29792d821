"""``keyward explain``: who can log in where, and if not, exactly why."""

from __future__ import annotations

import click

from keyward.cli.context import AppContext
from keyward.cli.output import emit_json

pass_app = click.make_pass_decorator(AppContext)


@click.command("explain")
@click.argument("username")
@click.argument("host", required=False)
@click.argument("account", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def explain_cmd(
    app: AppContext, username: str, host: str | None, account: str | None, as_json: bool
) -> None:
    """Can USERNAME log in (on HOST, as ACCOUNT), and if not, exactly why.

    Decided by the same computation reconcile deploys. Without HOST: every host and
    account an access rule covers. Exit 0 for any answer; 2 for an unknown name.
    """
    from urllib.parse import quote, urlencode

    api = app.api()
    if api is not None:
        query = {k: v for k, v in (("host", host), ("account", account)) if v is not None}
        path = f"/api/v1/explain/{quote(username, safe='')}"
        answer = api.call("GET", path + (f"?{urlencode(query)}" if query else ""))
        document, lines = answer["document"], answer["lines"]
    else:
        from keyward.inventory import load_inventory
        from keyward.registry.explain_view import explain_report

        inv = load_inventory(app.inventory_dir())
        registry = app.registry()
        now = registry.clock()
        with registry.read() as session:
            document, lines = explain_report(session, inv, username, now, host, account)
    if as_json:
        emit_json(document)
        return
    for line in lines:
        click.echo(line)


def register(cli: click.Group) -> None:
    cli.add_command(explain_cmd)
