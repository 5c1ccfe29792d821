"""What every command needs: where the registry and inventory are, who acts, the clock."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from keyward.clock import Clock, process_clock
from keyward.errors import UsageError

if TYPE_CHECKING:
    from keyward.auth.client import ApiClient
    from keyward.registry.store import Registry


def unix_user() -> str:
    """The real user running this process (``os.getuid``), from the password database.

    Not ``$USER`` or ``$LOGNAME``: those are whatever the environment says.
    """
    import pwd

    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid-{uid}"


def local_actor(unix: str, claimed: str) -> str:
    """The actor recorded for a direct database write: ``local:<unix user>``.

    A claimed name (``--actor``, ``KEYWARD_ACTOR``, ``SUDO_USER``) is kept beside it but
    never replaces it: ``local:root (claims alice)``.  Whoever can write the database
    can claim any name; the unix user is what the operating system vouches for.
    """
    if claimed == unix:
        return f"local:{unix}"
    return f"local:{unix} (claims {claimed})"


def default_actor(env: dict[str, str]) -> str:
    """The invoking login: ``SUDO_USER`` first, so ``sudo keyward`` records the human."""
    for name in ("KEYWARD_ACTOR", "SUDO_USER"):
        if env.get(name):
            return env[name]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.geteuid()}"


MACHINE_LOCAL = frozenset(
    (
        "reconcile",
        "plan",
        "hosts",
        "backup",
        "daemon",
        "server",
        "init",
        "import",
        "directory",
        "audit checkpoint",
        "adopt",
        "notify",
    )
)
"""Commands that work on the registry machine itself (its hosts, files, database) and
stay off the API by design; refused through a server with a hint to run them there.
``adopt`` reads the hosts with the agent's key and is the day-one takeover run where the
agent runs; ``notify`` reads the webhook secret the daemon and the server use."""


@dataclass
class AppContext:
    """Global options, resolved once; the registry is opened on first use."""

    db: str | None
    actor: str
    inventory: str | None
    # The environment's clock settings, read when the command starts (see process_clock).
    clock: Clock = field(default_factory=process_clock)
    server_url: str | None = None
    """``--url`` / ``KEYWARD_URL``: talk to ``keyward server`` instead of the database."""
    _registry: Registry | None = field(default=None, repr=False)
    _plain: Registry | None = field(default=None, repr=False)  # service and agent writes

    def __post_init__(self) -> None:
        from keyward.registry import validate  # not at import: `--version` loads no registry

        actor = self.actor.strip()
        if not actor or validate.has_control(actor) or len(actor) > 64:
            raise UsageError("--actor must be a single short line (at most 64 characters)")
        self.actor = actor

    @property
    def url(self) -> str:
        from keyward.registry.location import resolve_url

        return resolve_url(self.db, dict(os.environ), os.geteuid())

    def registry(self, *, service: bool = False, agent: bool = False) -> Registry:
        """The registry, opened on first use.

        A command's writes are recorded as ``local:<unix user>`` (``local_actor``): the
        CLI writing the database directly is bootstrap or break-glass, and ``report
        access`` flags it.  Their own actor (``--actor``/``KEYWARD_ACTOR`` as given) is
        kept by ``service`` (the daemon; the server, which records proven people) and by
        ``agent``: the rounds of ``reconcile``, ``plan`` and the confirmation round of
        ``offboard``, whose events (host states, confirmations, alerts) are the agent's,
        ``keyward-agent`` in the units.  Those get a registry of their own, so a command's
        own change (``offboard``'s revocation) stays attributed.

        With ``KEYWARD_URL`` set, a command that reaches here (``service`` aside) has no
        API route: it fails naming itself rather than quietly using the database.
        """
        if not service:
            self.require_database()
        plain = service or agent
        opened = self._plain if plain else self._registry
        if opened is None:
            # Imported here: SQLAlchemy costs most of a second, and only commands that read
            # or write the registry should pay it (tests/test_startup.py).
            from keyward.registry.store import Registry

            opened = Registry.open(self.url, self.clock)
            if plain:
                self._plain = opened
            else:
                opened.recorded_as = self.local_attribution()
                self._registry = opened
        return opened

    def require_database(self) -> None:
        """Refuse, naming the command, to use the database while a server is set."""
        if self.server_url:
            import click

            ctx = click.get_current_context(silent=True)
            name = ctx.command_path if ctx is not None else "this command"
            words = name.split()[1:]
            if words[:1] and (words[0] in MACHINE_LOCAL or " ".join(words[:2]) in MACHINE_LOCAL):
                raise UsageError(
                    f"'{name}' is machine-local and has no route in the keyward server's "
                    "API; run it on the registry machine without KEYWARD_URL (and --url)"
                )
            raise UsageError(
                f"'{name}' has no route in the keyward server's API; unset KEYWARD_URL "
                "(and --url) to use the database directly"
            )

    def local_attribution(self) -> str:
        """The actor this process's direct database writes record (``local_actor``)."""
        return local_actor(unix_user(), self.actor)

    def inventory_dir(self) -> Path:
        from keyward.inventory.where import find_inventory_dir

        return find_inventory_dir(self.inventory, dict(os.environ))

    def api(self) -> ApiClient | None:
        """A client for ``keyward server`` when ``--url``/``KEYWARD_URL`` is set, else None.

        The signing key is ``KEYWARD_KEY`` (a public key whose private half is in the
        ssh-agent, or a private key file); a stored ``keyward auth login`` session is
        used instead while it is valid.
        """
        if not self.server_url:
            return None
        from keyward.auth.client import ApiClient, SessionFile, check_url
        from keyward.auth.signer import load_signer
        from keyward.registry.location import default_state_dir

        env = dict(os.environ)
        url = check_url(self.server_url)
        key = env.get("KEYWARD_KEY")
        return ApiClient(
            url=url,
            signer=load_signer(key) if key else None,
            sessions=SessionFile.for_url(url, default_state_dir(env, os.geteuid())),
            clock=self.clock,
            cafile=env.get("KEYWARD_CA") or None,
        )

    def close(self) -> None:
        for opened in (self._registry, self._plain):
            if opened is not None:
                opened.dispose()
        self._registry = self._plain = None
