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
        from keyward.inventory import find_inventory_dir

        return find_inventory_dir(self.inventory, dict(os.environ))

    def close(self) -> None:
        if self._registry is not None:
            self._registry.dispose()
            self._registry = None
