"""``keyward init``: create the registry, or upgrade it to this keyward's schema."""

from __future__ import annotations

import click

from keyward.cli.common import log_events
from keyward.cli.context import AppContext

pass_app = click.make_pass_decorator(AppContext)


@click.command()
@pass_app
def init(app: AppContext) -> None:
    """Create the registry (or upgrade an older one to this keyward's schema)."""
    import os

    from keyward.registry.db import describe
    from keyward.registry.location import resolve_url
    from keyward.registry.store import Registry
    from keyward.registry.subjects import Subject

    app.require_database()
    url = resolve_url(app.db, dict(os.environ), os.geteuid())
    registry, before, after = Registry.initialise(url, app.clock)
    registry.recorded_as = app.local_attribution()
    try:
        if before is None:
            with registry.write(app.actor) as tx:
                tx.audit(
                    "registry.init",
                    Subject("registry", registry.backend),
                    {"schema": after, "backend": registry.backend},
                )
            log_events(tx)
            click.echo(f"initialised registry {describe(url)} (schema {after})")
        elif before != after:
            with registry.write(app.actor) as tx:
                tx.audit(
                    "registry.upgrade",
                    Subject("registry", registry.backend),
                    {"from": before, "to": after},
                )
            log_events(tx)
            click.echo(f"upgraded registry {describe(url)} from schema {before} to {after}")
        else:
            click.echo(f"registry {describe(url)} is up to date (schema {after})")
    finally:
        registry.dispose()


def register(cli: click.Group) -> None:
    cli.add_command(init)
