"""Turning sshd's log lines into login events, and login events into alerts.

Pure functions: text and plain values in, frozen values out.  With
``LogLevel VERBOSE`` sshd names the key behind every login::

    Accepted publickey for deploy from 203.0.113.7 port 51702 ssh2: ED25519 SHA256:...
    Failed publickey for deploy from 203.0.113.7 port 51708 ssh2: ED25519 SHA256:...
    Invalid user admin from 203.0.113.9 port 40022
    Disconnected from user deploy 203.0.113.7 port 51702

and keyward knows whose key each fingerprint is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from keyward.inventory.model import Inventory

Outcome = Literal["accepted", "failed", "disconnected", "invalid_user"]

_ADDR = r"(?P<addr>[0-9A-Fa-f:.]+)"
# An unauthenticated client chooses the user name that sshd logs after "Invalid user" (up
# to 100 printable characters, spaces included), so text that looks like a login can
# appear inside another line. Every pattern is therefore matched only at the start of
# sshd's message, and a name that may contain spaces is taken greedily, so the address,
# port and fingerprint come from the end of the line that sshd wrote.
# (outcome, the literal the message starts with, the pattern)
_PATTERNS: tuple[tuple[Outcome, str, re.Pattern[str]], ...] = (
    (
        "accepted",
        "Accepted publickey for ",
        re.compile(
            r"Accepted publickey for (?P<user>\S+) from "
            + _ADDR
            + r" port (?P<port>\d+) ssh2: \S+ (?P<fp>SHA256:[A-Za-z0-9+/]{43})"
        ),
    ),
    (
        "failed",
        "Failed publickey for ",
        re.compile(
            r"Failed publickey for (?:invalid user (?P<invalid>.*)|(?P<user>\S+)) from "
            + _ADDR
            + r" port (?P<port>\d+) ssh2: \S+ (?P<fp>SHA256:[A-Za-z0-9+/]{43})(?(invalid)$)"
        ),
    ),
    (
        "invalid_user",
        "Invalid user ",
        re.compile(
            r"Invalid user (?P<invalid>.*) from " + _ADDR + r" port (?P<port>\d+)(?: \[preauth\])?$"
        ),
    ),
    (
        "disconnected",
        "Disconnected from user ",
        re.compile(r"Disconnected from user (?P<user>\S+) " + _ADDR + r" port (?P<port>\d+)"),
    ),
)
# The four messages start with different letters: one dict lookup picks the only pattern
# that can match (tests/test_logins_parse.py checks they stay distinct).
_BY_FIRST_LETTER = {entry[1][0]: entry for entry in _PATTERNS}
# What the host helper filters sshd's log by, so that only lines that can be login events
# travel (a VERBOSE log has several other lines per login).
LOGIN_MARKERS: tuple[str, ...] = tuple(marker.strip() for _, marker, _ in _PATTERNS)
_RFC3339_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?"
_TRADITIONAL_TIME = r"[A-Z][a-z]{2}\s+\d{1,2} \d\d:\d\d:\d\d"
# A syslog line: an optional <priority>, the time, the host name, busybox's optional
# facility.level (Alpine), sshd's tag, then sshd's message. No other optional token is
# allowed: another program's tag followed by text would then pass for a host and a tag.
_SYSLOG_PREFIX = re.compile(
    r"(?:<\d{1,3}>)?"
    rf"(?:(?P<rfc3339>{_RFC3339_TIME})|(?P<traditional>{_TRADITIONAL_TIME})(?:\.(?P<frac>\d+))?)"
    r"\s+\S+\s+(?:[a-z]+\.[a-z]+\s+)?sshd(?:-session)?\[\d+\]:\s?"
)


@dataclass(frozen=True, init=False)
class LogLine:
    """One line as collected from a host: its text, its time if the source had one,
    and its position in the source (a journal cursor or inode:offset) for de-duplication."""

    text: str
    ts: float | None
    pos: str | None

    def __init__(self, text: str, ts: float | None, pos: str | None) -> None:
        self.__dict__.update(text=text, ts=ts, pos=pos)  # see LoginEvent.__init__


@dataclass(frozen=True, init=False)
class LoginEvent:
    host: str
    account: str
    at: datetime
    outcome: Outcome
    addr: str
    port: int
    fingerprint: str | None
    person: str | None
    pos: str | None
    order: int = 0  # position within its batch, to order events that share a timestamp
    # What the line was read from: "journal", or "file:<path>" ("file" when read back from
    # the registry). Only journal events can put someone into failure mode: anyone on the
    # host can write a file's lines. The default is the weaker kind, so that an event
    # built without saying where it came from never counts as the journal's.
    source: str = "file"

    def __init__(
        self,
        host: str,
        account: str,
        at: datetime,
        outcome: Outcome,
        addr: str,
        port: int,
        fingerprint: str | None,
        person: str | None,
        pos: str | None,
        order: int = 0,
        source: str = "file",
    ) -> None:
        # One dict update instead of the eleven object.__setattr__ calls a frozen dataclass
        # makes: a collection builds one of these per login line (100,000 in a large run).
        self.__dict__.update(
            host=host,
            account=account,
            at=at,
            outcome=outcome,
            addr=addr,
            port=port,
            fingerprint=fingerprint,
            person=person,
            pos=pos,
            order=order,
            source=source,
        )

    @property
    def from_journal(self) -> bool:
        return self.source == "journal"


def _syslog_time(prefix: re.Match[str], fallback: datetime) -> datetime:
    rfc3339 = prefix.group("rfc3339")
    if rfc3339 is not None:
        try:
            value = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        except ValueError:
            return fallback
    try:
        value = datetime.strptime(
            f"{fallback.year} {prefix.group('traditional')}", "%Y %b %d %H:%M:%S"
        )
    except ValueError:
        return fallback
    frac = prefix.group("frac")
    value = value.replace(tzinfo=UTC, microsecond=int(frac[:6].ljust(6, "0")) if frac else 0)
    # Syslog omits the year; a date "in the future" belongs to last year.
    if value > fallback + timedelta(days=1):
        value = value.replace(year=value.year - 1)
    return value


def parse_lines(
    host: str,
    lines: Sequence[LogLine],
    owners: Mapping[str, str],
    collected_at: datetime,
    source: str = "file",
) -> list[LoginEvent]:
    """Login events in ``lines``; ``owners`` maps fingerprints to usernames; ``source``
    (``journal`` or ``file:<path>``) is what the lines were read from.

    A line is either sshd's message itself (the journal's ``MESSAGE``, ``sshd -E``) or
    a syslog line whose prefix names sshd; anything else is not sshd's and is ignored.
    """
    events: list[LoginEvent] = []
    for index, line in enumerate(lines):
        text = line.text.rstrip("\r\n")
        prefix = _SYSLOG_PREFIX.match(text)
        message = text[prefix.end() :] if prefix else text
        entry = _BY_FIRST_LETTER.get(message[:1])
        if entry is None:
            continue
        outcome, _, pattern = entry
        match = pattern.match(message)  # each pattern begins with its marker
        if match is None:
            continue
        fields = match.groupdict()
        user = fields.get("user") or fields.get("invalid") or ""
        fingerprint = fields.get("fp")
        if line.ts is not None:
            at = datetime.fromtimestamp(line.ts, UTC)
        elif prefix is not None:
            at = _syslog_time(prefix, collected_at)
        else:
            at = collected_at
        events.append(
            LoginEvent(
                host,
                user[:64],
                at,
                outcome,
                fields["addr"],
                int(fields["port"]),
                fingerprint,
                owners.get(fingerprint) if fingerprint else None,
                line.pos,
                index,
                source,
            )
        )
    return events


@dataclass(frozen=True)
class Session:
    """An accepted login, closed when its disconnect was seen.

    Times from a log without timestamps are the collection time; the order of
    lines within one collection then decides what overlapped.
    """

    host: str
    account: str
    person: str | None
    fingerprint: str | None
    addr: str
    port: int
    start: datetime
    end: datetime | None
    start_order: int = 0
    end_order: int = 0

    @property
    def begins(self) -> tuple[datetime, int]:
        return (self.start, self.start_order)

    @property
    def ends(self) -> tuple[datetime, int] | None:
        return None if self.end is None else (self.end, self.end_order)


@dataclass(frozen=True)
class Alert:
    kind: Literal["multi_source", "new_source", "failed_logins", "login_after_offboarding"]
    person: str | None
    host: str | None
    account: str | None
    summary: str
    details: Mapping[str, object]


def multi_source_alerts(
    sessions: Iterable[Session], new: Iterable[Session], window: timedelta
) -> list[Alert]:
    """A person with sessions open at the same time from two or more source addresses.

    A sweep over each person's sessions in time order (O(n log n)): when a session
    starts while sessions from other addresses are open, and one of them is new, alert.
    """
    fresh = {id(s) for s in new}
    by_person: dict[str, list[Session]] = {}
    for s in [*sessions, *new]:
        if s.person:
            by_person.setdefault(s.person, []).append(s)
    alerts: list[Alert] = []
    far = datetime.max.replace(tzinfo=UTC)
    for person, items in sorted(by_person.items()):
        unique = list({id(s): s for s in items}.values())
        if not any(id(s) in fresh for s in unique):
            continue
        points: list[tuple[tuple[datetime, int], int, int]] = []
        for index, s in enumerate(unique):
            points.append((s.begins, 1, index))
            points.append((s.ends or (far, 0), 0, index))  # ends sort before starts
        points.sort()
        active: dict[int, Session] = {}
        reported: set[frozenset[str]] = set()
        for _key, is_start, index in points:
            s = unique[index]
            if not is_start:
                active.pop(index, None)
                continue
            others = [
                o
                for o in active.values()
                if o.addr != s.addr
                and abs((o.start - s.start).total_seconds()) <= window.total_seconds()
            ]
            active[index] = s
            if not others or not (id(s) in fresh or any(id(o) in fresh for o in others)):
                continue
            addrs = frozenset({s.addr, *(o.addr for o in others)})
            if addrs in reported:
                continue
            reported.add(addrs)
            alerts.append(
                Alert(
                    "multi_source",
                    person,
                    s.host,
                    s.account,
                    f"{person} has sessions open at the same time from {len(addrs)} addresses: "
                    + ", ".join(sorted(addrs)),
                    {
                        "addresses": sorted(addrs),
                        "hosts": sorted({s.host, *(o.host for o in others)}),
                    },
                )
            )
    return alerts


def new_source_alerts(
    known: Mapping[str, frozenset[str]], new: Iterable[LoginEvent]
) -> list[Alert]:
    """A key that has logged in before now used from an address never seen for it."""
    alerts: list[Alert] = []
    seen: dict[str, set[str]] = {fp: set(addrs) for fp, addrs in known.items()}
    for event in new:
        if event.outcome != "accepted" or event.fingerprint is None:
            continue
        addrs = seen.setdefault(event.fingerprint, set())
        if addrs and event.addr not in addrs:
            alerts.append(
                Alert(
                    "new_source",
                    event.person,
                    event.host,
                    event.account,
                    f"key {event.fingerprint} ({event.person or 'unknown key'}) used from a new "
                    f"address {event.addr} on {event.account}@{event.host}",
                    {
                        "fingerprint": event.fingerprint,
                        "address": event.addr,
                        "known_addresses": sorted(addrs),
                    },
                )
            )
        addrs.add(event.addr)
    return alerts


def failed_login_alerts(
    failures: Sequence[LoginEvent], threshold: int, window: timedelta, now: datetime
) -> list[Alert]:
    """More than ``threshold`` failures for a person's key, or for an account, within ``window``."""
    recent = [
        f for f in failures if f.outcome in ("failed", "invalid_user") and f.at >= now - window
    ]
    alerts: list[Alert] = []
    by_person: dict[str, list[LoginEvent]] = {}
    by_account: dict[tuple[str, str], list[LoginEvent]] = {}
    for f in recent:
        if f.person:
            by_person.setdefault(f.person, []).append(f)
        by_account.setdefault((f.host, f.account), []).append(f)
    for person, events in sorted(by_person.items()):
        if len(events) > threshold:
            alerts.append(
                Alert(
                    "failed_logins",
                    person,
                    None,
                    None,
                    f"{len(events)} failed logins with {person}'s keys within "
                    f"{int(window.total_seconds() // 60)} minutes",
                    {
                        "count": len(events),
                        "addresses": sorted({e.addr for e in events}),
                        "hosts": sorted({e.host for e in events}),
                    },
                )
            )
    for (host, account), events in sorted(by_account.items()):
        if len(events) > threshold and not any(e.person for e in events):
            alerts.append(
                Alert(
                    "failed_logins",
                    None,
                    host,
                    account,
                    f"{len(events)} failed logins for {account}@{host} within "
                    f"{int(window.total_seconds() // 60)} minutes",
                    {"count": len(events), "addresses": sorted({e.addr for e in events})},
                )
            )
    return alerts


def service_keys(inventory: Inventory, agent_fingerprint: str | None) -> dict[str, str]:
    """Keys that are not people's: the agent's own and break-glass keys, named in login logs."""
    known = {agent_fingerprint: "keyward-agent"} if agent_fingerprint else {}
    for env in inventory.environments:
        for entry in env.break_glass:
            known[entry.key.fingerprint] = "break-glass"
    return known


def trusted_source(kind: str, auth_log_trusted: bool) -> bool:
    """Whether lines read from ``kind`` (``journal`` or ``file:<path>``) may be attributed:
    the journal always, a file only when the inventory vouches for it (``auth_log_trusted``),
    since anyone on the host can write one."""
    return kind == "journal" or auth_log_trusted
