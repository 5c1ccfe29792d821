"""One-time sign-in codes: how a browser signs in without a password.

The web page shows a short code to a browser that is not signed in; the person runs
``keyward auth browser CODE`` in their terminal, a request signed with their own key,
which confirms the code for them; the browser that was shown the code then gets a
session.  A code is bound to the browser it was shown to (the random pre-session
cookie it was issued with, kept here only as a hash), lives five minutes, and is used
once: confirming it twice, or redeeming it from another browser, fails.

The store is in memory, per server process, like the nonce store (one ``keyward
server`` process is the supported deployment); ``max_entries`` bounds what anonymous
visitors can make it hold.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from keyward.errors import KeywardError

LIFETIME = timedelta(minutes=5)
CODE_CHARS = 8
DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_PER_CLIENT = 20


class CodeRefused(KeywardError):
    """A code that is unknown, expired or already used."""


class TooManyCodes(CodeRefused):
    """Too many codes pending, for one client or in all (the server answers 429)."""


@dataclass
class _Pending:
    browser: str  # sha256 of the pre-session cookie
    expires_at: datetime
    client: str = ""  # the address it was shown to (``keyward.server.clients``)
    username: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True)
class Confirmed:
    """Who confirmed a code, with which key."""

    username: str
    fingerprint: str


def normalize(text: str) -> str:
    """``abcd-efgh`` and ``ABCD EFGH`` are the code ``ABCDEFGH``."""
    return "".join(text.split()).replace("-", "").upper()


def display(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


def _browser(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


class BrowserCodes:
    """Pending codes; safe across threads (handlers run in a thread pool)."""

    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, per_client: int = DEFAULT_PER_CLIENT
    ) -> None:
        self.max_entries = max_entries
        self.per_client = per_client
        self._codes: dict[str, _Pending] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._codes)

    def code_for(self, cookie: str, now: datetime, client: str = "") -> tuple[str, datetime]:
        """The live code of this browser, or a new one; (code, expiry).

        ``TooManyCodes`` when ``client`` already has ``per_client`` codes pending, or the
        store ``max_entries``: a page refresh keeps its code, but a client that drops its
        cookie to get new codes is stopped at ``per_client`` for five minutes.
        """
        browser = _browser(cookie)
        with self._lock:
            self._expire(now)
            mine = 0
            for code, pending in self._codes.items():
                if pending.browser == browser and pending.username is None:
                    return code, pending.expires_at
                mine += pending.client == client
            if mine >= self.per_client:
                raise TooManyCodes(
                    "too many sign-ins in progress from your address; try again in a few minutes"
                )
            if len(self._codes) >= self.max_entries:
                raise TooManyCodes("too many sign-ins in progress; try again in a few minutes")
            code = base64.b32encode(secrets.token_bytes(5)).decode("ascii")[:CODE_CHARS]
            self._codes[code] = _Pending(browser, now + LIFETIME, client)
            return code, now + LIFETIME

    def confirm(self, code: str, username: str, fingerprint: str, now: datetime) -> None:
        """The terminal side: ``username`` (proven by ``fingerprint``) claims ``code``."""
        with self._lock:
            self._expire(now)
            pending = self._codes.get(normalize(code))
            if pending is None or pending.username is not None:
                raise CodeRefused("no such sign-in code (expired, already used, or mistyped)")
            pending.username, pending.fingerprint = username, fingerprint

    def redeem(self, cookie: str, now: datetime) -> Confirmed | None:
        """The browser side: who confirmed this browser's code, once; None if nobody yet."""
        browser = _browser(cookie)
        with self._lock:
            self._expire(now)
            for code, pending in list(self._codes.items()):
                if pending.browser == browser and pending.username is not None:
                    del self._codes[code]
                    assert pending.fingerprint is not None
                    return Confirmed(pending.username, pending.fingerprint)
        return None

    def _expire(self, now: datetime) -> None:
        for code in [c for c, p in self._codes.items() if p.expires_at <= now]:
            del self._codes[code]
