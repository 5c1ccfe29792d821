"""``backup restore``: authenticate a snapshot, rebuild the registry from it, record it.

Refused, with nothing changed: a snapshot that fails its checksum, its signed
checkpoint or its audit chain, one of the other backend, and a non-empty
target without ``--force``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select

from keyward.clock import Clock
from keyward.errors import BackupFailed, RegistryError, UsageError
from keyward.registry import checkpoint as cp
from keyward.registry.backup.files import KINDS, snapshot_kind
from keyward.registry.backup.postgres import pg_restore_fresh
from keyward.registry.backup.signing import authenticate_snapshot
from keyward.registry.backup.sqlite import sqlite_readonly_engine, sqlite_restore_fresh
from keyward.registry.backup.verify import schema_revision
from keyward.registry.db import make_engine, sqlite_path
from keyward.registry.models import AuditEvent, Person, Role, SshKey
from keyward.registry.store import Registry, WriteTx
from keyward.registry.subjects import Subject

INIT_ACTION = "registry.init"


@dataclass(frozen=True)
class Contents:
    """What a registry holds that a restore would overwrite."""

    people: int
    keys: int
    roles: int
    events: int
    """Audit events other than ``registry.init``."""

    @property
    def empty(self) -> bool:
        return not (self.people or self.keys or self.roles or self.events)

    def __str__(self) -> str:
        return (
            f"{self.people} people, {self.keys} keys, {self.roles} roles, "
            f"{self.events} audit events after registry.init"
        )


def registry_contents(url: str) -> Contents:
    """What a restore would overwrite at ``url``; a missing database or table counts as empty."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is None:
            raise UsageError("cannot restore into an in-memory SQLite registry")
        if not path.exists():
            return Contents(0, 0, 0, 0)
        engine = sqlite_readonly_engine(path)
    else:
        engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
        with Session(engine) as session:

            def count(model: Any, *where: Any) -> int:
                if model.__tablename__ not in tables:
                    return 0  # nothing there to lose
                query = select(func.count()).select_from(model)
                for clause in where:
                    query = query.where(clause)
                return int(session.exec(query).one())

            return Contents(
                count(Person),
                count(SshKey),
                count(Role),
                count(AuditEvent, col(AuditEvent.action) != INIT_ACTION),
            )
    except DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise BackupFailed(f"cannot read the target registry: {first}") from None
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Restored:
    """A snapshot restored and verified: what it replaced and the checkpoint now signed."""

    sha256: str
    kind: str
    replaced: Contents
    events: int
    head: str
    revision: str
    checkpoint: cp.Checkpoint
    retired: Path | None


def restore_snapshot(
    path: Path, url: str, *, force: bool, keyring: cp.Keyring, now: datetime
) -> Restored:
    """Authenticate ``path``, copy its rows into a fresh schema at ``url``, verify the result.

    Refuses (nothing changed) a snapshot that fails its checksum, its signed checkpoint
    (``keyring.trusted``) or its audit chain, one of the other backend, and a non-empty
    target unless ``force``.  Afterwards the target's earlier checkpoints are set aside
    and its head is checkpointed with this machine's key: the restored chain is the
    registry's history from now on.
    """
    if not path.is_file():
        raise UsageError(f"no snapshot file {path}")
    digest, signed = authenticate_snapshot(path, keyring)
    kind = snapshot_kind(path)
    backend = make_url(url).get_backend_name()
    if KINDS.get(backend) != kind:
        raise UsageError(
            f"{path.name} is a {kind} snapshot but the registry is {backend}; "
            "restore it into a registry of the same kind"
        )
    replaced = registry_contents(url)
    if not replaced.empty and not force:
        raise RegistryError(
            f"the target registry is not empty ({replaced}); restoring would replace it: "
            "take a backup of it first, then pass --force"
        )
    if kind == "sqlite":
        target = sqlite_path(url)
        assert target is not None
        fresh, revision = sqlite_restore_fresh(path, target, signed)
    else:
        fresh, revision = pg_restore_fresh(path, url, signed)
    store = cp.Store(keyring.local(), cp.registry_identity(url))
    retired = store.retire(now)
    written = store.write(fresh.events, fresh.head, now)
    return Restored(digest, kind, replaced, fresh.events, fresh.head, revision, written, retired)


@dataclass(frozen=True)
class RestoreDone:
    """``backup restore``'s outcome, recorded and checkpointed."""

    restored: Restored
    revision: str | None
    """The restored registry's schema revision (the snapshot's, maybe older than ours)."""


def restore_backup(
    path: Path,
    url: str,
    *,
    force: bool,
    keyring: cp.Keyring,
    clock: Clock,
    actor: str,
    on_audit: Callable[[WriteTx], None],
) -> RestoreDone:
    """``restore_snapshot``, then ``backup.restore`` in the restored registry, checkpointed.

    The event is the first of the restored chain's new history, so its head is
    signed again after it.  ``on_audit`` gets the committed transaction, to report
    its events.
    """
    restored = restore_snapshot(path, url, force=force, keyring=keyring, now=clock())
    registry = Registry(make_engine(url), url, clock)
    try:
        revision = schema_revision(registry.engine)
        with registry.write(actor) as tx:
            details: dict[str, Any] = {
                "file": path.name,
                "sha256": restored.sha256,
                "forced": force,
                "events_verified": restored.events,
            }
            if not restored.replaced.empty:
                details["replaced"] = {
                    "people": restored.replaced.people,
                    "keys": restored.replaced.keys,
                    "roles": restored.replaced.roles,
                    "events": restored.replaced.events,
                }
            if restored.retired is not None:
                details["checkpoints_retired"] = str(restored.retired)
            tx.audit("backup.restore", Subject.backup(path.name), details)
        on_audit(tx)
        head_seq, head_hash = registry.head()
        store = cp.Store(keyring.local(), cp.registry_identity(url))
        store.write(head_seq, head_hash, clock())
    finally:
        registry.dispose()
    return RestoreDone(restored, revision)
