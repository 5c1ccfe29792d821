"""No table changes: marks the registries whose audit subjects carry their kind.

From this revision on, new audit events name their subject as ``kind:name``
(``person:alice``, ``host:web-1``) and journal logins are stored with a ``journal:``
position, which failure mode and ``restrict`` rely on. An older keyward would read
those rows the old way: its ``person purge`` would redact none of a person's new
events, and it would still attribute forged lines from log files and enter failure
mode on them. The revision bump makes every older keyward refuse this registry
("this keyward needs 0006") instead.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
