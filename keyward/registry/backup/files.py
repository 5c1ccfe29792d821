"""The files of one snapshot: names, checksums, kinds, private temporary files.

A snapshot is one file named by the UTC time it was taken,
``keyward-registry-20261123T184512Z.sqlite`` or ``...pgdump``; next to it a
``.sha256`` file in ``sha256sum`` format (and the signed checkpoint, see
``signing.py``).  Every file is written to a temporary name with mode 0600
and renamed into place, so a half-written file never carries a snapshot's name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from keyward.errors import UsageError
from keyward.registry import checkpoint as cp
from keyward.registry.db import create_private_file, private_umask
from keyward.registry.location import default_state_dir

PREFIX = "keyward-registry-"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
KINDS = {"sqlite": "sqlite", "postgresql": "pgdump"}
"""Registry backend -> snapshot file extension."""
NAME_RE = re.compile(r"^keyward-registry-(\d{8}T\d{6}Z)\.(sqlite|pgdump)$")
TEMP_RE = re.compile(
    r"^\.keyward-registry-\d{8}T\d{6}Z\.(sqlite|pgdump)(\.sha256|\.checkpoint(\.sig)?)?"
    r"\.tmp-[0-9a-f]{8}$"
)


CHECKSUM_SUFFIX = ".sha256"


SQLITE_MAGIC = b"SQLite format 3\x00"
PGDUMP_MAGIC = b"PGDMP"


def default_backup_dir(env: Mapping[str, str], euid: int) -> Path:
    """``<state dir>/backups``: ``/var/lib/keyward/backups`` for root."""
    return default_state_dir(env, euid) / "backups"


def snapshot_name(backend: str, at: datetime) -> str:
    """``keyward-registry-<UTC time>.<sqlite|pgdump>``."""
    return f"{PREFIX}{at.astimezone(UTC).strftime(STAMP_FORMAT)}.{KINDS[backend]}"


def parse_name(name: str) -> tuple[datetime, str] | None:
    """(time taken, extension) for one of keyward's snapshot names, else None."""
    match = NAME_RE.match(name)
    if match is None:
        return None
    try:
        taken = datetime.strptime(match.group(1), STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return taken, match.group(2)


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def checkpoint_file(path: Path) -> Path:
    """``<snapshot>.checkpoint``: the signed statement that authenticates the snapshot."""
    return path.with_name(path.name + cp.SUFFIX)


def signature_file(path: Path) -> Path:
    return path.with_name(path.name + cp.SUFFIX + cp.SIG_SUFFIX)


def sidecars(path: Path) -> tuple[Path, Path, Path]:
    """The files that travel with a snapshot: ``.sha256``, ``.checkpoint``, ``.checkpoint.sig``."""
    return checksum_path(path), checkpoint_file(path), signature_file(path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def private_temp(directory: Path, name: str) -> Path:
    """A new empty file ``.<name>.tmp-<random>`` in ``directory``, mode 0600."""
    path = directory / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    if not create_private_file(path):
        raise FileExistsError(errno.EEXIST, "exists", str(path))
    return path


def write_checksum(path: Path, digest: str) -> Path:
    """Write ``<path>.sha256`` (``sha256sum -c`` format) atomically, mode 0600."""
    target = checksum_path(path)
    temp = private_temp(path.parent, target.name)
    try:
        with open(temp, "w", encoding="ascii") as handle:
            handle.write(f"{digest}  {path.name}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def read_checksum(path: Path) -> str | None:
    """The digest recorded next to ``path``, or None if there is no checksum file."""
    sidecar = checksum_path(path)
    try:
        content = sidecar.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read {sidecar}: {exc.strerror}") from None
    fields = content.split()
    if not fields or not re.fullmatch(r"[0-9a-f]{64}", fields[0]):
        raise UsageError(f"{sidecar} is not a sha256sum line")
    return fields[0]


def check_checksum(path: Path) -> str:
    """The file's digest if it matches its ``.sha256`` file; refuse otherwise."""
    recorded = read_checksum(path)
    if recorded is None:
        raise UsageError(
            f"no checksum file {checksum_path(path).name} next to {path}; "
            "refusing to use an unchecked snapshot"
        )
    actual = sha256_file(path)
    if actual != recorded:
        raise UsageError(
            f"{path} does not match its checksum (sha256 {actual[:16]}..., recorded "
            f"{recorded[:16]}...): the snapshot is damaged or was changed; nothing was restored"
        )
    return actual


def snapshot_kind(path: Path) -> str:
    """``sqlite`` or ``pgdump``, from the file's first bytes."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(PGDUMP_MAGIC):
        return "pgdump"
    raise UsageError(f"{path} is neither a SQLite snapshot nor a pg_dump custom-format archive")


def ensure_dir(directory: Path) -> Path:
    """The backup directory, created (mode 0700) if missing."""
    try:
        with private_umask():
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise UsageError(
            f"cannot create backup directory {directory}: {exc.strerror or exc}"
        ) from None
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    return directory
