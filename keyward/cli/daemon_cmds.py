"""``keyward daemon``: enforce the registry continuously (see keyward.daemon.service)."""

from __future__ import annotations

import click

from keyward.cli.context import AppContext

pass_app = click.make_pass_decorator(AppContext)


@click.command()
@click.option(
    "--verify-interval",
    type=click.FloatRange(1, 86400),
    default=300.0,
    show_default=True,
    help="Seconds between full verification passes (jittered).",
)
@click.option(
    "--poll",
    "poll_interval",
    type=click.FloatRange(0.05, 1.0),
    default=0.25,
    show_default=True,
    help="Seconds between registry change checks (at most 1).",
)
@click.option(
    "--metrics",
    default=None,
    metavar="ADDR:PORT",
    help=(
        "Serve Prometheus metrics on this loopback address, e.g. 127.0.0.1:9464 (or on the "
        "socket systemd passes). A port that cannot be bound is reported, never fatal."
    ),
)
@click.option(
    "--max-connecting",
    type=click.IntRange(1, 1000),
    default=50,
    show_default=True,
    help="Connection attempts at once.",
)
@click.option(
    "--keepalive",
    type=click.FloatRange(0.5, 3600),
    default=15.0,
    show_default=True,
    help="Seconds between SSH keepalives; three unanswered ones drop a stalled connection.",
)
@pass_app
@click.pass_context
def daemon(
    ctx: click.Context,
    app: AppContext,
    verify_interval: float,
    poll_interval: float,
    metrics: str | None,
    max_connecting: int,
    keepalive: float,
) -> None:
    """Keep one connection per host and push every registry change within a second.

    SIGTERM finishes in-flight writes and exits; SIGHUP reloads the inventory.
    """
    from keyward import event_loop
    from keyward.daemon.service import Daemon, DaemonSettings

    settings = DaemonSettings(
        verify_interval=verify_interval,
        poll_interval=poll_interval,
        metrics=metrics,
        max_connecting=max_connecting,
        keepalive=keepalive,
    )
    service = Daemon(
        app.registry(service=True), app.inventory_dir(), app.actor, app.clock, settings
    )
    ctx.exit(event_loop.run(service.run()))


def register(cli: click.Group) -> None:
    cli.add_command(daemon)
