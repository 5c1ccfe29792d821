"""Verify a registry copy's audit chain, the same check as ``keyward audit verify``.

A snapshot is only kept, and only restored, if its chain verifies and agrees
with the signed checkpoints: a copy nobody checked is not a backup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from keyward.errors import AuditChainBroken, BackupFailed
from keyward.registry import checkpoint as cp
from keyward.registry.audit import ChainProblem


def verify_registry(
    engine: Engine, checkpoints: Sequence[cp.Checkpoint] = ()
) -> tuple[int, str, ChainProblem | None]:
    """Verify the audit chain of the registry behind ``engine``: (head seq, head hash, problem).

    The same check as ``keyward audit verify``, for any registry: the live one, a
    snapshot opened read-only, a restored copy; against ``checkpoints`` if given.
    """
    from keyward.registry.verify import verify_session

    try:
        with Session(engine) as session:
            verified = verify_session(session, checkpoints)
            if verified is None:
                raise BackupFailed("it has no audit chain head: not a keyward registry")
            return verified
    except DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise BackupFailed(f"cannot read its audit chain: {first}") from None


@dataclass(frozen=True)
class Verified:
    """A copy whose chain verified: its head (``events`` = head seq) and schema revision."""

    events: int
    head: str
    revision: str | None


def check_chain(engine: Engine, what: str, checkpoints: Sequence[cp.Checkpoint]) -> Verified:
    """``verify_registry`` that refuses a broken chain, naming ``what`` was checked."""
    try:
        events, head, problem = verify_registry(engine, checkpoints)
    except BackupFailed as exc:
        raise BackupFailed(f"{what}: {exc.message}") from None
    if problem is not None:
        raise AuditChainBroken(f"{what}: audit chain broken at {problem}")
    return Verified(events, head, schema_revision(engine))


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision of a registry (None if it has none)."""
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    except DBAPIError:
        return None
    return str(row[0]) if row else None
