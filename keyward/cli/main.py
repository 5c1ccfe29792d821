"""Entry point: global options, command groups, and the one place errors become exit codes.

Exit codes: 0 success; 1 an operational failure (a host failed, the audit
chain is broken); 2 bad input or a refused operation, with nothing changed;
``plan`` adds 3 for "changes pending".  Unexpected errors print one line and
exit 70; set ``KEYWARD_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import NamedTuple

import click
from click.utils import PacifyFlushWrapper

from keyward import __version__
from keyward.cli.context import AppContext, default_actor
from keyward.cli.output import CONSOLE
from keyward.errors import KeywardError, UsageError
from keyward.logs import LogFormat, configure, console_level

INTERNAL_ERROR = 70


class Entry(NamedTuple):
    """Where a top-level command lives, and its short help for ``keyward --help``."""

    module: str
    """The module of ``keyward.cli`` whose ``register(cli)`` defines it with all its
    subcommands; it is imported before the command runs."""
    help: str
    """The first sentence of its docstring, as ``--help`` lists it."""


# Every top-level command: adding a command module is one entry here (tests/test_startup.py
# fails while a module with commands is missing, or a help text here differs from the real one).
# Commands are imported only when used: SQLAlchemy, asyncssh and cryptography cost most of a
# second, and `keyward --version` or `keyward key check` need none of them.
COMMANDS: dict[str, Entry] = {
    "adopt": Entry(
        "adopt_cmds",
        "Take over a fleet's existing keys: scan, report, claim or ignore, then switch over.",
    ),
    "access": Entry(
        "access_cmds",
        "Short-lived access for break-fix work: request, approve (by someone else), list.",
    ),
    "alerts": Entry(
        "login_cmds",
        "Alerts: multi-computer use, keys used from a new address, failed-login bursts.",
    ),
    "audit": Entry("audit_cmds", "The tamper-evident audit trail."),
    "auth": Entry(
        "auth_cmds",
        "Sign in to a keyward server with your registered key (KEYWARD_URL, KEYWARD_KEY).",
    ),
    "backup": Entry("backup_cmds", "Snapshots of the registry: take, list, prune, restore."),
    "daemon": Entry(
        "daemon_cmds",
        "Keep one connection per host and push every registry change within a second.",
    ),
    "demo": Entry(
        "demo",
        "Run the whole flow against local SSH hosts on loopback; leaves nothing behind.",
    ),
    "directory": Entry(
        "directory_cmds",
        "Sync people from the company directory (LDAP): joiners, changes and leavers.",
    ),
    "explain": Entry(
        "explain_cmds",
        "Can USERNAME log in (on HOST, as ACCOUNT), and if not, exactly why.",
    ),
    "hosts": Entry("hosts_cmds", "Hosts and their pinned host keys."),
    "import": Entry(
        "import_cmds",
        "Onboard the people of a CSV file in one transaction: all rows, or none.",
    ),
    "init": Entry(
        "init_cmds",
        "Create the registry (or upgrade an older one to this keyward's schema).",
    ),
    "inventory": Entry(
        "inventory_cmds",
        "The inventory: environments, hosts, accounts, access rules.",
    ),
    "key": Entry("key_cmds", "Personal public keys."),
    "logins": Entry(
        "login_cmds",
        "The fleet's access log, attributed to people by the key they used (newest first).",
    ),
    "notify": Entry(
        "notify_cmds",
        "Notifications ([notify] in keyward.toml): renewal reminders, expired access, a test.",
    ),
    "offboard": Entry(
        "offboard_cmds",
        "Take a person's access away from every host, with per-host evidence.",
    ),
    "person": Entry("person_cmds", "Staff members: the owners of keys."),
    "plan": Entry("round_cmds", "Show what reconcile would change on each host; change nothing."),
    "reconcile": Entry(
        "round_cmds",
        "Make every managed authorized_keys file match the registry and inventory.",
    ),
    "report": Entry("report_cmds", "Evidence and reviews for auditors."),
    "role": Entry("role_cmds", "Roles and who holds them."),
    "server": Entry(
        "server_cmds",
        "Serve the registry over HTTP to people who sign in with their own registered key.",
    ),
    "status": Entry(
        "status_cmds",
        "Per host: when it was last in sync, what failed, drift found; and the daemon, if any.",
    ),
}


class LazyGroup(click.Group):
    """A group that imports a command's modules only when that command is used.

    ``--help`` lists the commands from ``COMMANDS`` without importing anything.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._loaded: set[str] = set()

    def load(self, name: str) -> None:
        """Import the module of ``name`` (once) and let it register its commands."""
        module = COMMANDS[name].module
        if module not in self._loaded:
            self._loaded.add(module)
            importlib.import_module(f"keyward.cli.{module}").register(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            self.load(cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Stand-ins carrying only the help text: click shortens them exactly as it would the
        # real commands' docstrings.
        shown = [
            (name, click.Command(name, help=COMMANDS[name].help))
            if name in COMMANDS and name not in self.commands
            else (name, self.commands[name])
            for name in self.list_commands(ctx)
        ]
        rows = [(name, cmd) for name, cmd in shown if not cmd.hidden]
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
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
    help="Who is acting (audit events of direct database writes record local:<unix user> "
    "(claims NAME)) [env KEYWARD_ACTOR; default SUDO_USER, then the login name]",
)
@click.option(
    "--url",
    "server_url",
    envvar="KEYWARD_URL",
    metavar="URL",
    help="A keyward server (https://HOST:PORT): the everyday commands go through it, "
    "signed with KEYWARD_KEY; others refuse to run [env KEYWARD_URL].",
)
@click.option(
    "--inventory",
    envvar="KEYWARD_INVENTORY",
    metavar="DIR",
    help="Inventory directory [env KEYWARD_INVENTORY; default ./inventory, then "
    "/etc/keyward/inventory]",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More log on stderr: -v info, -vv debug (default: warnings and errors).",
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Errors only on stderr; no progress, no lock-wait or other chatter.",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "human", "json"]),
    default="auto",
    show_default=True,
    envvar="KEYWARD_LOG_FORMAT",
    help="Log lines on stderr: auto = readable on a terminal, JSON otherwise; json = the full "
    "structured log (info and up), as the systemd units use [env KEYWARD_LOG_FORMAT].",
)
@click.pass_context
def cli(
    ctx: click.Context,
    db: str | None,
    actor: str | None,
    server_url: str | None,
    inventory: str | None,
    verbose: int,
    quiet: bool,
    log_format: LogFormat,
) -> None:
    """keyward: who can log in where, why and since when, kept true on every host."""
    if verbose and quiet:
        raise UsageError("-v and -q contradict each other; give one")
    # The daemon's and the server's only output is their log: info unless told otherwise.
    default = "info" if ctx.invoked_subcommand in ("daemon", "server") else "warning"
    configure(
        log_format=log_format,
        level=console_level(verbose, quiet, log_format, default=default),
    )
    CONSOLE.quiet = quiet
    app = AppContext(
        db=db,
        actor=actor or default_actor(dict(os.environ)),
        inventory=inventory,
        server_url=server_url,
    )
    ctx.obj = app
    ctx.call_on_close(app.close)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI, turning every KeywardError into one line on stderr and its exit code."""
    try:
        rc = cli.main(args=argv, prog_name="keyward", standalone_mode=False)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        _reader_went_away()
        sys.exit(0)
    except SystemExit:
        # click turns EPIPE while a command writes into sys.exit(1) after wrapping the
        # streams; a reader that stopped reading is not a failure of the command.
        if isinstance(sys.stdout, PacifyFlushWrapper):
            _reader_went_away()
            sys.exit(0)
        raise
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
        if _is_broken_pipe(exc):
            _reader_went_away()
            sys.exit(0)
        if os.environ.get("KEYWARD_DEBUG"):
            import traceback  # only for KEYWARD_DEBUG: not on every start

            traceback.print_exc()
        first = " ".join(str(exc).split())[:300]
        click.echo(
            f"keyward: internal error: {type(exc).__name__}: {first} (KEYWARD_DEBUG=1 for details)",
            err=True,
        )
        sys.exit(INTERNAL_ERROR)
    sys.exit(rc if isinstance(rc, int) else 0)


def _is_broken_pipe(exc: BaseException) -> bool:
    """A closed stdout, possibly wrapped by a library that re-raised it as its own error."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, BrokenPipeError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reader_went_away() -> None:
    """``keyward audit log | head``: the reader had enough, which is not an error.

    As the Python documentation recommends, stdout is pointed at /dev/null so the
    interpreter's final flush of what is still buffered cannot fail again.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests): nothing to flush
        pass
