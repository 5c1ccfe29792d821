"""Talking to ``keyward server``: signed (or session) requests over stdlib ``urllib``.

``urllib`` keeps the CLI's start-up fast (no HTTP library to import) and is all a
handful of JSON calls need.  The server's answers map onto the CLI's exit codes as
if the command had run locally: a refusal (4xx) is exit 2 with the server's one-line
reason; an unreachable or failing server (5xx) is exit 1.

A session token from ``keyward auth login`` is kept per server URL in a 0600 file
under the user's state directory; while it is valid, requests carry it instead of a
signature (one FIDO touch per session, not one per request).
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from keyward.auth.signer import KeySigner
from keyward.clock import Clock, parse_utc
from keyward.errors import KeywardError, UsageError

TIMEOUT = 30.0


class ServerRefused(KeywardError):
    """The server refused the request (4xx): bad input, not allowed, not signed in."""


class ServerUnavailable(KeywardError):
    """The server could not be reached or failed (5xx): an operational failure."""

    exit_code = 1


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"KEYWARD_URL must be http(s)://HOST[:PORT], not {url!r}")
    return url.rstrip("/")


@dataclass(frozen=True)
class SessionFile:
    """Where the session token for one server URL is kept."""

    path: Path

    @classmethod
    def for_url(cls, url: str, state_dir: Path) -> SessionFile:
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        return cls(state_dir / f"session-{digest}.json")

    def load(self, now: datetime) -> dict[str, str] | None:
        """The stored session, if there is one that has not expired."""
        try:
            data = json.loads(self.path.read_text())
            if parse_utc(data["expires_at"]) > now:
                return {k: str(v) for k, v in data.items()}
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def save(self, session: dict[str, str]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(session, out)
        os.replace(tmp, self.path)

    def remove(self) -> bool:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


@dataclass
class ApiClient:
    url: str
    signer: KeySigner | None
    sessions: SessionFile
    clock: Clock
    cafile: str | None = None

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, sign: bool = False
    ) -> Any:
        """One request; the parsed JSON answer, or a ``KeywardError`` with the server's reason.

        ``sign`` forces a signature even when a session is stored (``auth login``).
        """
        data = b"" if body is None else json.dumps(body).encode()
        headers = {"accept": "application/json"}
        if body is not None:
            headers["content-type"] = "application/json"
        session = None if sign else self.sessions.load(self.clock())
        if session is not None and self._session_matches(session):
            headers["authorization"] = f"Bearer {session['token']}"
        elif self.signer is not None:
            headers.update(self.signer.headers(method, path, data, self.clock()))
        else:
            raise UsageError(
                "set KEYWARD_KEY to your registered public key (its private half in your "
                "ssh-agent) or private key file, to sign requests to the server"
            )
        request = urllib.request.Request(  # noqa: S310 (check_url: http and https only)
            self.url + path,
            data=data if method != "GET" else None,
            method=method,
            headers=headers,
        )
        context = (
            ssl.create_default_context(cafile=self.cafile) if self.url.startswith("https") else None
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:  # noqa: S310
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            reason = _reason(exc.read(), exc.code)
            if exc.code >= 500:
                raise ServerUnavailable(f"server error {exc.code}: {reason}") from None
            raise ServerRefused(reason) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            detail = getattr(exc, "reason", exc)
            raise ServerUnavailable(
                f"cannot reach the keyward server at {self.url}: {detail}"
            ) from None

    def _session_matches(self, session: dict[str, str]) -> bool:
        """A stored session is used only with the key it was made with (when one is set)."""
        return self.signer is None or session.get("fingerprint") == self.signer.public.fingerprint


def _reason(raw: bytes, status: int) -> str:
    try:
        value = json.loads(raw)
        if isinstance(value, dict) and isinstance(value.get("error"), str):
            return " ".join(value["error"].split())[:500]
    except ValueError:
        pass
    return f"HTTP {status}"
