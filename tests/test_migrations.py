"""The migrations build exactly the tables the models describe, on both backends.

A model changed without a migration (or the reverse) would work in tests that create
tables from the models and fail on a user's upgraded registry.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import keyward.registry.models  # noqa: F401 - registers every table on SQLModel.metadata
from keyward.registry.store import Registry


def _redundant(diff: object) -> bool:
    """audit_head's UNIQUE (id) repeats its primary key; PostgreSQL reflection folds it away."""
    if not isinstance(diff, tuple) or diff[0] not in ("add_constraint", "remove_constraint"):
        return False
    constraint = diff[1]
    return bool(
        constraint.table.name == "audit_head" and [c.name for c in constraint.columns] == ["id"]
    )


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    Registry.initialise(db_url)
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diffs = compare_metadata(context, SQLModel.metadata)
            assert [d for d in diffs if not _redundant(d)] == []
    finally:
        engine.dispose()


def test_the_head_revision_every_command_checks_is_the_newest_script() -> None:
    from keyward.registry.location import HEAD_REVISION
    from keyward.registry.schema import script_head

    assert script_head() == HEAD_REVISION
