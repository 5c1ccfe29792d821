"""Signed checkpoints of the audit chain head, kept outside the registry.

Why: the hash chain shows an edit to a past event only to someone who knows what
the head should be.  Whoever can write to the database can delete the newest
events and move the head back, or rewrite an old event and re-hash every later
one, and the chain still verifies.  A *checkpoint* is the head (seq, hash), the
time and the registry's identity, signed in OpenSSH's SSHSIG format (namespace
``keyward-checkpoint``) with an Ed25519 key that lives in a directory outside the
registry.  A database writer can neither forge a checkpoint nor (without access
to that directory) remove one, so ``audit verify`` can say "events 8 to 17 were
deleted" or "the chain was rewritten between event 1 and event 17".

What is left open: events written after the newest checkpoint can still be
deleted or rewritten unnoticed, so checkpoints are written often (every
``audit verify``, ``audit checkpoint`` and ``backup create``; a timer runs
``audit checkpoint``).

The checkpoint directory (``--checkpoint-dir``, ``KEYWARD_CHECKPOINT_DIR``, default
``<state dir>/checkpoints``: ``/var/lib/keyward/checkpoints`` for root) is 0700,
every file in it 0600 from its first byte::

    checkpoint_ed25519, checkpoint_ed25519.pub     the signing key, made on first use
    registry-<16 hex>/<seq>.checkpoint(.sig)       one registry's checkpoints
    registry-<16 hex>.retired-<time>-<random>/      checkpoints set aside by a reset/restore

What verification trusts is the public half of that private key (never a key
read from the registry, never the ``.pub`` file), or the keys given with
``--trusted-key`` / ``KEYWARD_CHECKPOINT_TRUSTED_KEY`` (an auditor's pinned copy).
Anyone can check a checkpoint with OpenSSH::

    echo "keyward-checkpoint $(cat checkpoint_ed25519.pub)" > allowed_signers
    ssh-keygen -Y verify -f allowed_signers -I keyward-checkpoint -n keyward-checkpoint \\
        -s 000000000017.checkpoint.sig < 000000000017.checkpoint
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy.engine import make_url

from keyward.errors import AuditChainBroken, KeywardError, ProofError, UsageError
from keyward.keys import ED25519, PublicKey, decode_key
from keyward.registry.audit import ChainProblem, ChainRecord
from keyward.registry.db import private_umask, sqlite_path
from keyward.registry.location import default_state_dir
from keyward.sshsig import sign_sshsig, verify_sshsig

NAMESPACE = "keyward-checkpoint"
"""SSHSIG namespace: a checkpoint signature is never valid as a proof or a git signature."""
SIGNER_ID = "keyward-checkpoint"
"""The principal to use in an ``allowed_signers`` file for ``ssh-keygen -Y verify``."""
DIR_ENV = "KEYWARD_CHECKPOINT_DIR"
TRUSTED_ENV = "KEYWARD_CHECKPOINT_TRUSTED_KEY"
KEY_NAME = "checkpoint_ed25519"
HEADER = "keyward audit checkpoint"
SUFFIX = ".checkpoint"
SIG_SUFFIX = ".sig"
MAX_FILE_BYTES = 16 * 1024
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FILE_RE = re.compile(r"^(\d{12})\.checkpoint$")
_SNAPSHOT_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime(TIME_FORMAT)


# -- the checkpoint statement --------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that registry ``registry`` had ``seq`` events ending in ``head``.

    A snapshot's checkpoint also names the snapshot file and its SHA-256, which is
    what authenticates the snapshot (a ``.sha256`` file anyone can rewrite does not).
    """

    registry: str
    seq: int
    head: str
    at: datetime
    snapshot: str | None = None
    snapshot_sha256: str | None = None
    path: Path | None = field(default=None, compare=False)

    @property
    def when(self) -> str:
        return _when(self.at)

    def statement(self) -> bytes:
        """The exact signed bytes: short ``key: value`` lines a person can read."""
        lines = [
            HEADER,
            f"registry: {self.registry}",
            f"seq: {self.seq}",
            f"head: {self.head}",
            f"at: {self.when}",
        ]
        if self.snapshot is not None:
            lines += [f"snapshot: {self.snapshot}", f"snapshot-sha256: {self.snapshot_sha256}"]
        return ("\n".join(lines) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, data: bytes, path: Path | None = None) -> Checkpoint:
        """Parse a statement strictly; ValueError names what is wrong."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not UTF-8 text") from None
        lines = text.split("\n")
        if lines[-1] != "" or lines[0] != HEADER:
            raise ValueError("not a keyward checkpoint")
        fields: dict[str, str] = {}
        for line in lines[1:-1]:
            name, sep, value = line.partition(": ")
            if not sep or name in fields or not value.isprintable():
                raise ValueError(f"bad line {line[:40]!r}")
            fields[name] = value
        allowed = {"registry", "seq", "head", "at", "snapshot", "snapshot-sha256"}
        if set(fields) - allowed or not {"registry", "seq", "head", "at"} <= set(fields):
            raise ValueError("unexpected or missing fields")
        if not fields["seq"].isdigit() or not _HEX64.fullmatch(fields["head"]):
            raise ValueError("bad seq or head")
        at = datetime.strptime(fields["at"], TIME_FORMAT).replace(tzinfo=UTC)
        snapshot = fields.get("snapshot")
        digest = fields.get("snapshot-sha256")
        if (snapshot is None) != (digest is None):
            raise ValueError("snapshot without its sha256")
        if snapshot is not None and (
            not _SNAPSHOT_RE.fullmatch(snapshot) or not _HEX64.fullmatch(digest or "")
        ):
            raise ValueError("bad snapshot name or sha256")
        return cls(
            fields["registry"], int(fields["seq"]), fields["head"], at, snapshot, digest, path
        )


# -- files -----------------------------------------------------------------------------


def default_dir(env: Mapping[str, str], euid: int) -> Path:
    """``KEYWARD_CHECKPOINT_DIR``, else ``<state dir>/checkpoints``."""
    if env.get(DIR_ENV):
        return Path(env[DIR_ENV])
    return default_state_dir(env, euid) / "checkpoints"


def resolve_dir(option: str | None) -> Path:
    if option:
        return Path(option).expanduser().absolute()
    return default_dir(dict(os.environ), os.geteuid()).absolute()


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_private(path: Path, data: bytes, *, replace: bool = False) -> bool:
    """Write ``path`` whole, mode 0600 from its first byte, via a temporary name.

    Without ``replace`` an existing ``path`` is kept (False is returned): two
    processes creating the same file never see each other's half-written one.
    """
    temp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with private_umask():
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                return False
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def read_small(path: Path) -> bytes:
    """A checkpoint-sized file, never through a symlink; OSError/ValueError if not."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
    return data


def _dir_error(directory: Path, exc: OSError) -> UsageError:
    return UsageError(
        f"cannot use the checkpoint directory {directory}: {exc.strerror or exc} "
        f"(choose one with --checkpoint-dir or {DIR_ENV})"
    )


def registry_identity(url: str) -> str:
    """Which registry a checkpoint speaks for: its real file path, or server and database.

    No user name or password: the same database reached as another role is the same
    registry.
    """
    path = sqlite_path(url)
    if path is not None:
        return f"sqlite:{os.path.realpath(path)}"
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return "sqlite::memory:"
    host = parsed.host or parsed.query.get("host") or "localhost"
    if not isinstance(host, str):
        host = ",".join(host)
    return f"{parsed.get_backend_name()}://{host}:{parsed.port or 5432}/{parsed.database or ''}"


# -- keys ------------------------------------------------------------------------------


def _public_of(private: ed25519.Ed25519PrivateKey) -> PublicKey:
    line = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return decode_key(ED25519, base64.b64decode(line.split()[1]), SIGNER_ID)


def public_line(key: PublicKey) -> str:
    return f"{key.key_type} {base64.b64encode(key.blob).decode('ascii')} {SIGNER_ID}"


def parse_trusted(path: Path) -> list[PublicKey]:
    """Public keys from a file: OpenSSH lines, or ``allowed_signers`` lines; # comments."""
    try:
        text = read_small(path).decode("utf-8")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise UsageError(f"cannot read trusted checkpoint key {path}: {detail}") from None
    keys = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] != ED25519 and len(words) >= 3 and words[1] == ED25519:
            words = words[1:]  # allowed_signers: principal first
        if len(words) < 2 or words[0] != ED25519:
            raise UsageError(f"{path}: checkpoint keys are ssh-ed25519 public keys")
        try:
            keys.append(decode_key(ED25519, base64.b64decode(words[1], validate=True)))
        except (ValueError, KeywardError):
            raise UsageError(f"{path}: not a valid ssh-ed25519 public key") from None
    if not keys:
        raise UsageError(f"{path} holds no public key")
    return keys


@dataclass(frozen=True)
class Keyring:
    """The signing key of one checkpoint directory and the keys verification trusts."""

    directory: Path
    signing_pem: bytes | None
    signing_key: PublicKey | None
    trusted: tuple[PublicKey, ...]
    pinned: bool

    def sign(self, checkpoint: Checkpoint) -> bytes:
        if self.signing_pem is None or self.signing_key is None:
            raise UsageError(f"no checkpoint key in {self.directory}")
        if self.signing_key not in self.trusted:
            raise UsageError(
                f"the checkpoint key in {self.directory} ({self.signing_key.fingerprint}) is "
                "not one of the trusted keys given: refusing to sign checkpoints with it"
            )
        return sign_sshsig(self.signing_pem, None, checkpoint.statement(), NAMESPACE)

    def verifies(self, statement: bytes, armored: bytes) -> bool:
        for key in self.trusted:
            with contextlib.suppress(ProofError):
                verify_sshsig(armored, statement, key, NAMESPACE)
                return True
        return False

    def local(self) -> Keyring:
        """This directory's key, trusting only itself: for a registry's own checkpoints
        after ``--trusted-key`` authenticated a snapshot made elsewhere."""
        own = (self.signing_key,) if self.signing_key is not None else ()
        return Keyring(self.directory, self.signing_pem, self.signing_key, own, False)

    def describe_trust(self) -> str:
        return ", ".join(k.fingerprint for k in self.trusted) or "(none)"


def _load_private(path: Path) -> tuple[bytes, ed25519.Ed25519PrivateKey]:
    data = read_small(path)
    try:
        key = serialization.load_ssh_private_key(data, None)
    except (ValueError, TypeError, KeywardError):
        raise UsageError(f"{path} is not an unencrypted OpenSSH private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 key")
    return data, key


def open_keyring(
    directory: Path, trusted_files: Sequence[str] = (), *, create: bool = True
) -> Keyring:
    """The directory's key (made, 0600, on first use when ``create``) and what is trusted.

    Trusted is what ``trusted_files`` hold when given (a copy pinned elsewhere), else the
    public half of the directory's own private key.
    """
    path = directory / KEY_NAME
    pem: bytes | None = None
    signing: PublicKey | None = None
    try:
        if create:
            with private_umask():
                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if create and not path.exists():
            private = ed25519.Ed25519PrivateKey.generate()
            fresh = private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
            write_private(path, fresh)  # a concurrent first use: one key wins, both use it
            write_private(
                path.with_name(KEY_NAME + ".pub"),
                (public_line(_public_of(private)) + "\n").encode(),
            )
        if path.exists() or create:
            pem, private_key = _load_private(path)
            signing = _public_of(private_key)
    except OSError as exc:
        raise _dir_error(directory, exc) from None
    except ValueError as exc:
        raise UsageError(f"cannot read the checkpoint key {path}: {exc}") from None
    pinned: list[PublicKey] = []
    for name in trusted_files:
        pinned += parse_trusted(Path(name).expanduser())
    trusted = tuple(pinned) if pinned else ((signing,) if signing is not None else ())
    return Keyring(directory, pem, signing, trusted, bool(pinned))


# -- one registry's checkpoints ---------------------------------------------------------


def label(identity: str) -> str:
    return "registry-" + hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]


def read_signed(keyring: Keyring, path: Path, what: str) -> Checkpoint:
    """Read ``path`` and ``path.sig``; AuditChainBroken unless a trusted key signed it."""
    sig_path = path.with_name(path.name + SIG_SUFFIX)
    try:
        statement = read_small(path)
        armored = read_small(sig_path)
    except FileNotFoundError as exc:
        # The statement was listed, so its signature was removed: tampering, not bad input.
        raise AuditChainBroken(f"{what}: {exc.filename} is missing") from None
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise UsageError(f"{what}: cannot read {path}: {detail}") from None
    if not keyring.trusted:
        raise UsageError(
            f"{what}: no trusted checkpoint key to check {path.name} with (no key in "
            f"{keyring.directory}); pass --trusted-key with the signing machine's "
            f"{KEY_NAME}.pub"
        )
    if not keyring.verifies(statement, armored):
        hint = "" if keyring.pinned else f"; signed elsewhere? pass --trusted-key {KEY_NAME}.pub"
        raise AuditChainBroken(
            f"{what}: {path.name} is not signed by a trusted checkpoint key "
            f"({keyring.describe_trust()}){hint}"
        )
    try:
        return Checkpoint.parse(statement, path)
    except ValueError as exc:
        raise AuditChainBroken(f"{what}: {path.name} is signed but malformed: {exc}") from None


class Store:
    """The checkpoints of one registry in a checkpoint directory."""

    def __init__(self, keyring: Keyring, identity: str) -> None:
        self.keyring = keyring
        self.identity = identity
        self.directory = keyring.directory / label(identity)

    def load(self) -> list[Checkpoint]:
        """Every checkpoint of this registry, oldest first, each signature checked."""
        try:
            names = sorted(p.name for p in self.directory.iterdir() if _FILE_RE.match(p.name))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _dir_error(self.directory, exc) from None
        found = []
        for name in names:
            checkpoint = read_signed(self.keyring, self.directory / name, "checkpoint")
            if checkpoint.registry != self.identity or f"{checkpoint.seq:012d}" != name[:12]:
                raise AuditChainBroken(
                    f"checkpoint {self.directory / name} speaks for {checkpoint.registry} "
                    f"event {checkpoint.seq}, not for this file's place: it was moved here"
                )
            found.append(checkpoint)
        return found

    def write(self, seq: int, head: str, at: datetime) -> Checkpoint:
        """Sign and store a checkpoint of (seq, head); an existing one for ``seq`` is kept."""
        checkpoint = Checkpoint(self.identity, seq, head, at)
        armored = self.keyring.sign(checkpoint)
        path = self.directory / f"{seq:012d}{SUFFIX}"
        try:
            with private_umask():
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self._locked():
                if path.exists():  # another process checkpointed the same head meanwhile
                    return Checkpoint.parse(read_small(path), path)
                # The signature first: a statement is only ever listed with its signature.
                write_private(path.with_name(path.name + SIG_SUFFIX), armored, replace=True)
                write_private(path, checkpoint.statement())
        except OSError as exc:
            raise _dir_error(self.directory, exc) from None
        return Checkpoint(self.identity, seq, head, at, path=path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers of this registry's checkpoints (a statement and its signature
        must come from the same writer)."""
        with private_umask():
            fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def retire(self, now: datetime) -> Path | None:
        """Set this registry's checkpoints aside (a restore or a reset); where they went."""
        if not self.directory.exists():
            return None
        stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.directory.with_name(
            f"{self.directory.name}.retired-{stamp}-{uuid.uuid4().hex[:6]}"
        )
        try:
            os.rename(self.directory, target)
        except OSError as exc:
            raise _dir_error(self.directory, exc) from None
        return target


# -- comparing a chain with checkpoints ----------------------------------------------------


class Watch:
    """Notes the hashes of checkpointed events while the chain is walked once."""

    def __init__(self, checkpoints: Iterable[Checkpoint]) -> None:
        self.checkpoints = sorted(checkpoints, key=lambda c: c.seq)
        self._wanted = {c.seq for c in self.checkpoints}
        self.seen: dict[int, str] = {}

    def tap(self, records: Iterable[ChainRecord]) -> Iterator[ChainRecord]:
        for record in records:
            if record.seq in self._wanted:
                self.seen[record.seq] = record.hash
            yield record

    def problem(self, head_seq: int) -> ChainProblem | None:
        return compare(self.checkpoints, self.seen, head_seq)


def compare(
    checkpoints: Sequence[Checkpoint], seen: Mapping[int, str], head_seq: int
) -> ChainProblem | None:
    """The first disagreement between a (self-consistent) chain and its checkpoints.

    Checkpoints oldest first: the newest one that still matches bounds where a rewrite
    begins, the first that does not bounds where it ends.
    """
    matched: Checkpoint | None = None
    for checkpoint in sorted(checkpoints, key=lambda c: c.seq):
        if checkpoint.seq == 0:
            continue  # the empty chain: nothing to compare
        if checkpoint.seq > head_seq:
            first = head_seq + 1
            gone = (
                f"event {first} was deleted"
                if first == checkpoint.seq
                else f"events {first} to {checkpoint.seq} were deleted"
            )
            return ChainProblem(
                first,
                f"missing: {gone} (the head is at {head_seq}, the checkpoint signed "
                f"{checkpoint.when} is at {checkpoint.seq})",
            )
        got = seen.get(checkpoint.seq)
        if got != checkpoint.head:
            start = matched.seq + 1 if matched is not None else 1
            return ChainProblem(
                checkpoint.seq,
                f"hash differs from the checkpoint signed {checkpoint.when}: the chain was "
                f"rewritten between event {start} and event {checkpoint.seq}",
            )
        matched = checkpoint
    return None
