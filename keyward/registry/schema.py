"""Creating and upgrading the registry schema through Alembic.

Every schema change is a migration, from the first table on, so a registry
made by an older keyward is upgraded in place by ``keyward init``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

import keyward.migrations
from keyward.errors import RegistryUnavailable

MIGRATIONS_DIR = Path(keyward.migrations.__file__).parent


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; return (before, after)."""
    before = current_revision(engine)
    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    return before, head_revision()


def require_current(engine: Engine, where: str) -> None:
    """Refuse to work on a registry that is missing or at another schema revision."""
    revision = current_revision(engine)
    head = head_revision()
    if revision is None:
        raise RegistryUnavailable(f"no keyward registry in {where}; run 'keyward init'")
    if revision != head:
        raise RegistryUnavailable(
            f"the registry in {where} is at schema {revision}, this keyward needs {head}; "
            "run 'keyward init' to upgrade it"
        )
