"""``backup list`` and ``backup prune``: keyward's snapshots in a directory, and their age.

Only files named like keyward's own snapshots (and their sidecars, and
half-written temporary files a crash left) are ever touched.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from keyward.errors import BackupFailed
from keyward.registry.backup.files import TEMP_RE, parse_name, read_checksum, sha256_file, sidecars
from keyward.registry.store import Registry, WriteTx
from keyward.registry.subjects import ALL_BACKUPS

STALE_TEMP_SECONDS = 86400.0
"""A temporary file this old was left by a crashed run (a snapshot never takes a day)."""


@dataclass(frozen=True)
class Snapshot:
    """A snapshot file in a backup directory."""

    path: Path
    taken_at: datetime
    kind: str

    @property
    def name(self) -> str:
        return self.path.name


def list_snapshots(directory: Path) -> list[Snapshot]:
    """keyward's snapshots in ``directory``, oldest first (other files are ignored)."""
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        parsed = parse_name(entry.name)
        if parsed is None or not entry.is_file() or entry.is_symlink():
            continue
        found.append(Snapshot(entry, parsed[0], parsed[1]))
    return sorted(found, key=lambda s: (s.taken_at, s.name))


def prune_plan(
    snapshots: list[Snapshot], now: datetime, keep_days: int
) -> tuple[list[Snapshot], list[Snapshot]]:
    """(keep, delete): delete snapshots taken more than ``keep_days`` before ``now``.

    The newest snapshot is always kept, however old it is.
    """
    cutoff = now - timedelta(days=keep_days)
    ordered = sorted(snapshots, key=lambda s: (s.taken_at, s.name))
    newest = ordered[-1] if ordered else None
    delete = [s for s in ordered if s.taken_at < cutoff and s is not newest]
    keep = [s for s in ordered if s not in delete]
    return keep, delete


def remove_stale_temp_files(directory: Path, max_age: float = STALE_TEMP_SECONDS) -> list[str]:
    """Delete half-written snapshot files (``.keyward-registry-*.tmp-*``) left by a crash."""
    if not directory.is_dir():
        return []
    removed = []
    cutoff = time.time() - max_age
    for entry in directory.iterdir():
        if not TEMP_RE.match(entry.name) or entry.is_symlink() or not entry.is_file():
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_mtime < cutoff:
                entry.unlink()
                removed.append(entry.name)
    return sorted(removed)


def delete_snapshot(snapshot: Snapshot) -> None:
    try:
        snapshot.path.unlink(missing_ok=True)
        for sidecar in sidecars(snapshot.path):
            sidecar.unlink(missing_ok=True)
    except OSError as exc:
        raise BackupFailed(f"cannot delete {snapshot.path}: {exc.strerror}") from None


@dataclass(frozen=True)
class Listed:
    """One snapshot as ``backup list`` shows it."""

    snapshot: Snapshot
    bytes: int
    sha256: str | None
    """The digest in its ``.sha256`` file, if there is one."""
    checksum: str
    """``missing`` (no ``.sha256``), ``unchecked``, ``ok`` or ``mismatch``."""


def list_backups(directory: Path, check: bool) -> list[Listed]:
    """keyward's snapshots in ``directory``, oldest first; with ``check``, each one's
    SHA-256 recomputed and compared with its ``.sha256`` file."""
    listed: list[Listed] = []
    for snap in list_snapshots(directory):
        recorded = read_checksum(snap.path)
        if recorded is None:
            status = "missing"
        elif not check:
            status = "unchecked"
        else:
            status = "ok" if sha256_file(snap.path) == recorded else "mismatch"
        listed.append(Listed(snap, snap.path.stat().st_size, recorded, status))
    return listed


@dataclass(frozen=True)
class Pruned:
    """``backup prune``'s outcome (or, in a dry run, what it would be)."""

    keep: list[Snapshot]
    delete: list[Snapshot]
    """Deleted, or (dry run) what would be."""
    stale: list[str]
    """Half-written temporary files deleted."""


def prune_backups(
    registry: Registry | None,
    actor: str,
    directory: Path,
    now: datetime,
    keep_days: int,
    on_audit: Callable[[WriteTx], None],
) -> Pruned:
    """Delete snapshots older than ``keep_days`` and stale temporary files; record
    ``backup.prune``.  Without a ``registry`` it is a dry run: nothing is deleted or
    recorded.  ``on_audit`` gets the committed transaction, to report its events."""
    keep, delete = prune_plan(list_snapshots(directory), now, keep_days)
    stale: list[str] = []
    if registry is not None:
        for snap in delete:
            delete_snapshot(snap)
        stale = remove_stale_temp_files(directory)
        with registry.write(actor) as tx:
            tx.audit(
                "backup.prune",
                ALL_BACKUPS,
                {
                    "directory": str(directory),
                    "keep_days": keep_days,
                    "deleted": [s.name for s in delete],
                    "kept": len(keep),
                    **({"half_written": stale} if stale else {}),
                },
            )
        on_audit(tx)
    return Pruned(keep, delete, stale)
