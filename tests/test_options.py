"""The authorized_keys option allowlist: what keyward writes, and what it refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from keyward.authorized_keys import split_options
from keyward.options import (
    expiry_time_option,
    render_options,
    validate_option,
    validate_options,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("restrict", "restrict"),
        ("no-agent-forwarding", "no-agent-forwarding"),
        ("NO-AGENT-FORWARDING", "no-agent-forwarding"),
        ("no-port-forwarding", "no-port-forwarding"),
        ("no-pty", "no-pty"),
        ("No-Pty", "no-pty"),
        ("no-user-rc", "no-user-rc"),
        ("no-x11-forwarding", "no-X11-forwarding"),
        ("NO-X11-FORWARDING", "no-X11-forwarding"),
        ("agent-forwarding", "agent-forwarding"),
        ("port-forwarding", "port-forwarding"),
        ("pty", "pty"),
        ("user-rc", "user-rc"),
        ("x11-forwarding", "X11-forwarding"),
        ("verify-required", "verify-required"),
        ('from="10.0.0.0/8"', 'from="10.0.0.0/8"'),
        ('FROM="10.0.0.0/8,192.0.2.1,!192.0.2.7"', 'from="10.0.0.0/8,192.0.2.1,!192.0.2.7"'),
        ('from="*.example.com,2001:db8::/32"', 'from="*.example.com,2001:db8::/32"'),
        ('command="/usr/local/bin/backup --daily"', 'command="/usr/local/bin/backup --daily"'),
        ('permitopen="db.example.com:5432"', 'permitopen="db.example.com:5432"'),
        ('permitopen="[2001:db8::1]:443"', 'permitopen="[2001:db8::1]:443"'),
        ('permitopen="localhost:*"', 'permitopen="localhost:*"'),
        ('permitlisten="8080"', 'permitlisten="8080"'),
        ('permitlisten="localhost:8080"', 'permitlisten="localhost:8080"'),
        ('from="10.0.0.*,fe80::*,::1,0.0.0.0/0"', 'from="10.0.0.*,fe80::*,::1,0.0.0.0/0"'),
        ('from="!192.0.2.128/25,2001:db8::/128"', 'from="!192.0.2.128/25,2001:db8::/128"'),
    ],
)
def test_allowed_options_are_normalised(text: str, expected: str) -> None:
    assert validate_option(text) == expected
    # What keyward writes, sshd's option parser accepts (the reader follows it
    # exactly; tests/test_sshd_parity.py holds it to a real sshd).
    assert split_options(expected) == (expected,)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # injection attempts: ending the quoted value early or starting a new line
        ('from="a\\"" ,command="x"', "double quote or backslash"),
        ('from="a",command="x"', "must not contain a double quote"),
        ('from="10.0.0.0/8" ,command="x"', "double quote"),
        ('command="x\nssh-ed25519 AAAA attacker"', "control or line-separator"),
        ('command="x\rssh-ed25519 AAAA"', "control or line-separator"),
        ('command="x\u2028y"', "control or line-separator"),
        ('command="x\u2029y"', "control or line-separator"),
        ('command="x\u0085y"', "control or line-separator"),
        ('command="x\x00y"', "control or line-separator"),
        ('command="x\ty"', "control or line-separator"),
        ('command="rm\u202e -rf"', "control or line-separator"),
        ("no-pty\n", "control or line-separator"),
        ('command="a\\b"', "backslash"),
        ("no-pty,command=x", "not a single option"),
        ("no-pty command", "not a single option"),
        (" no-pty", "not a single option"),
        ("", "empty option"),
        # refused on purpose
        ('environment="LD_PRELOAD=x"', "PermitUserEnvironment"),
        ('Environment="PATH=/tmp"', "PermitUserEnvironment"),
        ("no-touch-required", "weakens FIDO"),
        ('expiry-time="20300101000000Z"', "keyward sets expiry-time itself"),
        ("cert-authority", "certificate authorities"),
        ('principals="root"', "cert-authority"),
        ('tunnel="0"', "tun device"),
        # unknown or malformed
        ("no-such-thing", "unknown option"),
        ("permit-everything", "unknown option"),
        ("no-pty=yes", "takes no value"),
        ("from", "needs a value"),
        ("from=10.0.0.0/8", "double quotes"),
        ("from='10.0.0.0/8'", "double quotes"),
        ('from="10.0.0.0/8', "double quotes"),
        ('from=""', "non-empty value"),
        ('from="10.0.0.0/8, 192.0.2.1"', "ASCII without spaces"),
        ('from="a,,b"', "from= pattern"),
        ('from="10.0.0.0/8;id"', "from= pattern"),
        ('from="bücher.example"', "ASCII"),
        ('permitopen="db.example.com"', "host:port"),
        ('permitopen="db.example.com:99999"', "host:port"),
        ('permitopen="db.example.com:0"', "host:port"),
        ('permitlisten="a:b:c"', "[host:]port"),
        ('permitopen="' + "h" * 1025 + ':22"', "host:port"),
        # from= lists are checked like sshd's addr_match_list: these never match
        ('from="10.0.0.0/33"', "from= entry '10.0.0.0/33': prefix length 33 is out of range"),
        ('from="10.1.2.3/8"', "from= entry '10.1.2.3/8' has address bits set beyond the /8"),
        ('from="2001:db8::1/32"', "from= entry '2001:db8::1/32' has address bits set"),
        ('from="::/129"', "prefix length 129 is out of range (at most 128 for IPv6)"),
        ('from="192.0.2.0/24,!10.0.0.0/40"', "from= entry '10.0.0.0/40'"),
        ('from="10.0.0.0/x"', "from= entry '10.0.0.0/x': prefix length must be a number"),
        ('from="host.example/24"', "'host.example' is not an IP address"),
        ('from="10.0.0.256"', "from= entry '10.0.0.256' is not a valid IP address"),
        ('from="10.1"', "from= entry '10.1' is not a valid IP address"),
    ],
)
def test_refused_options(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        validate_option(text)
    message = str(caught.value)
    assert reason in message
    assert "\n" not in message and "\r" not in message


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (['from="10.0.0.0/8"', 'from="192.0.2.0/24"'], "'from' given more than once"),
        (['command="a"', 'command="b"'], "'command' given more than once"),
        (["pty", "no-pty"], "contradict"),
        (["no-X11-forwarding", "x11-forwarding"], "contradict"),
        ("no-pty", "list of strings"),
    ],
)
def test_refused_option_lists(options: list[str], reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        validate_options(options)
    assert reason in str(caught.value)


def test_option_list_drops_exact_duplicates_and_keeps_order() -> None:
    assert validate_options(["No-Pty", "restrict", "no-pty", 'permitopen="a:1"']) == (
        "no-pty",
        "restrict",
        'permitopen="a:1"',
    )
    assert validate_options(['permitopen="a:1"', 'permitopen="b:2"']) == (
        'permitopen="a:1"',
        'permitopen="b:2"',
    )


def test_render_options_joins_and_accepts_keyward_expiry() -> None:
    expiry = expiry_time_option(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))
    rendered = render_options(["restrict", 'from="10.0.0.0/8,192.0.2.1"', expiry])
    assert rendered == 'restrict,from="10.0.0.0/8,192.0.2.1",expiry-time="20300102030405Z"'
    assert render_options([]) == ""


@pytest.mark.parametrize(
    "options",
    [
        ['command="x\nssh-ed25519 AAAA"'],
        ['from="a\\"" ,command="x"'],
        ['expiry-time="2030"'],
        ['expiry-time="20300102030405Z"', 'expiry-time="20310102030405Z"'],
        ["no-touch-required"],
    ],
)
def test_render_options_rechecks_everything(options: list[str]) -> None:
    with pytest.raises(ValueError):
        render_options(options)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), 'expiry-time="20300102030405Z"'),
        # other zones are converted to UTC
        (
            datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
            'expiry-time="20300102010405Z"',
        ),
        (
            datetime(2030, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
            'expiry-time="20291231233000Z"',
        ),
        # naive means UTC, as everywhere in keyward; microseconds are dropped (earlier)
        (datetime(2030, 12, 31, 23, 59, 59, 999999), 'expiry-time="20301231235959Z"'),
    ],
)
def test_expiry_time_option(when: datetime, expected: str) -> None:
    assert expiry_time_option(when) == expected


def test_expiry_time_option_refuses_pre_epoch() -> None:
    with pytest.raises(ValueError):
        expiry_time_option(datetime(1969, 12, 31, tzinfo=UTC))
    # sshd refuses the whole line for the epoch itself ("invalid expires time").
    with pytest.raises(ValueError, match="after 1970-01-01"):
        expiry_time_option(datetime(1970, 1, 1, 0, 0, 0, 500000, tzinfo=UTC))
    option = expiry_time_option(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC))
    assert split_options(option) == (option,)
