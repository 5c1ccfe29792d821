"""``keyward status``: per host, the last round's outcome; and the daemon's heartbeat."""

from __future__ import annotations

from typing import Any

import click

from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, table

pass_app = click.make_pass_decorator(AppContext)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def status(app: AppContext, as_json: bool) -> None:
    """Per host: when it was last in sync, what failed, drift found; and the daemon, if any."""
    api = app.api()
    if api is not None:
        view = api.call("GET", "/api/v1/status")
    else:
        from keyward.registry import views

        registry = app.registry()
        now = registry.clock()
        with registry.read() as session:
            view = views.status_view(session, now)
    daemon: dict[str, Any] | None = view["daemon"]
    rows = view["hosts"]
    metrics = daemon["metrics"] if daemon else None
    cluster: dict[str, Any] | None = view.get("cluster")
    if as_json:
        out: dict[str, Any] = {"daemon": daemon, "hosts": rows}
        if cluster is not None:
            out["cluster"] = {"members": cluster["members"], "live": cluster["live"]}
        emit_json(out)
        return
    if cluster is not None and cluster["members"]:
        click.echo(f"cluster: {cluster['live']} live daemon(s) share the fleet (PostgreSQL)")
        for m in cluster["members"]:
            state = "live" if m["live"] else "stopped" if m["stopped_at"] else "GONE"
            click.echo(
                f"  {m['id']}: {state}, holds {m['hosts']} host(s) in {m['shards']} shard(s), "
                f"heartbeat {m['heartbeat_age_seconds']} s ago"
            )
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
            *([("holder", "HOLDER")] if cluster is not None and cluster["members"] else []),
            ("last_success", "LAST IN SYNC"),
            ("last_changes", "CHANGES"),
            ("drift_found", "DRIFT"),
            ("last_error", "ERROR"),
        ],
    )


def register(cli: click.Group) -> None:
    cli.add_command(status)
