"""Snapshots of the registry: take, verify, list, prune, restore, copy elsewhere.

A snapshot is one file named by the UTC time it was taken,
``keyward-registry-20261123T184512Z.sqlite`` (SQLite's online backup API, a
consistent copy taken while other processes keep writing) or ``...pgdump``
(``pg_dump -Fc``, which reads one transaction snapshot).  Next to it a
``.sha256`` file in ``sha256sum`` format.  Both are written to a temporary
name with mode 0600 and renamed into place, so a half-written snapshot never
carries a snapshot's name.

A snapshot is verified by opening it (SQLite: read-only; PostgreSQL: restored
into a throw-away database on the same server) and running the same audit
chain verification as ``keyward audit verify``.

This module raises ``KeywardError``s and never prints; ``keyward.cli.backup_cmds``
is the command-line face.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import MetaData, create_engine, func, inspect, text
from sqlalchemy import select as sa_select
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select

from keyward.errors import AuditChainBroken, KeywardError, RegistryError, UsageError
from keyward.registry import checkpoint as cp
from keyward.registry.audit import ChainProblem
from keyward.registry.db import create_private_file, private_umask, sqlite_path
from keyward.registry.location import default_state_dir
from keyward.registry.models import AuditEvent, Person, Role, SshKey

PREFIX = "keyward-registry-"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
KINDS = {"sqlite": "sqlite", "postgresql": "pgdump"}
"""Registry backend -> snapshot file extension."""
NAME_RE = re.compile(r"^keyward-registry-(\d{8}T\d{6}Z)\.(sqlite|pgdump)$")
TEMP_RE = re.compile(
    r"^\.keyward-registry-\d{8}T\d{6}Z\.(sqlite|pgdump)(\.sha256|\.checkpoint(\.sig)?)?"
    r"\.tmp-[0-9a-f]{8}$"
)
STALE_TEMP_SECONDS = 86400.0
"""A temporary file this old was left by a crashed run (a snapshot never takes a day)."""
CHECKSUM_SUFFIX = ".sha256"
COPY_ENV = "KEYWARD_BACKUP_COPY"
COPY_TIMEOUT = 600.0
"""Seconds a copy command may run before it is killed (and alerted on)."""
PG_TIMEOUT = 3600.0
SQLITE_MAGIC = b"SQLite format 3\x00"
PGDUMP_MAGIC = b"PGDMP"
INIT_ACTION = "registry.init"


class BackupFailed(KeywardError):
    """A snapshot could not be taken, verified, copied or restored (an operational failure)."""

    exit_code = 1


# -- names and files ---------------------------------------------------------------


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


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _private_temp(directory: Path, name: str) -> Path:
    """A new empty file ``.<name>.tmp-<random>`` in ``directory``, mode 0600."""
    path = directory / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    if not create_private_file(path):
        raise FileExistsError(errno.EEXIST, "exists", str(path))
    return path


def write_checksum(path: Path, digest: str) -> Path:
    """Write ``<path>.sha256`` (``sha256sum -c`` format) atomically, mode 0600."""
    target = checksum_path(path)
    temp = _private_temp(path.parent, target.name)
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


# -- verification ------------------------------------------------------------------


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


def sqlite_readonly_engine(path: Path) -> Engine:
    """An engine on a SQLite file that can never write to it."""
    uri = f"file:{quote(str(path.absolute()))}?mode=ro"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, check_same_thread=False)

    return create_engine("sqlite://", creator=connect)


@dataclass(frozen=True)
class Verified:
    events: int
    head: str
    revision: str | None


def _verified(engine: Engine, what: str, checkpoints: Sequence[cp.Checkpoint]) -> Verified:
    try:
        events, head, problem = verify_registry(engine, checkpoints)
    except BackupFailed as exc:
        raise BackupFailed(f"{what}: {exc.message}") from None
    if problem is not None:
        raise AuditChainBroken(f"{what}: audit chain broken at {problem}")
    return Verified(events, head, schema_revision(engine))


def verify_snapshot(
    path: Path, kind: str, pg_url: str | None, checkpoints: Sequence[cp.Checkpoint] = ()
) -> Verified:
    """Open the snapshot and verify its audit chain (and ``checkpoints``); raise if broken.

    A ``pgdump`` is restored into a temporary database on the server of
    ``pg_url`` (which needs the CREATEDB privilege) and dropped afterwards.
    """
    what = f"snapshot {path.name}"
    if kind == "sqlite":
        engine = sqlite_readonly_engine(path)
        try:
            return _verified(engine, what, checkpoints)
        finally:
            engine.dispose()
    if pg_url is None:
        raise UsageError(f"{what} is a PostgreSQL dump; verifying it needs a PostgreSQL registry")
    with temporary_database(pg_url) as temp_url:
        pg_restore(path, temp_url, clean=False)
        engine = create_engine(temp_url)
        try:
            return _verified(engine, what, checkpoints)
        finally:
            engine.dispose()


# -- PostgreSQL tools --------------------------------------------------------------


def pg_tool(name: str) -> str:
    """``pg_dump``/``pg_restore``: from ``KEYWARD_PG_BINDIR``, then PATH, then Debian's dirs."""
    bindir = os.environ.get("KEYWARD_PG_BINDIR")
    if bindir:
        candidate = Path(bindir) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
        raise UsageError(f"KEYWARD_PG_BINDIR={bindir} has no executable {name}")
    found = shutil.which(name)
    if found:
        return found

    def version(path: str) -> float:
        with contextlib.suppress(ValueError):
            return float(Path(path).parent.name)
        return 0.0

    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        candidate = Path(directory) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise BackupFailed(f"{name} not found: install the PostgreSQL client tools")


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URI for ``url`` without its password, and the environment carrying it."""
    parsed: URL = make_url(url)
    env = {"PGPASSWORD": parsed.password} if parsed.password else {}
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _run_pg(argv: list[str], url: str, what: str) -> None:
    _, password_env = _libpq(url)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            timeout=PG_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **password_env},
        )
    except subprocess.TimeoutExpired:
        raise BackupFailed(f"{what} did not finish within {int(PG_TIMEOUT)} s") from None
    except OSError as exc:
        raise BackupFailed(f"cannot run {argv[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        detail = lines[0][:300] if lines else f"exit status {done.returncode}"
        raise BackupFailed(f"{what} failed: {detail}")


def pg_dump(url: str, target: Path) -> None:
    uri, _ = _libpq(url)
    _run_pg(
        [pg_tool("pg_dump"), "--format=custom", "--no-password", f"--file={target}",
         f"--dbname={uri}"],
        url,
        "pg_dump",
    )  # fmt: skip


def pg_restore(path: Path, url: str, *, clean: bool) -> None:
    """Restore a custom-format dump into the database of ``url``, in one transaction."""
    uri, _ = _libpq(url)
    argv = [
        pg_tool("pg_restore"),
        "--no-owner",
        "--no-privileges",
        "--no-password",
        "--exit-on-error",
        "--single-transaction",
    ]
    if clean:
        argv += ["--clean", "--if-exists"]
    _run_pg([*argv, f"--dbname={uri}", str(path)], url, "pg_restore")


def _psycopg_connect(url: str) -> Any:
    import psycopg

    uri, password_env = _libpq(url)
    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 30}
    if password_env:
        kwargs["password"] = password_env["PGPASSWORD"]
    try:
        return psycopg.connect(uri, **kwargs)
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackupFailed(f"cannot connect to PostgreSQL: {first}") from None


@contextlib.contextmanager
def temporary_database(url: str) -> Iterator[str]:
    """A new empty database on the server of ``url``, dropped on exit; yields its URL."""
    import psycopg
    from psycopg import sql

    name = f"keyward_verify_{uuid.uuid4().hex[:12]}"
    with _psycopg_connect(url) as conn:
        try:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            )
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0]
            raise BackupFailed(
                f"cannot create a temporary database to verify the snapshot in ({first}); "
                "the registry's role needs CREATEDB"
            ) from None
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with _psycopg_connect(url) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


# -- create ------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A snapshot file in a backup directory."""

    path: Path
    taken_at: datetime
    kind: str

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Created:
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


def _sqlite_snapshot(source: Path, target: Path) -> None:
    """Copy a live SQLite database with the online backup API, in one step.

    One step means one read transaction on the source: a consistent snapshot
    even while other processes write (WAL lets them go on meanwhile).  The copy
    is switched to a rollback journal so that it is one self-contained file.
    """
    uri = f"file:{quote(str(source.absolute()))}?mode=ro"
    try:
        src = sqlite3.connect(uri, uri=True, timeout=15)
    except sqlite3.Error as exc:
        raise BackupFailed(f"cannot open the registry {source}: {exc}") from None
    try:
        dst = sqlite3.connect(target)
        try:
            src.execute("PRAGMA busy_timeout = 15000")
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode = DELETE").fetchall()
            dst.commit()
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupFailed(f"SQLite backup of {source} failed: {exc}") from None
    finally:
        src.close()


def write_snapshot_checkpoint(
    keyring: cp.Keyring, path: Path, identity: str, verified: Verified, digest: str, now: datetime
) -> tuple[Path, Path]:
    """Sign (registry, head, time, snapshot name and SHA-256) next to the snapshot.

    This, not the ``.sha256`` file, is what a restore trusts: a writer who doctors the
    snapshot can rewrite a checksum but cannot sign without the checkpoint key.
    """
    statement = cp.Checkpoint(identity, verified.events, verified.head, now, path.name, digest)
    armored = keyring.sign(statement)
    cp.write_private(signature_file(path), armored, replace=True)
    cp.write_private(checkpoint_file(path), statement.statement(), replace=True)
    return checkpoint_file(path), signature_file(path)


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
        temp = _private_temp(directory, name)
    except OSError as exc:
        raise UsageError(f"cannot write to backup directory {directory}: {exc.strerror}") from None
    try:
        if backend == "sqlite":
            source = sqlite_path(url)
            if source is None:
                raise UsageError("an in-memory SQLite registry cannot be backed up")
            _sqlite_snapshot(source, temp)
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
    _fsync_dir(directory)
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


# -- copy command --------------------------------------------------------------------


@dataclass(frozen=True)
class CopyFailure:
    file: str
    program: str
    exit_code: int | None
    timed_out: bool
    error: str

    def __str__(self) -> str:
        if self.timed_out:
            how = "timed out"
        elif self.exit_code is not None:
            how = f"exited {self.exit_code}"
        else:
            how = "could not run"
        tail = f": {self.error}" if self.error else ""
        return f"copy command {self.program} {how} for {self.file}{tail}"


def parse_copy_command(template: str) -> list[str]:
    """Check that a copy command template splits into words; return them."""
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise UsageError(f"the copy command does not parse: {exc}") from None
    if not words:
        raise UsageError("the copy command is empty")
    for placeholder in ("{path}", "{name}"):
        if f"'{placeholder}'" in template or f'"{placeholder}"' in template:
            raise UsageError(
                f"do not quote {placeholder} in the copy command: keyward quotes the value itself"
            )
    return words


def copy_argv(template: str, path: Path) -> list[str]:
    """The command for one file: ``{path}`` and ``{name}`` replaced by shell-quoted values."""
    parse_copy_command(template)
    filled = template.replace("{path}", shlex.quote(str(path))).replace(
        "{name}", shlex.quote(path.name)
    )
    return shlex.split(filled)


def run_copy(template: str, path: Path, timeout: float = COPY_TIMEOUT) -> CopyFailure | None:
    """Run the copy command for ``path`` (no shell); None on success."""
    argv = copy_argv(template, path)
    program = os.path.basename(argv[0])
    env = {**os.environ, "KEYWARD_BACKUP_PATH": str(path), "KEYWARD_BACKUP_NAME": path.name}
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return CopyFailure(path.name, program, None, False, exc.strerror or str(exc))
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return CopyFailure(path.name, program, None, True, f"killed after {timeout:g} s")
    if proc.returncode != 0:
        lines = [
            line.strip() for line in output.decode("utf-8", "replace").splitlines() if line.strip()
        ]
        return CopyFailure(
            path.name, program, proc.returncode, False, lines[-1][:200] if lines else ""
        )
    return None


# -- list and prune -------------------------------------------------------------------


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


# -- restore ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Contents:
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


def _sqlite_restore(source: Path, target: Path) -> None:
    """Copy the (fresh, verified) ``source`` over the target with the backup API, under its lock."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        create_private_file(target)
    except OSError as exc:
        raise UsageError(f"cannot create {target}: {exc.strerror}") from None
    src = sqlite3.connect(f"file:{quote(str(source.absolute()))}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target, timeout=15)
        try:
            dst.execute("PRAGMA busy_timeout = 15000")
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode = WAL").fetchall()
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupFailed(f"restoring into {target} failed: {exc}") from None
    finally:
        src.close()
    for candidate in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
        if candidate.exists():
            os.chmod(candidate, 0o600)


_REVISION_RE = re.compile(r"[0-9A-Za-z_]{1,32}")
SKIP_TABLES = {"alembic_version"}
"""Written by the migrations themselves, never copied from a snapshot."""


def _migrate_to(conn: Connection, revision: str) -> None:
    """Build keyward's own schema at ``revision`` (the snapshot's) on ``conn``."""
    from alembic import command
    from alembic.util import CommandError

    from keyward.registry.schema import _config

    if not _REVISION_RE.fullmatch(revision):
        raise BackupFailed("the snapshot's schema revision is malformed")
    config = _config()
    config.attributes["connection"] = conn
    try:
        command.upgrade(config, revision)
    except CommandError:
        raise BackupFailed(
            f"the snapshot is at schema {revision}, which this keyward does not know: "
            "restore it with the keyward that made it"
        ) from None


def _sqlite_fresh_copy(snapshot: Path, work: Path, revision: str) -> None:
    """Fill ``work`` (new, empty) with keyward's schema and the snapshot's table rows only.

    Triggers, views, indexes and tables keyward does not know stay behind in the
    snapshot: a trigger that un-revokes keys, added by whoever could write to the
    database, does not come back with a restore.
    """
    from keyward.registry.db import make_engine

    engine = make_engine(f"sqlite:///{work}")
    try:
        with engine.begin() as conn:
            _migrate_to(conn, revision)
    finally:
        engine.dispose()
    conn_ = sqlite3.connect(f"file:{quote(str(work.absolute()))}", uri=True)
    try:
        conn_.isolation_level = None
        conn_.execute("PRAGMA trusted_schema = OFF")
        conn_.execute("PRAGMA journal_mode = DELETE").fetchall()
        conn_.execute(
            "ATTACH DATABASE ? AS snap", (f"file:{quote(str(snapshot.absolute()))}?mode=ro",)
        )
        conn_.execute("BEGIN")
        tables = [
            row[0]
            for row in conn_.execute(
                "SELECT name FROM main.sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        for table in tables:
            if table in SKIP_TABLES:
                continue
            kind = conn_.execute(
                "SELECT type FROM snap.sqlite_master WHERE name = ?", (table,)
            ).fetchone()
            if kind is None or kind[0] != "table":
                raise BackupFailed(f"the snapshot has no table {table}: not a keyward registry")
            quoted = '"' + table.replace('"', '""') + '"'
            columns = [row[1] for row in conn_.execute(f"PRAGMA main.table_info({quoted})")]
            present = {row[1] for row in conn_.execute(f"PRAGMA snap.table_info({quoted})")}
            missing = [c for c in columns if c not in present]
            if missing:
                raise BackupFailed(f"the snapshot's table {table} lacks column {missing[0]}")
            names = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
            conn_.execute(f"DELETE FROM main.{quoted}")
            conn_.execute(f"INSERT INTO main.{quoted} ({names}) SELECT {names} FROM snap.{quoted}")
        broken = conn_.execute("PRAGMA main.foreign_key_check").fetchone()
        if broken is not None:
            raise BackupFailed(f"the snapshot's table {broken[0]} has rows that refer to nothing")
        conn_.execute("COMMIT")
        conn_.execute("DETACH DATABASE snap")
    except sqlite3.Error as exc:
        raise BackupFailed(f"copying the snapshot's rows failed: {exc}") from None
    finally:
        conn_.close()


def _sqlite_restore_fresh(
    path: Path, target: Path, checkpoint: cp.Checkpoint
) -> tuple[Verified, str]:
    """Verify the snapshot, copy its rows into a fresh schema, verify that, then put it in place."""
    verified = verify_snapshot(path, "sqlite", None, [checkpoint])
    if verified.revision is None:
        raise BackupFailed(f"snapshot {path.name} has no schema revision: not a keyward registry")
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        work = _private_temp(target.parent, target.name + ".restore")
    except OSError as exc:
        raise UsageError(f"cannot write next to {target}: {exc.strerror}") from None
    try:
        _sqlite_fresh_copy(path, work, verified.revision)
        engine = sqlite_readonly_engine(work)
        try:
            fresh = _verified(engine, "the restored copy", [checkpoint])
        finally:
            engine.dispose()
        _sqlite_restore(work, target)
    finally:
        for leftover in (work, *(Path(f"{work}{s}") for s in ("-journal", "-wal", "-shm"))):
            leftover.unlink(missing_ok=True)
    return fresh, verified.revision


_NOT_EXTENSION = "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = {} AND d.deptype = 'e')"
"""Objects of an installed extension belong to the extension, not to whoever wrote SQL."""


def _pg_clear(conn: Connection) -> None:
    """Drop every table, view, sequence, function and type in schema ``public``.

    The registry's database is keyward's alone: whatever else is there (a trigger
    function someone added) must not survive a restore.
    """
    quote_ = conn.dialect.identifier_preparer.quote
    kinds = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW",
             "f": "FOREIGN TABLE", "S": "SEQUENCE"}  # fmt: skip
    relations = conn.execute(
        text(
            "SELECT c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r','p','v','m','f','S') "
            f"AND {_NOT_EXTENSION.format('c.oid')} "
            "ORDER BY c.relkind = 'S', c.relname"
        )
    ).all()
    for name, kind in relations:
        conn.exec_driver_sql(f"DROP {kinds[kind]} IF EXISTS public.{quote_(name)} CASCADE")
    routines = conn.execute(
        text(
            "SELECT p.oid::regprocedure::text, p.prokind FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' "
            f"AND {_NOT_EXTENSION.format('p.oid')}"
        )
    ).all()
    for signature, kind in routines:
        what = {"p": "PROCEDURE", "a": "AGGREGATE"}.get(kind, "FUNCTION")
        conn.exec_driver_sql(f"DROP {what} IF EXISTS {signature} CASCADE")
    types = conn.execute(
        text(
            "SELECT t.typname, t.typtype FROM pg_type t "
            "JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname = 'public' AND (t.typtype IN ('e','d','r','m') "
            "OR (t.typtype = 'c' AND t.typrelid = 0)) "
            f"AND {_NOT_EXTENSION.format('t.oid')}"
        )
    ).all()
    for name, kind in types:
        what = "DOMAIN" if kind == "d" else "TYPE"
        conn.exec_driver_sql(f"DROP {what} IF EXISTS public.{quote_(name)} CASCADE")


def _pg_copy_rows(source: Connection, target: Connection) -> None:
    """Copy the rows of keyward's tables (as the fresh ``target`` schema has them)."""
    metadata = MetaData()
    metadata.reflect(bind=target, schema="public")
    inspector = inspect(source)
    source_tables = set(inspector.get_table_names(schema="public"))
    for table in metadata.sorted_tables:
        if table.name in SKIP_TABLES:
            continue
        if table.name not in source_tables:
            raise BackupFailed(f"the snapshot has no table {table.name}: not a keyward registry")
        present = {c["name"] for c in inspector.get_columns(table.name, schema="public")}
        missing = [c.name for c in table.columns if c.name not in present]
        if missing:
            raise BackupFailed(f"the snapshot's table {table.name} lacks column {missing[0]}")
        target.execute(table.delete())
        rows = source.execution_options(stream_results=True).execute(sa_select(table))
        while batch := rows.fetchmany(2000):
            target.execute(table.insert(), [dict(row._mapping) for row in batch])
        for column in table.columns:
            sequence = target.execute(
                text("SELECT pg_get_serial_sequence(:t, :c)"),
                {"t": f"public.{target.dialect.identifier_preparer.quote(table.name)}",
                 "c": column.name},
            ).scalar()  # fmt: skip
            if sequence is None:
                continue
            top = target.execute(sa_select(func.max(column))).scalar()
            target.execute(
                text("SELECT setval(:s, :v, :called)"),
                {"s": sequence, "v": top if top is not None else 1, "called": top is not None},
            )


def _pg_restore_fresh(path: Path, url: str, checkpoint: cp.Checkpoint) -> tuple[Verified, str]:
    """Restore the dump into a scratch database, verify it there, then copy table rows
    into a freshly migrated ``public`` schema of the target, in one transaction."""
    from keyward.registry.verify import verify_session

    with temporary_database(url) as scratch_url:
        pg_restore(path, scratch_url, clean=False)
        scratch = create_engine(scratch_url)
        target = create_engine(url)
        try:
            verified = _verified(scratch, f"snapshot {path.name}", [checkpoint])
            if verified.revision is None:
                raise BackupFailed(
                    f"snapshot {path.name} has no schema revision: not a keyward registry"
                )
            with scratch.connect() as source, target.begin() as conn:
                source.exec_driver_sql("SET row_security = off")
                _pg_clear(conn)
                _migrate_to(conn, verified.revision)
                _pg_copy_rows(source, conn)
                with Session(bind=conn) as session:
                    result = verify_session(session, [checkpoint])
                if result is None or result[2] is not None:
                    problem = result[2] if result else "no chain head"
                    raise AuditChainBroken(
                        f"the restored copy: audit chain broken at {problem}; nothing was restored"
                    )
                fresh = Verified(result[0], result[1], verified.revision)
        except DBAPIError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise BackupFailed(f"restoring into the registry failed: {first}") from None
        finally:
            scratch.dispose()
            target.dispose()
    return fresh, verified.revision


def authenticate_snapshot(path: Path, keyring: cp.Keyring) -> tuple[str, cp.Checkpoint]:
    """(sha256, signed checkpoint) of a snapshot whose checkpoint a trusted key signed.

    Refuses (UsageError, nothing changed) a missing or unsigned checkpoint and a
    snapshot whose SHA-256 is not the signed one, whatever its ``.sha256`` file says.
    """
    digest = check_checksum(path)
    if not checkpoint_file(path).exists():
        raise UsageError(
            f"no signed checkpoint {checkpoint_file(path).name} next to {path}; refusing an "
            "unauthenticated snapshot; nothing was restored"
        )
    try:
        signed = cp.read_signed(keyring, checkpoint_file(path), f"snapshot {path.name}")
    except AuditChainBroken as exc:
        raise UsageError(f"{exc.message}; nothing was restored") from None
    if signed.snapshot_sha256 != digest:
        raise UsageError(
            f"{path} is not the snapshot its signed checkpoint names (sha256 {digest[:16]}..., "
            f"signed {(signed.snapshot_sha256 or 'none')[:16]}...): the snapshot and its "
            ".sha256 file were changed; nothing was restored"
        )
    return digest, signed


@dataclass(frozen=True)
class Restored:
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
        fresh, revision = _sqlite_restore_fresh(path, target, signed)
    else:
        fresh, revision = _pg_restore_fresh(path, url, signed)
    store = cp.Store(keyring.local(), cp.registry_identity(url))
    retired = store.retire(now)
    written = store.write(fresh.events, fresh.head, now)
    return Restored(digest, kind, replaced, fresh.events, fresh.head, revision, written, retired)


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision of a registry (None if it has none)."""
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    except DBAPIError:
        return None
    return str(row[0]) if row else None
