"""Where the registry is: its URL from the options, and the schema revision it must have.

Kept free of SQLAlchemy (which costs most of a second to import) so that a command can
find its registry, and the quick read path can check it, without loading the ORM.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

# The newest revision in keyward/migrations/versions. Every command checks the registry
# against it; reading it from the scripts would import Alembic and every migration on each
# run. tests/test_migrations.py checks that it matches the scripts.
HEAD_REVISION = "0012"


def default_state_dir(env: Mapping[str, str], euid: int) -> Path:
    """``/var/lib/keyward`` for root, the XDG data directory otherwise."""
    if "KEYWARD_STATE_DIR" in env:
        return Path(env["KEYWARD_STATE_DIR"])
    if euid == 0:
        return Path("/var/lib/keyward")
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local/share")
    return Path(base) / "keyward"


def resolve_url(db: str | None, env: Mapping[str, str], euid: int) -> str:
    """The registry URL from ``--db``, then ``KEYWARD_DB``, then the default file.

    A value without ``://`` is a path to a SQLite file.
    """
    value = db or env.get("KEYWARD_DB")
    if not value:
        value = str(default_state_dir(env, euid) / "registry.db")
    if "://" not in value:
        return f"sqlite:///{Path(value).expanduser().absolute()}"
    return value
