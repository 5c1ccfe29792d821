"""The allowlist of authorized_keys options keyward will write.

An authorized_keys line is ``options keytype base64 comment``; sshd reads the
options up to the first unquoted blank and honours a ``\\"`` escape inside
quotes.  Anything that lets text from the inventory end a quoted value early
(a ``"``, a backslash) or start a new line (any control or line-separator
character) could smuggle a second option or a second key into a file that is
trusted for root logins.  So options are checked one by one against a short
allowlist and quoted values may contain neither quotes, backslashes nor
control characters; nothing is escaped, it is refused.

Refused on purpose:

- ``no-touch-required`` weakens a FIDO key to "anyone holding the laptop".
- ``environment`` only works with ``PermitUserEnvironment``, which lets a
  key holder set ``LD_PRELOAD`` for sshd's child processes.
- ``expiry-time`` is written by keyward itself from the key's expiry and the
  grant's ``until`` (see ``expiry_time_option``); a hand-written one would
  disagree with the registry.
- ``cert-authority``, ``principals`` and ``tunnel`` change what the line *is*
  (a CA, a tun device); keyward manages personal keys only.

The module is pure: it raises ``ValueError`` with a reason, and the inventory
loader turns that into a located problem.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Sequence
from datetime import datetime

from keyward.clock import as_utc

# Flags, by their lowercase spelling -> the spelling keyward writes.  sshd
# compares option names case-insensitively; the X11 spelling is kept because
# that is how every manual page writes it.
FLAGS: dict[str, str] = {
    "restrict": "restrict",
    "no-agent-forwarding": "no-agent-forwarding",
    "no-port-forwarding": "no-port-forwarding",
    "no-pty": "no-pty",
    "no-user-rc": "no-user-rc",
    "no-x11-forwarding": "no-X11-forwarding",
    "agent-forwarding": "agent-forwarding",
    "port-forwarding": "port-forwarding",
    "pty": "pty",
    "user-rc": "user-rc",
    "x11-forwarding": "X11-forwarding",
    "verify-required": "verify-required",
}

# Options that take a double-quoted value.
VALUED: frozenset[str] = frozenset({"from", "command", "permitopen", "permitlisten"})

# Options sshd knows that keyward will not write, and why.
REFUSED: dict[str, str] = {
    "no-touch-required": "weakens FIDO keys (a stolen laptop could log in without a touch)",
    "environment": "needs PermitUserEnvironment, which lets a key holder set LD_PRELOAD",
    "expiry-time": "keyward sets expiry-time itself from key expiry and grant until",
    "cert-authority": "keyward manages personal keys, not certificate authorities",
    "principals": "only meaningful with cert-authority, which keyward does not write",
    "tunnel": "tun device forwarding is not something keyward grants",
}

# Options that may appear at most once in one line (sshd refuses or silently
# keeps only one of them, either of which hides a mistake).
_SINGLE: frozenset[str] = frozenset({"from", "command", "expiry-time"})

_NAME = re.compile(r"[A-Za-z0-9-]+")
_FROM_PATTERN = re.compile(r"!?[A-Za-z0-9.*?:/_%\[\]-]+")
_HOST = r"(?:\[[0-9A-Fa-f:.%a-z]+\]|[A-Za-z0-9.*_-]+)"
_PERMITOPEN = re.compile(rf"({_HOST}):([0-9]{{1,5}}|\*)")
_PERMITLISTEN = re.compile(rf"(?:({_HOST}):)?([0-9]{{1,5}}|\*)")
_EXPIRY = re.compile(r"[0-9]{14}Z")
# A from= entry without wildcards made of address characters only: meant as an
# address, so it must be one.
_ADDRESS_LIKE = re.compile(r"[0-9.]+|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")
# sshd refuses a permitopen/permitlisten host of NI_MAXHOST characters or more.
_NI_MAXHOST = 1025

_LINE_BREAKERS = frozenset({"\u2028", "\u2029", "\u0085"})


def _is_unsafe_char(char: str) -> bool:
    """Control, format and line/paragraph separator characters are never written.

    Format characters (such as U+202E, right-to-left override) are included
    because they make a reviewed file read differently from what sshd sees.
    """
    return char in _LINE_BREAKERS or unicodedata.category(char) in {"Cc", "Cf", "Zl", "Zp"}


def _short(text: str) -> str:
    """A bounded, escaped rendering of user text for an error message."""
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _check_value(name: str, value: str) -> None:
    """Check the unquoted value of option ``name``; raise ``ValueError`` if unusable."""
    if value == "":
        raise ValueError(f"{name}= needs a non-empty value")
    if name == "from":
        for pattern in value.split(","):
            if not _FROM_PATTERN.fullmatch(pattern):
                raise ValueError(
                    f"from= pattern {_short(pattern)} is not a host name, address or CIDR "
                    "pattern (comma-separated, no spaces)"
                )
            _check_from_entry(pattern)
    elif name == "permitopen":
        match = _PERMITOPEN.fullmatch(value)
        if not match or not _port_ok(match.group(2)) or len(match.group(1)) >= _NI_MAXHOST:
            raise ValueError(f"permitopen= value {_short(value)} must be host:port")
    elif name == "permitlisten":
        match = _PERMITLISTEN.fullmatch(value)
        host = match.group(1) if match else None
        if not match or not _port_ok(match.group(2)) or (host and len(host) >= _NI_MAXHOST):
            raise ValueError(f"permitlisten= value {_short(value)} must be [host:]port")
    elif name == "expiry-time" and not _EXPIRY.fullmatch(value):
        raise ValueError("expiry-time= must be YYYYMMDDHHMMSSZ")


def _check_from_entry(pattern: str) -> None:
    """Refuse a ``from=`` entry sshd would never match, naming it.

    sshd's ``addr_match_list`` first reads every entry as ``address[/len]``.
    A prefix length beyond 32 (IPv4) or 128 (IPv6), or an address with bits
    set beyond the prefix (``10.1.2.3/8``), is an *error* there, and an error
    anywhere in the list refuses every login with the key; any other entry
    with a ``/`` silently never matches.  An entry that only looks like an
    address (``10.0.0.256``, ``10.1``) falls back to a wildcard match against
    the client's address text and never matches either.  All of these are
    mistakes, so each is refused here.
    """
    entry = pattern.removeprefix("!")
    if "/" in entry:
        address, _, length = entry.partition("/")
        if not length.isdigit() or not length.isascii():
            raise ValueError(f"from= entry {_short(entry)}: prefix length must be a number")
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(
                f"from= entry {_short(entry)}: {_short(address)} is not an IP address"
            ) from None
        if int(length) > parsed.max_prefixlen:
            raise ValueError(
                f"from= entry {_short(entry)}: prefix length {int(length)} is out of range "
                f"(at most {parsed.max_prefixlen} for IPv{parsed.version})"
            )
        try:
            ipaddress.ip_network(entry, strict=True)
        except ValueError:
            raise ValueError(
                f"from= entry {_short(entry)} has address bits set beyond the /{int(length)} "
                "prefix (sshd never matches it); give the network address"
            ) from None
    elif _ADDRESS_LIKE.fullmatch(entry):
        try:
            ipaddress.ip_address(entry)
        except ValueError:
            raise ValueError(f"from= entry {_short(entry)} is not a valid IP address") from None


def _port_ok(port: str) -> bool:
    """A forwarding port is ``*`` or 1-65535."""
    return port == "*" or 1 <= int(port) <= 65535


def _parse(text: str, *, allow_expiry_time: bool) -> str:
    """Validate and normalise one option; see ``validate_option``."""
    if not isinstance(text, str):
        raise ValueError("an option must be a string")
    if text == "":
        raise ValueError("empty option")
    if any(_is_unsafe_char(char) for char in text):
        raise ValueError(f"option {_short(text)} contains a control or line-separator character")
    name_part, eq, value_part = text.partition("=")
    if not _NAME.fullmatch(name_part):
        raise ValueError(
            f'{_short(text)} is not a single option (expected name or name="value", '
            "one option per list entry)"
        )
    name = name_part.lower()
    if name == "expiry-time" and allow_expiry_time:
        pass
    elif name in REFUSED:
        raise ValueError(f"option {name!r} is not allowed: {REFUSED[name]}")
    if name in FLAGS:
        if eq:
            raise ValueError(f"option {name!r} takes no value")
        return FLAGS[name]
    if name not in VALUED and name != "expiry-time":
        raise ValueError(f"unknown option {name_part!r}")
    if not eq:
        raise ValueError(f'option {name!r} needs a value: {name}="..."')
    if len(value_part) < 2 or not value_part.startswith('"') or not value_part.endswith('"'):
        raise ValueError(f'the value of {name!r} must be enclosed in double quotes: {name}="..."')
    value = value_part[1:-1]
    if '"' in value or "\\" in value:
        raise ValueError(f"the value of {name!r} must not contain a double quote or backslash")
    if name != "command" and (" " in value or not value.isascii()):
        raise ValueError(f"the value of {name!r} must be ASCII without spaces")
    _check_value(name, value)
    return f'{name}="{value}"'


def validate_option(text: str) -> str:
    """Return the normalised spelling of one inventory option or raise ``ValueError``.

    ``text`` is one option exactly as it will appear in the file, e.g.
    ``no-agent-forwarding`` or ``from="10.0.0.0/8,192.0.2.1"``.  Names are
    matched case-insensitively like sshd does and written lowercase (X11
    keeps its capitals).  ``expiry-time`` is refused here: only keyward
    writes it.
    """
    return _parse(text, allow_expiry_time=False)


def option_name(option: str) -> str:
    """The (lowercase) name of a normalised option, e.g. ``from`` for ``from="..."``."""
    return option.partition("=")[0].lower()


def validate_options(options: Sequence[str]) -> tuple[str, ...]:
    """Validate a whole option list for one line; raise ``ValueError`` on the first problem.

    Besides each option on its own this refuses a repeated ``from`` or
    ``command`` (sshd would reject the line or keep one silently) and a flag
    together with its negation (``pty`` and ``no-pty``), whose effect depends
    on order and so is almost certainly a mistake.  Exact duplicates are
    dropped, order is kept.
    """
    return _validate_all(options, allow_expiry_time=False)


def _validate_all(options: Sequence[str], *, allow_expiry_time: bool) -> tuple[str, ...]:
    """Shared body of ``validate_options`` and ``render_options``."""
    if isinstance(options, str):
        raise ValueError("options must be a list of strings, not one string")
    result: list[str] = []
    seen_names: set[str] = set()
    for text in options:
        option = _parse(text, allow_expiry_time=allow_expiry_time)
        if option in result:
            continue
        name = option_name(option)
        if name in _SINGLE and name in seen_names:
            raise ValueError(f"option {name!r} given more than once")
        opposite = name[3:] if name.startswith("no-") else f"no-{name}"
        if name in FLAGS and opposite in seen_names:
            raise ValueError(f"options {name!r} and {opposite!r} contradict each other")
        seen_names.add(name)
        result.append(option)
    return tuple(result)


def render_options(options: Sequence[str]) -> str:
    """Join options into the first field of an authorized_keys line (``""`` for none).

    Every option is checked again here, including ``expiry-time`` written by
    ``expiry_time_option``: rendering is the last point before text reaches
    a host, so nothing unchecked gets past it whatever the caller did.
    """
    return ",".join(_validate_all(options, allow_expiry_time=True))


def expiry_time_option(when: datetime) -> str:
    """``expiry-time="YYYYMMDDHHMMSSZ"`` for ``when``, in UTC.

    The trailing ``Z`` makes sshd read the time as UTC rather than the host's
    local zone (OpenSSH 8.7 and later; older sshd refuses the line, which
    fails closed).  Sub-second precision is dropped, which moves the expiry
    earlier, never later.  A naive ``when`` is taken as UTC, like everywhere
    else in keyward.
    """
    utc = as_utc(when)
    # sshd refuses the whole line for an expiry-time at or before the epoch
    # ("invalid expires time"): such a line must never be written.
    if utc.year < 1970 or utc.replace(microsecond=0) == datetime(1970, 1, 1, tzinfo=utc.tzinfo):
        raise ValueError("expiry-time must be after 1970-01-01T00:00:00Z")
    stamp = (
        f"{utc.year:04d}{utc.month:02d}{utc.day:02d}{utc.hour:02d}{utc.minute:02d}{utc.second:02d}Z"
    )
    return f'expiry-time="{stamp}"'
