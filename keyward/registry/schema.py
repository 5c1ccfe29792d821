"""Creating and upgrading the registry schema through Alembic.

Every schema change is a migration, from the first table on, so a registry
made by an older keyward is upgraded in place by ``keyward init``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

import keyward.migrations
from keyward.errors import RegistryUnavailable
from keyward.registry.location import HEAD_REVISION

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(keyward.migrations.__file__).parent


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    return HEAD_REVISION


def script_head() -> str | None:
    """The head revision according to the migration scripts themselves."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The registry's schema revision (Alembic's version table), None if there is none."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows[0] if len(rows) == 1 else None


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; return (before, after)."""
    from alembic import command

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
