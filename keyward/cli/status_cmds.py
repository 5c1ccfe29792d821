"""``keyward status``: per host, the last round's outcome; and the daemon's heartbeat."""

from __future__ import annotations

import json
from typing import Any

import click

from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, table, ts

pass_app = click.make_pass_decorator(AppContext)

DAEMON_STALE_AFTER = 20.0  # seconds without a heartbeat before a daemon counts as gone


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def status(app: AppContext, as_json: bool) -> None:
    """Per host: when it was last in sync, what failed, drift found; and the daemon, if any."""
    from sqlmodel import col, select

    from keyward.registry.models import DaemonStatus, HostState

    registry = app.registry()
    now = registry.clock()
    cluster: dict[str, Any] | None = None
    with registry.read() as session:
        if registry.backend == "postgresql":
            cluster = read_cluster(session)
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
    if cluster is not None:
        for row in rows:
            row["holder"] = cluster["holders"].get(row["host"])
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
            # Several daemons share a fleet: a host is connected if its holder says so.
            for beat in beats:
                age = (now - beat.heartbeat_at).total_seconds()
                if beat.stopped_at is None and age < DAEMON_STALE_AFTER:
                    for name, link in json.loads(beat.hosts).items():
                        if isinstance(link, dict) and link.get("connected"):
                            links.setdefault(name, link)
            for row in rows:
                link = links.get(row["host"])
                row["connected"] = bool(link and link.get("connected"))
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


def read_cluster(session: Any) -> dict[str, Any]:
    """The daemons sharing the fleet and which holds which host, by the database's clock.

    A host's holder is the daemon holding its shard's lease, while the lease runs.
    """
    from sqlalchemy import text

    from keyward.daemon.membership import members
    from keyward.daemon.sharding import shard_of

    conn = session.connection()
    leases = {
        int(shard): str(holder)
        for shard, holder, left in conn.execute(
            text(
                "SELECT shard, holder, EXTRACT(EPOCH FROM expires_at - clock_timestamp()) "
                "FROM shard_lease"
            )
        )
        if float(left) > 0
    }
    from keyward.registry.models import HostState

    names = [str(n) for (n,) in conn.execute(text(f"SELECT host FROM {HostState.__tablename__}"))]
    holders = {name: leases[shard_of(name)] for name in names if shard_of(name) in leases}
    rows = members(conn)
    listed = [
        {
            "id": m.id,
            "hostname": m.hostname,
            "pid": m.pid,
            "live": m.live,
            "started_at": ts(m.started_at),
            "heartbeat_at": ts(m.heartbeat_at),
            "heartbeat_age_seconds": round(m.age, 1),
            "stopped_at": ts(m.stopped_at),
            "shards": sum(1 for h in leases.values() if h == m.id),
            "hosts": sum(1 for h in holders.values() if h == m.id),
        }
        for m in rows
        if m.live or m.age < 3600  # gone daemons stay listed for an hour
    ]
    return {"members": listed, "live": sum(1 for m in rows if m.live), "holders": holders}


def register(cli: click.Group) -> None:
    cli.add_command(status)
