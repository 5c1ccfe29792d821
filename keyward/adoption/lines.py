"""One authorized_keys file as an adoption scan records it: sightings and unhonoured lines.

Parsed with ``keyward.authorized_keys`` (sshd-faithful), so a line is a key exactly when
sshd would honour it; every other line is kept as an ``Unhonoured`` with sshd's reason
(never its content), and nothing in a file can make the scan fail. Each distinct content
is parsed once (``plan.parse_cached``, as a round does): hosts with the same access hold
byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyward.desired import COMMENT_PREFIX
from keyward.plan import parse_cached


@dataclass(frozen=True)
class Where:
    """One managed file: a pattern of one account on one host, and the path it resolved to."""

    host: str
    account: str
    pattern: str
    path: str | None


@dataclass(frozen=True)
class Sighting:
    """One key line found in a file: the key, the line's options and comment, and where."""

    where: Where
    lineno: int
    fingerprint: str
    key_type: str
    bits: int
    blob: bytes
    options: tuple[str, ...]
    comment: str

    @property
    def written_by_keyward(self) -> bool:
        """A line keyward rendered (its comment is ``keyward:OWNER:...``)."""
        return self.comment.startswith(COMMENT_PREFIX)


@dataclass(frozen=True)
class Unhonoured:
    """A line sshd skips: where it is and why (in sshd's words), never what it says."""

    where: Where
    lineno: int
    reason: str


def read_file(where: Where, content: bytes) -> tuple[list[Sighting], list[Unhonoured]]:
    """The key lines and the unhonoured lines of one file's content; never raises."""
    sightings: list[Sighting] = []
    skipped: list[Unhonoured] = []
    for line in parse_cached(content):
        if line.key is None:
            skipped.append(Unhonoured(where, line.lineno, line.error or "not a key line"))
            continue
        key = line.key
        sightings.append(
            Sighting(
                where,
                line.lineno,
                key.fingerprint,
                key.key_type,
                key.bits,
                key.blob,
                line.options,
                line.comment,
            )
        )
    return sightings, skipped


@dataclass(frozen=True)
class HostScan:
    """One host as a scan read it: its key lines, unhonoured lines and unreadable files.

    ``error`` is set when the host could not be read at all (then nothing else is).
    """

    host: str
    environment: str
    mode: str
    sightings: tuple[Sighting, ...] = ()
    unhonoured: tuple[Unhonoured, ...] = ()
    file_errors: tuple[tuple[str, str, str], ...] = ()  # (account, path or pattern, why)
    files: int = 0
    error: str | None = None

    @property
    def complete(self) -> bool:
        """Every managed file was read (absent files count as read: they hold nothing)."""
        return self.error is None and not self.file_errors
