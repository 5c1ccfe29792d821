"""Parse an existing authorized_keys file exactly the way OpenSSH 9.x sshd reads it.

keyward compares what a host *actually* grants with what the registry says
it should, and the offboarding sweep removes keys by what this module finds,
so the reader follows sshd line for line rather than being stricter or
looser.  The reference is OpenSSH 9.2 (the sshd tests/test_sshd_parity.py
runs as the judge); the option parser is unchanged through 10.2, and where
later releases read keys more strictly (blob short names, DSA) keyward keeps
the 9.2 reading, so it may see a key a newer sshd skips but never misses one:

- ``auth2-pubkeyfile.c`` ``auth_check_authkey_line``: try to read a key at
  the start of the line; if that fails, skip the options field
  (``sshkey_advance_past_options``) and try again;
- ``sshkey.c`` ``sshkey_read`` / ``sshkey_from_blob`` and ``b64_pton`` for
  the key itself (see ``keyward.keys.read_sshd_key``);
- ``auth-options.c`` ``sshauthopt_parse`` for the options: an option sshd
  does not know, a malformed value or a repeated ``command``/``from`` makes
  sshd skip the whole line, while an empty option (``restrict, KEY``,
  ``, KEY``, ``no-pty,,pty KEY``) is simply passed over.

A line sshd would honour for some client is reported with its key: an
``expiry-time`` in the past or a ``from=`` that does not match still leaves
the key in the file (honoured once, or from elsewhere).  A
``cert-authority`` line is reported with its key too, although sshd only
honours it for certificates that key signed: it is still a way in.  A line
sshd skips entirely is reported without a key and with a reason.  No key
policy applies here: a DSA key left on a host must still be recognised by
fingerprint so the drift can be reported.  Errors never contain the line's
content.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass

from keyward.keys import (
    CERT_SUFFIX,
    SSHD_LINE_TYPES,
    PublicKey,
    WireError,
    read_sshd_key,
    sshd_b64decode,
)

_SPACE = " \t"
# C isspace() in the "C" locale, as sshd's parsing helpers see it.
_C_SPACE = " \t\n\v\f\r"

# Limits from auth-options.h.
_PERMIT_MAX = 4096
_ENV_MAX = 1024
_NI_MAXHOST = 1025
_TUNID_MAX = 0x7FFFFFFF - 2

# Flags as sshauthopt_parse tries them, in order: (name, may take "no-").
# Matching is a case-insensitive *prefix* match, as in opt_flag(): "ptyx" is
# "pty" followed by garbage, which makes the whole line invalid.
_FLAGS: tuple[tuple[str, bool], ...] = (
    ("restrict", False),
    ("cert-authority", False),
    ("port-forwarding", True),
    ("agent-forwarding", True),
    ("x11-forwarding", True),
    ("touch-required", True),
    ("verify-required", True),
    ("pty", True),
    ("user-rc", True),
)

# strncasecmp() in the C locale folds ASCII letters only (str.lower() would
# also fold, say, the Kelvin sign to "k").
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

_VALUE_NAME = re.compile(r"([A-Za-z-]{1,16})=")
_STRTONUM = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")
# A name getservbyname() could know on the host.  The host's services
# database is not visible from here, so any plausible name is accepted: at
# worst keyward sees a key on a line sshd skips, never the reverse.
_SERVICE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class AuthorizedLine:
    """One non-blank, non-comment line of an authorized_keys file.

    ``key`` is None when sshd would skip the line; then ``error`` says why in a
    few words.  ``error`` may also be set alongside a key for a line sshd
    accepts but that is odd (invalid UTF-8), so reports can flag it.
    ``options`` are the line's options as written (empty ones left out).
    """

    lineno: int
    options: tuple[str, ...]
    key: PublicKey | None
    comment: str
    error: str | None


class _NoKey(Exception):
    """sshkey_read failed; the message is a short reason without content."""


class _BadOptions(Exception):
    """sshauthopt_parse failed; the message is sshd's reason."""


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    return pos


def _token_end(text: str, pos: int) -> int:
    """``pos + strcspn(text + pos, " \\t")``."""
    while pos < len(text) and text[pos] not in _SPACE:
        pos += 1
    return pos


def _advance_past_options(text: str, pos: int) -> int | None:
    """Index of the first unquoted space/tab from ``pos``; None for an open quote.

    Mirrors ``sshkey_advance_past_options``: a backslash only escapes a quote.
    """
    quoted = False
    n = len(text)
    while pos < n and (quoted or text[pos] not in _SPACE):
        if text[pos] == "\\" and pos + 1 < n and text[pos + 1] == '"':
            pos += 1
        elif text[pos] == '"':
            quoted = not quoted
        pos += 1
    if quoted:
        return None
    return pos


# --- sshauthopt_parse ---------------------------------------------------------


def _strtonum(text: str, low: int, high: int) -> int | None:
    """OpenBSD ``strtonum``: the whole string is one base-10 number in range."""
    if not _STRTONUM.fullmatch(text):
        return None
    value = int(text.lstrip(_C_SPACE))
    return value if low <= value <= high else None


def _dequote(text: str, pos: int) -> tuple[str, int]:
    """``opt_dequote``: the quoted value at ``pos`` and the index after it."""
    if pos >= len(text) or text[pos] != '"':
        raise _BadOptions("missing start quote")
    pos += 1
    out: list[str] = []
    while pos < len(text) and text[pos] != '"':
        if text[pos] == "\\" and pos + 1 < len(text) and text[pos + 1] == '"':
            pos += 1
        out.append(text[pos])
        pos += 1
    if pos >= len(text):
        raise _BadOptions("missing end quote")
    return "".join(out), pos + 1


def _port_ok(port: str) -> bool:
    """``a2port(port) > 0`` (or ``*``), as handle_permit checks it."""
    if port == "*":
        return True
    number = _strtonum(port, 0, 65535)
    if number is not None:
        return number > 0
    return _SERVICE_NAME.fullmatch(port) is not None


def _check_permit(value: str, allow_bare_port: bool) -> None:
    """``handle_permit``: ``host:port`` (or a bare port for permitlisten)."""
    if allow_bare_port and ":" not in value:
        value = "*:" + value
    # hpdelim2
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            raise _BadOptions("invalid permission hostname")
        delim = close + 1
    else:
        found = [i for i in (value.find(":"), value.find("/")) if i >= 0]
        delim = min(found) if found else len(value)
    if delim < len(value) and value[delim] not in ":/":
        raise _BadOptions("invalid permission hostname")
    host = value[:delim]
    if len(host.encode("utf-8", "surrogateescape")) >= _NI_MAXHOST:
        raise _BadOptions("invalid permission hostname")
    if delim >= len(value) or not _port_ok(value[delim + 1 :]):
        raise _BadOptions("invalid permission port")


def _get_number(text: str, low: int, high: int, width: int) -> int | None:
    """glibc strptime's ``get_number`` over one whole fixed-width segment."""
    pos = 0
    while pos < len(text) and text[pos] in _C_SPACE:
        pos += 1
    if pos >= len(text) or not "0" <= text[pos] <= "9":
        return None
    value = 0
    count = width
    while True:
        value = value * 10 + ord(text[pos]) - 48
        pos += 1
        count -= 1
        if not (count > 0 and value * 10 <= high and pos < len(text) and "0" <= text[pos] <= "9"):
            break
    if pos != len(text) or not low <= value <= high:
        return None
    return value


def expiry_timestamp(value: str) -> int | None:
    """``parse_absolute_time`` as sshd runs it for ``expiry-time``; None if invalid.

    ``YYYYMMDD[HHMM[SS]]`` with an optional ``Z``/``UTC`` suffix.  Without
    one sshd uses the host's local time; the result here is then UTC, which
    only matters for the validity of times within a day of 1970-01-01.
    """
    length = len(value)
    if length > 1 and value[-1] in "zZ":
        length -= 1
    elif length > 3 and value[length - 3 :].translate(_ASCII_LOWER) == "utc":
        length -= 3
    if length not in (8, 12, 14):
        return None
    spec = [(0, 4, 0, 9999), (4, 2, 1, 12), (6, 2, 1, 31)]
    if length >= 12:
        spec += [(8, 2, 0, 23), (10, 2, 0, 59)]
    if length == 14:
        spec.append((12, 2, 0, 61))
    fields: list[int] = []
    for start, width, low, high in spec:
        number = _get_number(value[start : start + width], low, high, width)
        if number is None:
            return None
        fields.append(number)
    fields += [0] * (6 - len(fields))
    year, month, day, hour, minute, second = fields
    if year < 1:
        return None  # before 1970 in any case
    try:
        stamp = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    return stamp if stamp > 0 else None


def _parse_options(text: str, pos: int) -> tuple[str, ...]:
    """Emulate ``sshauthopt_parse`` from ``pos``; the options as written.

    Raises ``_BadOptions`` with sshd's reason where sshd refuses the line.
    """
    options: list[str] = []
    seen: set[str] = set()
    env_names: set[str] = set()
    permits = {"permitopen": 0, "permitlisten": 0}
    n = len(text)
    while pos < n and text[pos] not in _SPACE:
        start = pos
        lower = text[pos : pos + 20].translate(_ASCII_LOWER)
        matched = False
        for name, negatable in _FLAGS:
            cursor = 3 if negatable and lower.startswith("no-") else 0
            if lower.startswith(name, cursor):
                pos += cursor + len(name)
                matched = True
                break
        if not matched:
            # opt_match(): a name immediately followed by "=".  A bounded match,
            # never a search: a hostile line of many empty options stays linear.
            named = _VALUE_NAME.match(text, pos)
            name = named.group(1).translate(_ASCII_LOWER) if named else ""
            equals = named.end() - 1 if named else pos
            if name in ("command", "principals", "from"):
                if name in seen:
                    raise _BadOptions(f'multiple "{name}" clauses')
                seen.add(name)
                _value, pos = _dequote(text, equals + 1)
            elif name == "expiry-time":
                value, pos = _dequote(text, equals + 1)
                if expiry_timestamp(value) is None:
                    raise _BadOptions("invalid expires time")
            elif name == "environment":
                if len(env_names) > _ENV_MAX:
                    raise _BadOptions("too many environment strings")
                value, pos = _dequote(text, equals + 1)
                env_name, sep, _ = value.partition("=")
                if not sep or not re.fullmatch(r"[A-Za-z0-9_]+", env_name):
                    raise _BadOptions("invalid environment string")
                env_names.add(env_name)
            elif name in permits:
                if permits[name] > _PERMIT_MAX:
                    raise _BadOptions("too many permission directives")
                value, pos = _dequote(text, equals + 1)
                _check_permit(value, allow_bare_port=name == "permitlisten")
                permits[name] += 1
            elif name == "tunnel":
                value, pos = _dequote(text, equals + 1)
                is_any = value.translate(_ASCII_LOWER) == "any"
                if not is_any and _strtonum(value, 0, _TUNID_MAX) is None:
                    raise _BadOptions("invalid tun device")
        if pos > start:
            options.append(text[start:pos])
        if pos >= n or text[pos] in _SPACE:
            break
        if text[pos] != ",":
            raise _BadOptions("unknown key option")
        pos += 1
        if pos >= n:
            raise _BadOptions("unexpected end-of-options")
    return tuple(options)


def split_options(text: str) -> tuple[str, ...]:
    """The options of an options field, as sshd reads it; ``ValueError`` if sshd refuses it.

    ``text`` is the first field of a line.  Tokens are returned raw (quotes
    and escapes kept), e.g. ``('from="10.0.0.0/8"', 'no-pty')``; empty
    options, which sshd passes over, are left out.
    """
    end = _advance_past_options(text, 0)
    if end is None or end != len(text):
        raise ValueError("invalid key option string")
    try:
        return _parse_options(text + " ", 0)
    except _BadOptions as exc:
        raise ValueError(str(exc)) from None


# --- the key ------------------------------------------------------------------


def _read_key(text: str, pos: int) -> tuple[PublicKey, str]:
    """Emulate ``sshkey_read`` at ``pos``: return the key and the comment."""
    end = _token_end(text, pos)
    if end >= len(text):
        raise _NoKey("no key found")
    stated = text[pos:end]
    if stated.endswith(CERT_SUFFIX):
        raise _NoKey("certificates are not supported")
    if stated not in SSHD_LINE_TYPES:
        raise _NoKey("no key found")
    pos = _skip_space(text, end)
    if pos >= len(text):
        raise _NoKey("key data missing")
    end = _token_end(text, pos)
    try:
        blob = sshd_b64decode(text[pos:end])
    except WireError:
        raise _NoKey("key data is not valid base64") from None
    comment = text[_skip_space(text, end) :].rstrip("\r\n")
    try:
        key = read_sshd_key(stated, blob, comment)
    except WireError as exc:
        raise _NoKey(f"malformed {SSHD_LINE_TYPES[stated]} key blob: {exc}") from None
    return key, comment


def _parse_line(lineno: int, text: str) -> AuthorizedLine:
    """Parse one line the way ``auth_check_authkey_line`` does."""
    start = _skip_space(text, 0)
    try:
        key, comment = _read_key(text, start)
        return AuthorizedLine(lineno, (), key, comment, None)
    except _NoKey as first:
        first_reason = str(first)
    end = _advance_past_options(text, start)
    if end is None:
        return AuthorizedLine(lineno, (), None, "", "invalid key option string")
    try:
        key, comment = _read_key(text, _skip_space(text, end))
    except _NoKey as second:
        # Report the reason that most likely applies: if the line started with
        # a key type, the first attempt's reason is the informative one.
        first_token = text[start:end]
        reason = first_reason if _looks_like_type(first_token) else str(second)
        return AuthorizedLine(lineno, (), None, "", reason)
    try:
        options = _parse_options(text, start)
    except _BadOptions as exc:
        return AuthorizedLine(lineno, (), None, "", f"bad key options: {exc}")
    return AuthorizedLine(lineno, options, key, comment, None)


def _looks_like_type(token: str) -> bool:
    return token in SSHD_LINE_TYPES or token.endswith(CERT_SUFFIX)


def parse_authorized_keys(data: bytes) -> list[AuthorizedLine]:
    """Parse a whole authorized_keys file; never raises on any input.

    Blank lines and ``#`` comments are skipped (line numbers still count
    them).  A NUL byte ends the line, as it does for sshd's C strings.
    """
    result: list[AuthorizedLine] = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        nul = raw.find(b"\0")
        if nul >= 0:
            raw = raw[:nul]
        stripped = raw.lstrip(b" \t")
        if not stripped or stripped.startswith(b"#") or stripped in (b"\r",):
            continue
        bad_utf8 = False
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            bad_utf8 = True
            text = raw.decode("utf-8", errors="replace")
        line = _parse_line(lineno, text)
        if bad_utf8:
            line = AuthorizedLine(
                line.lineno,
                line.options,
                line.key,
                line.comment,
                "line is not valid UTF-8" + (f"; {line.error}" if line.error else ""),
            )
        result.append(line)
    return result
