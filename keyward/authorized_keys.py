"""Parse an existing authorized_keys file the way OpenSSH 9.x sshd reads it.

keyward compares what a host *actually* grants with what the registry says
it should, so this parser follows sshd (``auth2-pubkeyfile.c``,
``sshkey_read`` and ``sshkey_advance_past_options``) rather than being
stricter: a line sshd would honour is reported with its key, and a line
sshd would skip is reported with a reason.  No key policy applies here: a
DSA key left on a host must still be recognised by fingerprint so the drift
can be reported.  Errors never contain the line's content.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from keyward.errors import KeyPolicyError
from keyward.keys import CERT_SUFFIX, KNOWN_TYPES, PublicKey, WireError, WireReader, decode_key

# Names sshd accepts at the start of a key line that denote the same key type
# as the blob (signature-algorithm names; see peek_type_nid in sshkey.c).
_TYPE_ALIASES: dict[str, str] = {
    "rsa-sha2-256": "ssh-rsa",
    "rsa-sha2-512": "ssh-rsa",
    "webauthn-sk-ecdsa-sha2-nistp256@openssh.com": "sk-ecdsa-sha2-nistp256@openssh.com",
}

_SPACE = " \t"
# b64_pton skips isspace() characters inside the blob token.
_B64_IGNORED = str.maketrans("", "", "\n\r\v\f")


@dataclass(frozen=True)
class AuthorizedLine:
    """One non-blank, non-comment line of an authorized_keys file.

    ``key`` is None when sshd would skip the line; then ``error`` says why in a
    few words.  ``error`` may also be set alongside a key for a line sshd
    accepts but that is odd (invalid UTF-8), so reports can flag it.
    """

    lineno: int
    options: tuple[str, ...]
    key: PublicKey | None
    comment: str
    error: str | None


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


def split_options(text: str) -> tuple[str, ...]:
    """Split an options string at commas outside double quotes.

    Tokens are returned raw (quotes and escapes kept), e.g.
    ``('from="10.0.0.0/8"', 'no-pty')``.  An unterminated quote or an empty
    option raises ``ValueError``, as sshd would reject the line.
    """
    tokens: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] == '"':
            current.append('\\"')
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            tokens.append("".join(current))
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1
    if quoted:
        raise ValueError("unterminated quote in options")
    tokens.append("".join(current))
    if any(not tok for tok in tokens):
        raise ValueError("empty option")
    return tuple(tokens)


class _NoKey(Exception):
    """sshkey_read failed; the message is a short reason without content."""


def _read_key(text: str, pos: int) -> tuple[PublicKey, str]:
    """Emulate ``sshkey_read`` at ``pos``: return the key and the comment."""
    n = len(text)
    while pos < n and text[pos] in _SPACE:
        pos += 1
    end = pos
    while end < n and text[end] not in _SPACE:
        end += 1
    if end >= n:
        raise _NoKey("no key found")
    stated = text[pos:end]
    if stated.endswith(CERT_SUFFIX):
        raise _NoKey("certificates are not supported")
    plain = _TYPE_ALIASES.get(stated, stated)
    if plain not in KNOWN_TYPES:
        raise _NoKey("no key found")
    pos = end
    while pos < n and text[pos] in _SPACE:
        pos += 1
    if pos >= n:
        raise _NoKey("key data missing")
    end = pos
    while end < n and text[end] not in _SPACE:
        end += 1
    token = text[pos:end].translate(_B64_IGNORED)
    try:
        blob = binascii.a2b_base64(token.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _NoKey("key data is not valid base64") from None
    pos = end
    while pos < n and text[pos] in _SPACE:
        pos += 1
    comment = text[pos:].rstrip("\r\n")
    # The blob names its own type; sshd requires it to match the stated one.
    blob_type = _blob_type(blob)
    if blob_type != plain:
        raise _NoKey("key blob does not match its stated type")
    try:
        key = decode_key(plain, blob, comment)
    except KeyPolicyError as exc:
        raise _NoKey(exc.message) from None
    return key, comment


def _blob_type(blob: bytes) -> str | None:
    """The type name at the start of a key blob, or None if unreadable."""
    try:
        return WireReader(blob).text()
    except WireError:
        return None


def _parse_line(lineno: int, text: str) -> AuthorizedLine:
    """Parse one line the way ``auth_check_authkey_line`` does."""
    try:
        key, comment = _read_key(text, 0)
        return AuthorizedLine(lineno, (), key, comment, None)
    except _NoKey as first:
        first_reason = str(first)
    start = 0
    while start < len(text) and text[start] in _SPACE:
        start += 1
    end = _advance_past_options(text, start)
    if end is None:
        return AuthorizedLine(lineno, (), None, "", "invalid key option string")
    try:
        options = split_options(text[start:end])
    except ValueError:
        return AuthorizedLine(lineno, (), None, "", "invalid key option string")
    try:
        key, comment = _read_key(text, end)
    except _NoKey as second:
        # Report the reason that most likely applies: if the line started with
        # a key type, the first attempt's reason is the informative one.
        first_token = text[start:end]
        reason = first_reason if _looks_like_type(first_token) else str(second)
        return AuthorizedLine(lineno, (), None, "", reason)
    return AuthorizedLine(lineno, options, key, comment, None)


def _looks_like_type(token: str) -> bool:
    return token in KNOWN_TYPES or token in _TYPE_ALIASES or token.endswith(CERT_SUFFIX)


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
