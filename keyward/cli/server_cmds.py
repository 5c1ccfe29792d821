"""``keyward server``: the registry over HTTP for a team, with proven identities."""

from __future__ import annotations

import os
import socket

import click

from keyward.cli.context import AppContext

pass_app = click.make_pass_decorator(AppContext)


@click.command("server")
@click.option(
    "--listen",
    default="127.0.0.1:8443",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to listen on; beyond loopback only with TLS.",
)
@click.option("--tls-cert", metavar="FILE", help="TLS certificate chain (PEM).")
@click.option("--tls-key", metavar="FILE", help="TLS private key (PEM).")
@click.option(
    "--state-dir",
    metavar="DIR",
    help="Where the session secret is kept (server.secret, 0600) [env KEYWARD_STATE_DIR; "
    "default /var/lib/keyward for root].",
)
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at /metrics on this loopback address (e.g. "
    "127.0.0.1:9465); off by default.",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="ADDRESS",
    help="A reverse proxy's address whose X-Forwarded-For names the client, for the limit "
    "on browser sign-in codes per client (repeatable).",
)
@pass_app
def server(
    app: AppContext,
    listen: str,
    tls_cert: str | None,
    tls_key: str | None,
    state_dir: str | None,
    metrics_listen: str | None,
    trusted_proxies: tuple[str, ...],
) -> None:
    """Serve the registry over HTTP to people who sign in with their own registered key."""
    from pathlib import Path

    from keyward.auth.nonces import NonceStore
    from keyward.auth.tokens import load_or_create_secret
    from keyward.inventory import load_inventory
    from keyward.inventory.server import ServerSettings
    from keyward.inventory.settings import load_server_settings
    from keyward.logs import get_logger
    from keyward.notify.server_side import notifier_for
    from keyward.registry.location import default_state_dir
    from keyward.server.app import ServerState, build_app
    from keyward.server.clients import trusted
    from keyward.server.identity import Verifier
    from keyward.server.metrics import ServerMetrics
    from keyward.server.run import check_tls, parse_listen, serve

    address = parse_listen(listen)
    tls = check_tls(address, tls_cert, tls_key)
    metrics_sock = _metrics_socket(metrics_listen) if metrics_listen else None
    root = app.inventory_dir()
    inventory = load_inventory(root) if root.is_dir() else None
    settings = load_server_settings(root) if root.is_dir() else ServerSettings()
    state = Path(state_dir) if state_dir else default_state_dir(dict(os.environ), os.geteuid())
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = load_or_create_secret(state / "server.secret")
    registry = app.registry(service=True)
    registry.head()  # an unreachable or uninitialised registry fails now, not per request
    inventory_dir = root if root.is_dir() else None
    notifier = notifier_for(inventory_dir, registry, settings.approvers, app.clock)
    app_state = ServerState(
        registry=registry,
        settings=settings,
        verifier=Verifier(settings.min_attestation, secret, NonceStore()),
        clock=app.clock,
        inventory=inventory,
        inventory_dir=root if root.is_dir() else None,
        notifier=notifier,
        metrics=ServerMetrics(app.clock),
        proxies=trusted(trusted_proxies),
    )
    get_logger(component="server").info(
        "server_start",
        listen=f"{address.host}:{address.port}",
        tls=tls is not None,
        registry=registry.backend,
        admin_role=settings.admin_role,
        auditor_role=settings.auditor_role,
        min_attestation=settings.min_attestation,
        metrics=metrics_listen,
    )
    metrics = (app_state.metrics, metrics_sock) if metrics_sock is not None else None
    serve(build_app(app_state), address, tls, metrics)
    if notifier is not None:
        notifier.close()  # deliver what is queued
    get_logger(component="server").info("server_stop")


def _metrics_socket(address: str) -> socket.socket:
    """Bind the metrics listener now: a bad or taken address fails the start, not later."""
    from keyward.daemon.metrics import bind_loopback
    from keyward.errors import UsageError

    try:
        return bind_loopback(address)
    except UsageError as exc:
        raise UsageError(exc.message.replace("--metrics", "--metrics-listen")) from None
    except OSError as exc:
        raise UsageError(f"cannot listen on {address} for metrics: {exc.strerror}") from None


def register(cli: click.Group) -> None:
    cli.add_command(server)
