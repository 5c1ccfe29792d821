"""Login sources per key, and an index for the sessions the multi-computer check reads.

Both keep collecting logins proportional to the new lines, not to the stored history.
Existing accepted logins seed ``login_source``.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_source",
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("addr", sa.String(length=64), nullable=False),
        sa.Column("person", sa.String(length=32), nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("fingerprint", "addr"),
    )
    op.create_index("ix_login_source_person", "login_source", ["person"])
    op.execute(
        "INSERT INTO login_source (fingerprint, addr, person, first_seen, last_seen) "
        "SELECT fingerprint, addr, MAX(person), MIN(at), MAX(at) FROM login_event "
        "WHERE outcome = 'accepted' AND fingerprint IS NOT NULL "
        "GROUP BY fingerprint, addr"
    )
    op.create_index("ix_login_event_open", "login_event", ["outcome", "session_end", "at"])


def downgrade() -> None:
    op.drop_index("ix_login_event_open", table_name="login_event")
    op.drop_index("ix_login_source_person", table_name="login_source")
    op.drop_table("login_source")
