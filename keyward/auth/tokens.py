"""Session tokens: what ``keyward auth login`` trades one signed request for.

A token names the person and the fingerprint of the key that signed the login, when
it was issued and when it expires, and carries an HMAC-SHA256 over that with the
server's secret: the server verifies it without storing sessions.  The token proves
only that the server issued it; the server still re-checks the key and the person in
the registry on every request, so revoking the key or offboarding the person ends
every session of theirs at once.

The secret is 32 random bytes in a file readable by the server alone (0600), made on
the server's first start; replacing the file ends every session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from keyward.auth.signing import AuthError
from keyward.errors import UsageError

DEFAULT_LIFETIME = timedelta(hours=8)
MAX_LIFETIME = timedelta(hours=24)
PREFIX = "kws1."
SECRET_BYTES = 32
_MAX_TOKEN = 1024


@dataclass(frozen=True)
class Session:
    """What a valid token says: who, by which key, until when."""

    username: str
    fingerprint: str
    issued_at: datetime
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest())


def issue(
    secret: bytes, username: str, fingerprint: str, now: datetime, lifetime: timedelta
) -> str:
    """A token for ``username`` signed in with ``fingerprint``, valid for ``lifetime``."""
    if not timedelta(0) < lifetime <= MAX_LIFETIME:
        raise UsageError("a session lasts more than 0 and at most 24 hours")
    claims = {
        "sub": username,
        "fp": fingerprint,
        "iat": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
        "jti": secrets.token_hex(8),
    }
    payload = _b64(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode())
    return f"{PREFIX}{payload}.{_mac(secret, payload)}"


def verify(secret: bytes, token: str, now: datetime) -> Session:
    """The session a token stands for; ``AuthError`` if forged, malformed or expired."""
    if len(token) > _MAX_TOKEN or not token.startswith(PREFIX):
        raise AuthError("not a keyward session token")
    payload, dot, mac = token[len(PREFIX) :].partition(".")
    if not dot or not hmac.compare_digest(mac, _mac(secret, payload)):
        raise AuthError("session token is not valid (forged, or the server secret changed)")
    try:
        claims = json.loads(_unb64(payload))
        session = Session(
            username=str(claims["sub"]),
            fingerprint=str(claims["fp"]),
            issued_at=datetime.fromtimestamp(int(claims["iat"]), UTC),
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise AuthError("session token is malformed") from None
    if now >= session.expires_at:
        raise AuthError("session has expired; run 'keyward auth login' again")
    return session


def load_or_create_secret(path: Path) -> bytes:
    """The server's token secret, made (0600, atomically) on first use.

    A file readable by others is refused rather than used: whoever reads it can mint
    sessions for anyone.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(SECRET_BYTES))
            out.flush()
            os.fsync(out.fileno())
    info = path.stat()
    if info.st_mode & 0o077:
        raise UsageError(f"{path} is readable by others (mode {info.st_mode & 0o777:o}); chmod 600")
    secret = path.read_bytes()
    if len(secret) < SECRET_BYTES:
        raise UsageError(f"{path} is too short to be a keyward server secret")
    return secret
