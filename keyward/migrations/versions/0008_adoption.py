"""Adoption: what ``keyward adopt scan`` found on hosts, and decisions about unclaimed keys.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adopt_host",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("environment", sa.String(length=64), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("scanned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("file_errors", sa.Text(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("host"),
    )
    op.create_table(
        "adopt_key",
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("key_type", sa.String(length=64), nullable=False),
        sa.Column("bits", sa.Integer(), nullable=False),
        sa.Column("blob", sa.LargeBinary(), nullable=False),
        sa.Column("comment", sa.String(length=500), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("fingerprint"),
    )
    op.create_table(
        "adopt_line",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("pattern", sa.String(length=1024), nullable=False),
        sa.Column("path", sa.String(length=4096), nullable=True),
        sa.Column("lineno", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("comment", sa.String(length=500), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_adopt_line_host", "adopt_line", ["host"])
    op.create_index("ix_adopt_line_fingerprint", "adopt_line", ["fingerprint"])
    op.create_table(
        "adopt_decision",
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("decided_by", sa.String(length=64), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("fingerprint"),
    )


def downgrade() -> None:
    op.drop_table("adopt_decision")
    op.drop_index("ix_adopt_line_fingerprint", table_name="adopt_line")
    op.drop_index("ix_adopt_line_host", table_name="adopt_line")
    op.drop_table("adopt_line")
    op.drop_table("adopt_key")
    op.drop_table("adopt_host")
