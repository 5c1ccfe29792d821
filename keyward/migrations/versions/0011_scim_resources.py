"""SCIM resources: the users and groups an identity provider pushes (``/scim/v2``).

The identity provider owns these documents (every attribute it sends is kept, so it
reads back what it wrote); keyward acts on the few facts it needs (userName, name,
e-mail, active) through ordinary registry operations.  A deleted resource keeps its
row (``deleted_at``), like every other registry row.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scim_resource",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("person", sa.String(length=32), nullable=True),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_scim_resource_kind_name", "scim_resource", ["kind", "name"])
    op.create_index("ix_scim_resource_person", "scim_resource", ["person"])


def downgrade() -> None:
    op.drop_index("ix_scim_resource_person", table_name="scim_resource")
    op.drop_index("ix_scim_resource_kind_name", table_name="scim_resource")
    op.drop_table("scim_resource")
