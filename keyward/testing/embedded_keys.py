"""Which authorized_keys lines the embedded SSH servers honour: sshd's reading, for asyncssh.

The embedded fleet must accept exactly what a real ``sshd`` would from the same file, read
again on every authentication attempt:

* lines are parsed the way sshd reads them (``keyward.authorized_keys``); a line sshd would
  skip is skipped, and so is a line whose ``expiry-time`` is past or unreadable: asyncssh
  2.x does not know that option and would otherwise honour an expired key;
* the remaining lines go through ``asyncssh.import_authorized_keys``, so asyncssh enforces
  ``from=``, ``command=``, ``restrict`` and the ``no-*-forwarding`` / ``no-pty`` flags; a
  line asyncssh cannot read is dropped (fail closed).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh

from keyward.authorized_keys import parse_authorized_keys

_EXPIRY_RE = re.compile(r"(\d{8}|\d{12}|\d{14})([zZ]?)")


def parse_expiry_time(value: str) -> datetime | None:
    """An ``expiry-time`` value as sshd reads it (``YYYYMMDD[HHMM[SS]][Z]``), or None if invalid.

    Without ``Z`` the time is local, as in sshd.
    """
    match = _EXPIRY_RE.fullmatch(value)
    if match is None:
        return None
    digits = match.group(1).ljust(14, "0")
    try:
        naive = datetime.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    if match.group(2):
        return naive.replace(tzinfo=UTC)
    return naive.astimezone()


def _expiry_values(options: tuple[str, ...]) -> list[str]:
    values: list[str] = []
    for option in options:
        name, sep, value = option.partition("=")
        if sep and name.strip().lower() == "expiry-time":
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            values.append(value)
    return values


def effective_authorized_keys(data: bytes, now: datetime | None = None) -> list[str]:
    """The lines of an authorized_keys file sshd would honour at ``now``.

    Lines sshd skips (no key, bad options) are dropped, as are lines with an
    ``expiry-time`` that is past or cannot be read (sshd refuses those too).
    """
    when = now or datetime.now(UTC)
    raw_lines = data.split(b"\n")
    kept: list[str] = []
    for line in parse_authorized_keys(data):
        if line.key is None:
            continue
        expiries = [parse_expiry_time(v) for v in _expiry_values(line.options)]
        if any(e is None or e < when for e in expiries):
            continue
        raw = raw_lines[line.lineno - 1].split(b"\0", 1)[0]
        kept.append(raw.decode("utf-8", errors="replace").strip())
    return kept


def load_authorized_keys(path: Path) -> asyncssh.SSHAuthorizedKeys | None:
    """The honoured lines of ``path`` as asyncssh authorized keys; None if there are none."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    good: list[str] = []
    for line in effective_authorized_keys(data):
        try:
            asyncssh.import_authorized_keys(line)
        except (ValueError, asyncssh.KeyImportError):
            continue  # asyncssh cannot honour this line's options: fail closed
        good.append(line)
    if not good:
        return None
    return asyncssh.import_authorized_keys("\n".join(good) + "\n")


class FileAuthorizedKeys(asyncssh.SSHAuthorizedKeys):
    """Authorized keys that re-read their file on every validation (each auth attempt)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path

    def validate(
        self,
        key: asyncssh.SSHKey,
        client_host: str,
        client_addr: str,
        cert_principals: Any = None,
        ca: bool = False,
    ) -> Any:
        if ca:
            return None
        current = load_authorized_keys(self._path)
        if current is None:
            return None
        return current.validate(key, client_host, client_addr, cert_principals, ca=False)

    def validate_x509(self, cert: Any, client_host: str, client_addr: str) -> Any:
        return None, None


__all__ = [
    "FileAuthorizedKeys",
    "effective_authorized_keys",
    "load_authorized_keys",
    "parse_expiry_time",
]
