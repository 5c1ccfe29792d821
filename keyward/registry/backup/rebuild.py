"""Restores rebuild keyward's own schema at the snapshot's revision and copy table rows only.

Whatever else a snapshot holds (a trigger, a view, a table keyward does not
know), added by whoever could write to the database, stays behind.
"""

from __future__ import annotations

import re

from sqlalchemy.engine import Connection

from keyward.errors import BackupFailed

_REVISION_RE = re.compile(r"[0-9A-Za-z_]{1,32}")
SKIP_TABLES = {"alembic_version"}
"""Written by the migrations themselves, never copied from a snapshot."""


def migrate_to(conn: Connection, revision: str) -> None:
    """Build keyward's own schema at ``revision`` (the snapshot's) on ``conn``."""
    from alembic import command
    from alembic.util import CommandError

    from keyward.registry.schema import _config

    if not _REVISION_RE.fullmatch(revision):
        raise BackupFailed("the snapshot's schema revision is malformed")
    config = _config()
    config.attributes["connection"] = conn
    try:
        command.upgrade(config, revision)
    except CommandError:
        raise BackupFailed(
            f"the snapshot is at schema {revision}, which this keyward does not know: "
            "restore it with the keyward that made it"
        ) from None
