"""The seam between a round and the hosts it reaches: what the agent asks of a host.

A round (``keyward.agent.reconcile``) and the daemon need exactly this of a managed host: open
a connection (which greets the helper), read a set of authorized_keys files, write some with
compare-and-swap and read-back (one request for all of a host's files), read sshd's new log
lines and its effective configuration, and close. ``HostTransport`` says that as a protocol
with typed replies, so that two implementations fit behind it: ``keyward.agent.connection``
over SSH to the real helper (``remote.py``), and ``keyward.testing.fakehost``, an in-memory
host for fast tests of rounds and their failures.

Contract: a problem with one file is a reply (``error`` set); a problem with the host (it
cannot be reached, does not answer in time, answers nonsense) raises ``HostError`` (over
SSH, a connection lost in the middle of a request may also surface as ``OSError`` or an
asyncssh error, as before: the round's ``HOST_FAILURES`` names them).

The readers at the end turn the helper's JSON replies (see ``remote.py``) into these
types; both implementations use them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from keyward.inventory.model import Host
from keyward.logins import LogLine
from keyward.plan import FileState

LogSource = Literal["journal", "file"]
"""Where the helper read sshd's lines from: the journal (cursor) or a log file (offset)."""


@dataclass(frozen=True)
class HelperError:
    """A refusal with the helper's code (``changed``, ``symlink``, ``timeout``, ...)."""

    code: str
    message: str

    @property
    def text(self) -> str:
        return self.message or self.code


class FileRead(NamedTuple):
    """One managed file as the host read it (remote.py ``read``).

    What the agent plans from; the helper also reports owner, mode, link count and whether
    the directories are safe for sshd, which nothing here uses (the fake models them).  A
    named tuple: one is made per managed file per round, and it is built several times
    faster than a frozen dataclass.
    """

    path: str | None
    state: FileState
    content: bytes | None = None
    sha256: str | None = None
    # Already has the owner and mode a write would give it.
    owner_ok: bool = True
    # The problem lies only in the final directory entry: a write with "*" replaces it.
    replaceable: bool = False
    error: HelperError | None = None


@dataclass(frozen=True)
class WriteResult:
    """The outcome of one compare-and-swap write and its read-back (remote.py ``write``).

    ``sha256`` is that of what the host read back after the rename (on success), or of
    what it found before writing when the write was refused.
    """

    path: str | None
    sha256: str | None = None
    fixed_dir_mode: bool = False  # the file's directory was group/other-writable: now 0700
    error: HelperError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class WriteRequest(NamedTuple):
    """One file of a ``write_many``: replace it with ``content`` if it still is
    ``expect_sha256`` (None: absent; ``"*"``: anything)."""

    account: str
    pattern: str
    content: bytes
    expect_sha256: str | None


@dataclass(frozen=True)
class AuthLogRead:
    """sshd's log lines since the saved position (remote.py ``auth_log``).

    ``position`` is the helper's own for a file (``{"inode", "offset"}``), opaque to the
    agent: it is stored and sent back next time.
    """

    source: LogSource | None
    lines: tuple[LogLine, ...] = ()
    cursor: str | None = None
    position: dict[str, Any] | None = None
    path: str | None = None
    error: HelperError | None = None


@dataclass(frozen=True)
class SshdConfig:
    """``sshd -T`` as the host ran it: lowercased setting -> value (remote.py ``sshd_config``)."""

    settings: Mapping[str, str] = field(default_factory=dict)
    error: HelperError | None = None


class HostTransport(Protocol):
    """One open connection to a managed host, with its helper ready to answer."""

    host: Host

    async def read(self, files: Sequence[tuple[str, str]]) -> list[FileRead]:
        """Read ``(account, pattern)`` files; one reply each, in the same order."""
        ...

    async def write(
        self, account: str, pattern: str, content: bytes, expect_sha256: str | None
    ) -> WriteResult:
        """Replace the file if it still is ``expect_sha256`` (None: absent; ``"*"``: anything),
        creating its directory in the home if need be, then read it back."""
        ...

    async def write_many(self, files: Sequence[WriteRequest]) -> list[WriteResult]:
        """``write`` for each file, in order, in one request; one reply each, in the same order.

        Each file is its own compare-and-swap: one refused does not stop or undo the others.
        A request the host refuses as a whole is every file's error."""
        ...

    async def auth_log(
        self,
        source: str,
        *,
        cursor: str | None,
        position: Mapping[str, Any] | None,
        match: Sequence[str],
    ) -> AuthLogRead:
        """sshd's lines containing one of ``match`` since ``cursor`` or ``position``."""
        ...

    async def sshd_config(self, user: str, config: str | None) -> SshdConfig:
        """sshd's effective configuration for ``user`` (from ``config``, else the default)."""
        ...

    async def close(self) -> None:
        """Say goodbye and disconnect; never raises."""
        ...

    def abort(self) -> None:
        """Drop the connection now (a request over it failed); ``wait_closed`` returns."""
        ...

    async def wait_closed(self) -> None:
        """Return once the connection is gone, whoever closed it."""
        ...


class Connector(Protocol):
    """Opens connections: SSH ``Credentials`` for real hosts, a fake fleet in tests."""

    async def open(self, host: Host, *, keepalive: float = 0) -> HostTransport:
        """Connect to ``host`` and greet its helper; raises ``HostError`` if it cannot."""
        ...


# -- the helper's JSON replies, read into the types above

FILE_STATES: frozenset[FileState] = frozenset({"present", "missing", "error"})
LOG_SOURCES: frozenset[LogSource] = frozenset({"journal", "file"})


def _helper_error(raw: object) -> HelperError | None:
    """The helper's ``{"code", "message"}``, or None when there is none."""
    if not isinstance(raw, dict) or not raw:
        return None
    code = raw.get("code")
    message = raw.get("message")
    return HelperError(str(code) if code else "", str(message) if message else "")


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def file_read(raw: object) -> FileRead:
    """One entry of a ``read`` reply, typed; ``ValueError`` if it is not one (or its content
    is not base64).

    Runs once per managed file per round (the daemon's verification reads every file):
    kept to a few dictionary lookups.
    """
    if not isinstance(raw, dict):
        raise ValueError("a file entry is not an object")
    error = _helper_error(raw.get("error"))
    state = raw.get("state", "error")
    content_b64 = raw.get("content_b64")
    path = raw.get("path")
    sha = raw.get("sha256")
    replaceable = raw.get("replaceable")
    if replaceable is None:  # a helper that does not say: the two codes that always are
        replaceable = error is not None and error.code in ("hardlink", "too_large")
    return FileRead(
        path if isinstance(path, str) else None,
        state if state in FILE_STATES else "error",
        None if content_b64 is None else base64.b64decode(content_b64, validate=True),
        sha if isinstance(sha, str) else None,
        bool(raw.get("owner_ok", True)),
        bool(replaceable),
        error,
    )


def write_result(raw: dict[str, Any]) -> WriteResult:
    """A ``write`` reply, typed: ``error`` is set exactly when the helper did not say ok."""
    error = None
    if not raw.get("ok"):
        error = _helper_error(raw.get("error")) or HelperError("", "write failed")
    return WriteResult(
        path=_str_or_none(raw.get("path")),
        sha256=_str_or_none(raw.get("sha256")),
        fixed_dir_mode=bool(raw.get("fixed_dir_mode", False)),
        error=error,
    )


def write_results(raw: dict[str, Any], count: int) -> list[WriteResult]:
    """A ``write_many`` reply for ``count`` files, typed: a refusal of the whole request is
    each file's error; ``ValueError`` when it does not answer every file."""
    if not raw.get("ok"):
        return [write_result(raw)] * count
    files = raw.get("files")
    if (
        not isinstance(files, list)
        or len(files) != count
        or not all(isinstance(f, dict) for f in files)
    ):
        raise ValueError("the answer to write_many does not list every file")
    return [write_result(f) for f in files]


def auth_log_read(raw: dict[str, Any]) -> AuthLogRead:
    """An ``auth_log`` reply, typed; a source the agent does not know is an error reply.

    ``ValueError`` when the lines are not a list: the transport makes that the host's
    ``HostProtocolError``.
    """
    if not raw.get("ok"):
        error = _helper_error(raw.get("error")) or HelperError("", "auth log unreadable")
        return AuthLogRead(None, error=error)
    source = raw.get("source")
    if source not in LOG_SOURCES:
        return AuthLogRead(None, error=HelperError("bad_reply", f"unknown log source {source!r}"))
    items = raw.get("lines", [])
    if not isinstance(items, list):
        raise ValueError("the answer to auth_log has no list of lines")
    lines = tuple(
        LogLine(
            str(item.get("text", "")),
            item["ts"] if isinstance(item.get("ts"), int | float) else None,
            _str_or_none(item.get("pos")),
        )
        for item in items
        if isinstance(item, dict)
    )
    position = raw.get("position")
    return AuthLogRead(
        source,
        lines,
        cursor=_str_or_none(raw.get("cursor")),
        position=position if isinstance(position, dict) else None,
        path=_str_or_none(raw.get("path")),
    )


def sshd_config_read(raw: dict[str, Any]) -> SshdConfig:
    """An ``sshd_config`` reply, typed; ``ValueError`` when its settings are not a mapping."""
    if not raw.get("ok"):
        return SshdConfig(error=_helper_error(raw.get("error")) or HelperError("", ""))
    settings = raw.get("settings") or {}
    if not isinstance(settings, dict):
        raise ValueError("the answer to sshd_config has no settings")
    return SshdConfig({str(k): str(v) for k, v in settings.items()})
