"""Parsing sshd's log lines into login events: formats, times, and forged text.

An unauthenticated client chooses the user name sshd logs after "Invalid user"
(spaces included), so these cases also prove that such a name cannot make a line
read as a login, a different address or someone else's key.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from keyward.logins import _BY_FIRST_LETTER, _PATTERNS, LOGIN_MARKERS, LogLine, parse_lines

FP = "SHA256:" + "A" * 43  # alice's key
EVIL = "SHA256:" + "B" * 43  # a key the attacker offers
OWNERS = {FP: "alice"}
NOW = datetime(2026, 11, 24, 6, 0, 0, tzinfo=UTC)
ACCEPT = f"Accepted publickey for deploy from 203.0.113.7 port 51702 ssh2: ED25519 {FP}"
FORGED = f"Accepted publickey for root from 10.0.0.1 port 22 ssh2: E {FP}"


def accepted_at(at: datetime) -> tuple[object, ...]:
    """What ACCEPT gives when its time is ``at``."""
    return ("accepted", "deploy", "203.0.113.7", 51702, FP, "alice", at)


# (case, line text, journal timestamp, expected (outcome, account, addr, port, fp, person, at))
CASES = [
    (
        "raw message (sshd -E, journal)",
        ACCEPT,
        None,
        accepted_at(NOW),
    ),
    (
        "journal time wins",
        ACCEPT,
        datetime(2026, 11, 24, 5, 0, tzinfo=UTC).timestamp(),
        accepted_at(datetime(2026, 11, 24, 5, 0, tzinfo=UTC)),
    ),
    (
        "traditional syslog",
        f"Nov 24 05:53:34 web-1 sshd[812]: {ACCEPT}",
        None,
        accepted_at(datetime(2026, 11, 24, 5, 53, 34, tzinfo=UTC)),
    ),
    (
        "RFC 3339 syslog, sshd-session tag",
        f"2026-11-24T05:53:34.250+00:00 web-1 sshd-session[812]: {ACCEPT}",
        None,
        accepted_at(datetime(2026, 11, 24, 5, 53, 34, 250000, tzinfo=UTC)),
    ),
    (
        "busybox syslogd (Alpine): facility.level before the tag",
        f"Nov 24 05:53:34 web-1 authpriv.info sshd[812]: {ACCEPT}",
        None,
        accepted_at(datetime(2026, 11, 24, 5, 53, 34, tzinfo=UTC)),
    ),
    (
        "priority, and fractional seconds on a traditional time",
        f"<38>Nov 24 05:53:34.25 web-1 sshd[812]: {ACCEPT}",
        None,
        accepted_at(datetime(2026, 11, 24, 5, 53, 34, 250000, tzinfo=UTC)),
    ),
    (
        "syslog without a year: a future date is last year's",
        f"Dec 31 23:59:59 web-1 sshd[812]: {ACCEPT}",
        None,
        accepted_at(datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ),
    (
        "certificate login",
        f"Accepted publickey for deploy from 203.0.113.7 port 5 ssh2: ED25519-CERT {FP} "
        f"ID x (serial 1) CA ED25519 {EVIL}",
        None,
        ("accepted", "deploy", "203.0.113.7", 5, FP, "alice", NOW),
    ),
    (
        "failed key, valid user",
        f"Failed publickey for deploy from 203.0.113.7 port 9 ssh2: ED25519 {FP}",
        None,
        ("failed", "deploy", "203.0.113.7", 9, FP, "alice", NOW),
    ),
    (
        "disconnect",
        "Disconnected from user deploy 203.0.113.7 port 51702",
        None,
        ("disconnected", "deploy", "203.0.113.7", 51702, None, None, NOW),
    ),
    (
        "invalid user with spaces in the name, preauth suffix",
        "Invalid user a b from 203.0.113.9 port 4444 [preauth]",
        None,
        ("invalid_user", "a b", "203.0.113.9", 4444, None, None, NOW),
    ),
    (
        "forged accept inside an invalid user name",
        f"Invalid user {FORGED} from 203.0.113.9 port 4444",
        None,
        ("invalid_user", FORGED[:64], "203.0.113.9", 4444, None, None, NOW),
    ),
    (
        "forged accept after a forged sshd tag, syslog",
        f"Nov 24 05:53:34 web-1 sshd[812]: Invalid user sshd[1]: {FORGED} "
        "from 203.0.113.9 port 4444",
        None,
        (
            "invalid_user",
            f"sshd[1]: {FORGED}"[:64],
            "203.0.113.9",
            4444,
            None,
            None,
            datetime(2026, 11, 24, 5, 53, 34, tzinfo=UTC),
        ),
    ),
    (
        "a failed key for an invalid user: address and key from the end sshd wrote",
        f"Failed publickey for invalid user x from 10.0.0.1 port 1 ssh2: E {FP} "
        f"from 203.0.113.9 port 4444 ssh2: ED25519 {EVIL}",
        None,
        (
            "failed",
            f"x from 10.0.0.1 port 1 ssh2: E {FP}"[:64],
            "203.0.113.9",
            4444,
            EVIL,
            None,
            NOW,
        ),
    ),
]

IGNORED = [
    (
        "forged tag in a raw message",
        f"Connection closed by invalid user sshd[1]: {FORGED} 203.0.113.9 port 4444 [preauth]",
    ),
    ("login text in another program's syslog line", f"Nov 24 05:53:34 web-1 sudo[9]: {ACCEPT}"),
    (
        "another program's line made to look like host, facility and tag",
        f"Nov 24 05:53:34 web-1 cron[9]: auth.info sshd[1]: {ACCEPT}",
    ),
    ("login text later in a raw line", f"error: {ACCEPT}"),
    ("not a login", "Connection from 203.0.113.7 port 51702 on 127.0.0.1 port 22"),
    ("cut short", "Accepted publickey for deploy from 203.0.113.7 port"),
    (
        "an invalid-user failure with text after the key",
        f"Failed publickey for invalid user x from 203.0.113.9 port 1 ssh2: ED25519 {EVIL} "
        "ID forged",
    ),
]


@pytest.mark.parametrize(("case", "text", "ts", "expected"), CASES, ids=[c[0] for c in CASES])
def test_a_line_becomes_one_event(case: str, text: str, ts: float | None, expected: tuple) -> None:
    (event,) = parse_lines("web-1", [LogLine(text + "\n", ts, "7:0")], OWNERS, NOW)
    assert (
        event.outcome,
        event.account,
        event.addr,
        event.port,
        event.fingerprint,
        event.person,
        event.at,
    ) == expected
    assert (event.host, event.pos, event.order) == ("web-1", "7:0", 0)


@pytest.mark.parametrize(("case", "text"), IGNORED, ids=[c[0] for c in IGNORED])
def test_lines_that_are_no_login_give_nothing(case: str, text: str) -> None:
    assert parse_lines("web-1", [LogLine(text, None, "7:0")], OWNERS, NOW) == []


def test_order_is_the_position_in_the_batch() -> None:
    lines = [LogLine("noise", None, "1"), LogLine(ACCEPT, None, "2"), LogLine(ACCEPT, None, "3")]
    assert [e.order for e in parse_lines("h", lines, OWNERS, NOW)] == [1, 2]


def test_dispatch_covers_every_pattern_and_markers_prefix_them() -> None:
    assert len(_BY_FIRST_LETTER) == len(_PATTERNS)
    assert all(
        marker.startswith(m) for (_, marker, _), m in zip(_PATTERNS, LOGIN_MARKERS, strict=True)
    )
