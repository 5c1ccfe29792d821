"""Entry point: global options, command groups, and the one place errors become exit codes.

Exit codes: 0 success; 1 an operational failure (a host failed, the audit
chain is broken); 2 bad input or a refused operation, with nothing changed;
``plan`` adds 3 for "changes pending".  Unexpected errors print one line and
exit 70; set ``KEYWARD_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from keyward import __version__
from keyward.cli.context import AppContext, default_actor
from keyward.errors import KeywardError
from keyward.logs import configure

INTERNAL_ERROR = 70


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="keyward")
@click.option(
    "--db",
    envvar="KEYWARD_DB",
    metavar="URL",
    help="Registry: a SQLite path or URL, or postgresql+psycopg://... [env KEYWARD_DB]",
)
@click.option(
    "--actor",
    metavar="NAME",
    help="Who is acting, recorded on every audit event [env KEYWARD_ACTOR; default SUDO_USER, "
    "then the login name]",
)
@click.option(
    "--inventory",
    envvar="KEYWARD_INVENTORY",
    metavar="DIR",
    help="Inventory directory [env KEYWARD_INVENTORY; default ./inventory, then "
    "/etc/keyward/inventory]",
)
@click.pass_context
def cli(ctx: click.Context, db: str | None, actor: str | None, inventory: str | None) -> None:
    """keyward: who can log in where, why and since when, kept true on every host."""
    configure()
    app = AppContext(db=db, actor=actor or default_actor(dict(os.environ)), inventory=inventory)
    ctx.obj = app
    ctx.call_on_close(app.close)


def _register_commands() -> None:
    from keyward.cli import registry_cmds

    registry_cmds.register(cli)
    try:
        from keyward.cli import agent_cmds
    except ImportError:  # pragma: no cover - during bootstrap of the package
        return
    agent_cmds.register(cli)
    from keyward.cli import lifecycle_cmds

    lifecycle_cmds.register(cli)
    from keyward.cli import backup_cmds

    backup_cmds.register(cli)
    from keyward.cli import daemon_cmds

    daemon_cmds.register(cli)
    from keyward.cli import login_cmds

    login_cmds.register(cli)
    from keyward.cli import import_cmds

    import_cmds.register(cli)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI, turning every KeywardError into one line on stderr and its exit code."""
    try:
        rc = cli.main(args=argv, prog_name="keyward", standalone_mode=False)
    except KeywardError as exc:
        click.echo(f"keyward: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("keyward: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("keyward: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("KEYWARD_DEBUG"):
            traceback.print_exc()
        first = " ".join(str(exc).split())[:300]
        click.echo(
            f"keyward: internal error: {type(exc).__name__}: {first} (KEYWARD_DEBUG=1 for details)",
            err=True,
        )
        sys.exit(INTERNAL_ERROR)
    sys.exit(rc if isinstance(rc, int) else 0)
