"""What every command needs: where the registry and inventory are, who acts, the clock."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from keyward.clock import Clock, system_clock
from keyward.errors import UsageError

if TYPE_CHECKING:
    from keyward.auth.client import ApiClient
    from keyward.registry.store import Registry


def default_actor(env: dict[str, str]) -> str:
    """The invoking login: ``SUDO_USER`` first, so ``sudo keyward`` records the human."""
    for name in ("KEYWARD_ACTOR", "SUDO_USER"):
        if env.get(name):
            return env[name]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.geteuid()}"


@dataclass
class AppContext:
    """Global options, resolved once; the registry is opened on first use."""

    db: str | None
    actor: str
    inventory: str | None
    clock: Clock = system_clock
    server_url: str | None = None
    """``--url`` / ``KEYWARD_URL``: talk to ``keyward server`` instead of the database."""
    _registry: Registry | None = field(default=None, repr=False)

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

    def registry(self) -> Registry:
        if self._registry is None:
            # Imported here: SQLAlchemy costs most of a second, and only commands that read
            # or write the registry should pay it (tests/test_startup.py).
            from keyward.registry.store import Registry

            self._registry = Registry.open(self.url, self.clock)
        return self._registry

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
        if self._registry is not None:
            self._registry.dispose()
            self._registry = None
