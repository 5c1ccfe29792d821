"""``backup create``: take, verify, checksum and sign a snapshot, copy it, record it.

The ``backup.create`` (and ``backup.copy-failed``) audit events go to the live
registry after the snapshot is taken, so a snapshot never contains its own event.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from keyward.errors import BackupFailed, UsageError
from keyward.registry import checkpoint as cp
from keyward.registry.backup.copy_command import CopyFailure, run_copy
from keyward.registry.backup.files import (
    KINDS,
    ensure_dir,
    fsync_dir,
    private_temp,
    sha256_file,
    sidecars,
    snapshot_name,
    write_checksum,
)
from keyward.registry.backup.postgres import pg_dump, verify_pgdump
from keyward.registry.backup.signing import write_snapshot_checkpoint
from keyward.registry.backup.sqlite import sqlite_snapshot, verify_sqlite_snapshot
from keyward.registry.backup.verify import Verified
from keyward.registry.db import sqlite_path
from keyward.registry.store import Registry, WriteTx
from keyward.registry.subjects import Subject


@dataclass(frozen=True)
class Created:
    """A snapshot written, verified and signed: its four files and what they hold."""

    path: Path
    checksum: Path
    checkpoint: Path
    signature: Path
    sha256: str
    size: int
    events: int
    backend: str
    head: str

    @property
    def files(self) -> tuple[Path, Path, Path, Path]:
        """The snapshot set, in the order it is copied: snapshot first, signature last."""
        return (self.path, self.checksum, self.checkpoint, self.signature)


def verify_snapshot(
    path: Path, kind: str, pg_url: str | None, checkpoints: Sequence[cp.Checkpoint] = ()
) -> Verified:
    """Open the snapshot and verify its audit chain (and ``checkpoints``); raise if broken.

    A ``pgdump`` is restored into a temporary database on the server of
    ``pg_url`` (which needs the CREATEDB privilege) and dropped afterwards.
    """
    if kind == "sqlite":
        return verify_sqlite_snapshot(path, checkpoints)
    if pg_url is None:
        raise UsageError(
            f"snapshot {path.name} is a PostgreSQL dump; verifying it needs a PostgreSQL registry"
        )
    return verify_pgdump(path, pg_url, checkpoints)


def take_snapshot(
    url: str, backend: str, directory: Path, now: datetime, keyring: cp.Keyring
) -> Created:
    """Write, verify, checksum and sign a snapshot of the registry at ``url`` into ``directory``.

    The snapshot's chain must agree with the live registry's signed checkpoints (a writer
    who truncated or re-hashed the chain gets no snapshot); its head then becomes the
    registry's newest checkpoint too.
    """
    if backend not in KINDS:
        raise UsageError(f"cannot back up a {backend} registry")
    store = cp.Store(keyring, cp.registry_identity(url))
    checkpoints = store.load()
    ensure_dir(directory)
    name = snapshot_name(backend, now)
    final = directory / name
    if final.exists():
        raise BackupFailed(f"a snapshot named {name} already exists; try again in a second")
    try:
        temp = private_temp(directory, name)
    except OSError as exc:
        raise UsageError(f"cannot write to backup directory {directory}: {exc.strerror}") from None
    try:
        if backend == "sqlite":
            source = sqlite_path(url)
            if source is None:
                raise UsageError("an in-memory SQLite registry cannot be backed up")
            sqlite_snapshot(source, temp)
        else:
            pg_dump(url, temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        verified = verify_snapshot(
            temp, KINDS[backend], url if backend == "postgresql" else None, checkpoints
        )
        digest = sha256_file(temp)
        try:
            os.link(temp, final)
        except FileExistsError:
            raise BackupFailed(
                f"a snapshot named {name} already exists; try again in a second"
            ) from None
    finally:
        temp.unlink(missing_ok=True)
    try:
        checksum = write_checksum(final, digest)
        checkpoint, signature = write_snapshot_checkpoint(
            keyring, final, store.identity, verified, digest, now
        )
    except BaseException:
        for leftover in (final, *sidecars(final)):
            leftover.unlink(missing_ok=True)
        raise
    fsync_dir(directory)
    if not checkpoints or checkpoints[-1].seq < verified.events:
        store.write(verified.events, verified.head, now)
    return Created(
        final,
        checksum,
        checkpoint,
        signature,
        digest,
        final.stat().st_size,
        verified.events,
        backend,
        verified.head,
    )


def copy_and_record(
    registry: Registry,
    actor: str,
    created: Created,
    directory: Path,
    copy_command: str | None,
    copy_timeout: float,
    on_audit: Callable[[WriteTx], None],
) -> list[CopyFailure]:
    """Copy the snapshot's files (if ``copy_command``), then write ``backup.create``.

    The files go snapshot first, signature last, and copying stops at the first
    failure, which is returned and recorded as ``backup.copy-failed`` (the caller
    exits 1).  ``on_audit`` gets the committed transaction, to report its events.
    """
    failures: list[CopyFailure] = []
    if copy_command:
        for path in created.files:
            failure = run_copy(copy_command, path, copy_timeout)
            if failure is not None:
                failures.append(failure)
                break
    with registry.write(actor) as tx:
        tx.audit(
            "backup.create",
            Subject.backup(created.path.name),
            {
                "backend": created.backend,
                "bytes": created.size,
                "sha256": created.sha256,
                "events_verified": created.events,
                "directory": str(directory),
                "copied": bool(copy_command) and not failures,
            },
        )
        for failure in failures:
            tx.audit(
                "backup.copy-failed",
                Subject.backup(created.path.name),
                {
                    "file": failure.file,
                    "program": failure.program,
                    "exit_code": failure.exit_code,
                    "timed_out": failure.timed_out,
                    "error": failure.error,
                },
            )
    on_audit(tx)
    return failures
