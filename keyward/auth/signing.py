"""Signed API requests: the canonical text a client signs and the server checks.

A client proves who it is with its own registered SSH key: it signs, in SSHSIG
format under the namespace ``keyward-api@keyward`` (so a signature made for an API
request is never a valid git commit signature or key proof, and vice versa), the
canonical text of the request: method, path with query, SHA-256 of the body, a UTC
timestamp, a random nonce and the key's fingerprint.  Any change to one of them
makes the signature fail; the timestamp bounds how long a captured request is
accepted (``MAX_SKEW``), and the nonce store (``keyward.auth.nonces``) refuses the
same request twice within that window.

Everything here is pure: the server passes the key it found in the registry and
the time from its injected clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from keyward.errors import KeywardError, ProofError
from keyward.keys import PublicKey
from keyward.sshsig import verify_sshsig

NAMESPACE = "keyward-api@keyward"
VERSION_LINE = "keyward-api-v1"
MAX_SKEW = timedelta(seconds=300)

HEADER_KEY = "x-keyward-key"
HEADER_TIMESTAMP = "x-keyward-timestamp"
HEADER_NONCE = "x-keyward-nonce"
HEADER_SIGNATURE = "x-keyward-signature"

_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_FINGERPRINT_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_METHOD_RE = re.compile(r"[A-Z]{1,10}")
_MAX_SIGNATURE = 16 * 1024


class AuthError(KeywardError):
    """A request whose identity cannot be proven; the server answers 401 with the message."""


@dataclass(frozen=True)
class SignedRequest:
    """The authentication headers of one request, checked for shape only."""

    fingerprint: str
    timestamp: str
    nonce: str
    signature: bytes  # the armored SSHSIG


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def format_timestamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_text(
    method: str, path_query: str, body: bytes, timestamp: str, nonce: str, fingerprint: str
) -> bytes:
    """The exact bytes a client signs: one named field per line, so a person can read it.

    Fields never contain a newline (the header checks and HTTP itself refuse them),
    so no two requests share a canonical text.
    """
    return (
        f"{VERSION_LINE}\n"
        f"method: {method}\n"
        f"path: {path_query}\n"
        f"body-sha256: {body_digest(body)}\n"
        f"timestamp: {timestamp}\n"
        f"nonce: {nonce}\n"
        f"key: {fingerprint}\n"
    ).encode()


def signature_headers(
    fingerprint: str, timestamp: str, nonce: str, armored: bytes
) -> dict[str, str]:
    """The headers a client sends; the armored signature travels base64-encoded on one line."""
    return {
        HEADER_KEY: fingerprint,
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: base64.b64encode(armored).decode("ascii"),
    }


def parse_headers(headers: Mapping[str, str]) -> SignedRequest | None:
    """The signature headers of a request; None when it carries none (anonymous).

    Malformed or partial headers raise ``AuthError``: a half-signed request is not
    anonymous, it is wrong.
    """
    present = [
        h for h in (HEADER_KEY, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE) if h in headers
    ]
    if not present:
        return None
    if len(present) != 4:
        raise AuthError("incomplete signature headers")
    fingerprint = headers[HEADER_KEY]
    timestamp = headers[HEADER_TIMESTAMP]
    nonce = headers[HEADER_NONCE]
    encoded = headers[HEADER_SIGNATURE]
    if not _FINGERPRINT_RE.fullmatch(fingerprint):
        raise AuthError("malformed key fingerprint")
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise AuthError("malformed timestamp (want YYYY-MM-DDTHH:MM:SSZ)")
    if not _NONCE_RE.fullmatch(nonce):
        raise AuthError("malformed nonce (16 to 64 URL-safe characters)")
    if len(encoded) > _MAX_SIGNATURE:
        raise AuthError("signature is too large")
    try:
        armored = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise AuthError("signature header is not base64") from None
    return SignedRequest(fingerprint, timestamp, nonce, armored)


def check_timestamp(timestamp: str, now: datetime, skew: timedelta = MAX_SKEW) -> datetime:
    """The request's time, if within ``skew`` of ``now`` either way; else ``AuthError``."""
    try:
        when = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=now.tzinfo)
    except ValueError:
        raise AuthError("malformed timestamp") from None
    if abs(when - now) > skew:
        raise AuthError(
            f"request timestamp is more than {int(skew.total_seconds())} s from the server's time"
        )
    return when


def verify_request(
    signed: SignedRequest,
    key: PublicKey,
    method: str,
    path_query: str,
    body: bytes,
) -> None:
    """Check the signature over this request by ``key``; ``AuthError`` if it does not verify."""
    if key.fingerprint != signed.fingerprint:
        raise AuthError("the signing key is not the key named")
    if not _METHOD_RE.fullmatch(method):
        raise AuthError("unexpected method")
    message = canonical_text(
        method, path_query, body, signed.timestamp, signed.nonce, signed.fingerprint
    )
    try:
        verify_sshsig(signed.signature, message, key, NAMESPACE)
    except ProofError:
        raise AuthError("signature does not verify for this request") from None
