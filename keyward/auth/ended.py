"""Sessions ended before their time: the web page's sign-out, honoured by the server.

Session tokens are checked without a server-side list (``keyward.auth.tokens``); sign-out
from the web page adds the token here, so a copy of the cookie stops working at once,
not only when it expires.  Each entry is kept until the token would have expired
anyway, so the set stays as small as the sign-outs of the last session lifetime.  In
memory, per process, like the nonce store: a restart forgets sign-outs (documented).
"""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime

DEFAULT_MAX_ENTRIES = 100_000


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class EndedSessions:
    """Tokens signed out of, until their expiry; safe across threads."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._ended: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def end(self, token: str, expires_at: datetime, now: datetime) -> None:
        with self._lock:
            self._expire(now)
            if len(self._ended) < self.max_entries:
                self._ended[_key(token)] = expires_at

    def ended(self, token: str) -> bool:
        with self._lock:
            return _key(token) in self._ended

    def _expire(self, now: datetime) -> None:
        for key in [k for k, until in self._ended.items() if until <= now]:
            del self._ended[key]
