"""Who is calling: a request signed with a registered key, or a session token.

Every check that depends on the registry happens here, on every request, for both
kinds: the key must be registered, not revoked, not expired, attested at least at the
server's minimum, and its owner active.  A session token only saves the signature;
it never saves these checks, so revoking the key or offboarding the person ends the
session at the next request.

The signature is verified before the key's status is looked at, so only the key's
holder learns why their key is refused; a stranger learns only "unknown key" or
"does not verify".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, select

from keyward.attestation import meets
from keyward.auth import signing, tokens
from keyward.auth.nonces import NonceStore
from keyward.auth.signing import AuthError
from keyward.clock import as_utc
from keyward.keys import decode_key
from keyward.registry.models import Person, SshKey

BEARER = "bearer "


@dataclass(frozen=True)
class RequestFacts:
    """What authentication reads of an HTTP request."""

    method: str
    path_query: str
    body: bytes
    headers: Mapping[str, str]  # lower-case names


@dataclass(frozen=True)
class Identity:
    """A proven caller: the person, the key that proved it, and how."""

    username: str
    fingerprint: str
    via: str  # "signature" | "session" | "browser"
    session_expires_at: datetime | None = None


@dataclass(frozen=True)
class Verifier:
    """What authentication needs besides the request: policy, secret, replay memory."""

    min_attestation: str
    secret: bytes
    nonces: NonceStore
    skew: timedelta = signing.MAX_SKEW


def _key_and_owner(session: Session, fingerprint: str) -> tuple[SshKey, Person]:
    key = session.exec(select(SshKey).where(SshKey.fingerprint == fingerprint)).first()
    person = session.get(Person, key.person_id) if key is not None else None
    if key is None or person is None:
        raise AuthError("unknown key (not registered in keyward)")
    return key, person


def _check_standing(key: SshKey, person: Person, now: datetime, min_attestation: str) -> None:
    """The registry's word on this key and person, now; ``AuthError`` with the reason."""
    if person.status != "active":
        raise AuthError(f"person {person.username!r} is {person.status}")
    if key.revoked_at is not None:
        raise AuthError(f"key {key.fingerprint} is revoked")
    if as_utc(key.expires_at) <= now:
        raise AuthError(f"key {key.fingerprint} has expired")
    if not meets(key.attestation, min_attestation):
        raise AuthError(
            f"key {key.fingerprint} is attested {key.attestation!r}; the server requires at "
            f"least {min_attestation!r}"
        )


def authenticate_token(
    session: Session, token: str, now: datetime, verifier: Verifier, via: str
) -> Identity:
    """The identity a session token stands for (an API bearer token or the web page's
    cookie), after the same registry checks as a signature; ``AuthError`` otherwise."""
    held = tokens.verify(verifier.secret, token, now)
    key, person = _key_and_owner(session, held.fingerprint)
    if person.username != held.username:
        raise AuthError("session token does not match its key's owner")
    _check_standing(key, person, now, verifier.min_attestation)
    return Identity(person.username, key.fingerprint, via, held.expires_at)


def authenticate(
    session: Session, request: RequestFacts, now: datetime, verifier: Verifier
) -> Identity | None:
    """The proven identity of ``request``; None when it carries no credentials.

    ``AuthError`` for credentials that do not prove anyone (the server answers 401).
    """
    authorization = request.headers.get("authorization", "")
    if authorization:
        if not authorization.lower().startswith(BEARER):
            raise AuthError("unsupported Authorization scheme (want Bearer and a session token)")
        token = authorization[len(BEARER) :].strip()
        return authenticate_token(session, token, now, verifier, via="session")
    signed = signing.parse_headers(request.headers)
    if signed is None:
        return None
    signing.check_timestamp(signed.timestamp, now, verifier.skew)
    key, person = _key_and_owner(session, signed.fingerprint)
    public = decode_key(key.key_type, key.blob)
    signing.verify_request(signed, public, request.method, request.path_query, request.body)
    _check_standing(key, person, now, verifier.min_attestation)
    verifier.nonces.use(signed.fingerprint, signed.nonce, now)
    return Identity(person.username, key.fingerprint, "signature")
