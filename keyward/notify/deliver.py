"""Delivering a notification: the command hook and webhooks, bounded and never raising.

- **Command** (``[notify] command``): split like a shell would, run without one (argv),
  the JSON payload on stdin, ``KEYWARD_EVENT`` in its environment, at most
  ``keyward.hook.HOOK_TIMEOUT`` seconds: the same hook runner as ``[policy] alert_command``.
- **Webhooks** (``[notify] webhook``): a JSON POST (or Slack's ``{"text"}``), signed with
  HMAC-SHA256 when ``secret_file`` is set, ``timeout`` seconds per attempt, ``retries``
  more attempts with a short backoff for a network error, 429 or 5xx, none for another
  answer. Redirects are not followed: the body must not be re-sent somewhere else.

The standard library's urllib is enough for one POST; httpx would be a dependency for
nothing (the server and the daemon do not otherwise make HTTP requests).

Every attempt that ends a delivery is logged: ``notification_sent`` or
``notification_failed`` with the event, channel, recipients and what it is about. A
webhook is logged by scheme and host only, since Slack-style URLs carry a secret in
their path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from keyward.errors import UsageError
from keyward.hook import run_hook
from keyward.inventory.notify_settings import NotifySettings
from keyward.logs import get_logger
from keyward.notify.message import Notification

BACKOFF = 0.5  # seconds before the first retry; doubles
SIGNATURE_HEADER = "X-Keyward-Signature"
TIMESTAMP_HEADER = "X-Keyward-Timestamp"
MAX_SECRET = 4096


def read_secret(path: Path) -> bytes:
    """The webhook signing secret; refused when others may read it (like server.secret)."""
    try:
        info = path.stat()
        data = path.read_bytes()[: MAX_SECRET + 1]
    except OSError as exc:
        raise UsageError(f"[notify] secret_file {path}: {exc.strerror}") from None
    if info.st_mode & 0o077:
        raise UsageError(f"[notify] secret_file {path} must not be readable by others (chmod 600)")
    secret = data.strip()
    if not 16 <= len(secret) <= MAX_SECRET:
        raise UsageError(f"[notify] secret_file {path} must hold 16-{MAX_SECRET} bytes")
    return secret


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256 over ``<timestamp>.<body>``: what receivers check."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


@dataclass
class Deliverer:
    settings: NotifySettings
    secret: bytes | None = None
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_settings(cls, settings: NotifySettings) -> Deliverer:
        secret = read_secret(settings.secret_file) if settings.secret_file else None
        return cls(settings, secret)

    def deliver(self, note: Notification) -> bool:
        """Send ``note`` through every configured channel; True when all of them took it."""
        ok = True
        if self.settings.command:
            ok = self._run_command(note) and ok
        for url in self.settings.webhooks:
            ok = self._post(url, note) and ok
        return ok

    def _log(self, note: Notification, channel: str, error: str | None, **extra: Any) -> None:
        log = get_logger(component="notify")
        fields: dict[str, Any] = {
            "notification": note.id,
            "notify_event": note.event,
            "channel": channel,
            "recipients": [r.username for r in note.recipients],
            **{k: v for k, v in note.details.items() if k in _ABOUT},
            **extra,
        }
        if error is None:
            log.info("notification_sent", **fields)
        else:
            log.warning("notification_failed", error=error, **fields)

    def _run_command(self, note: Notification) -> bool:
        assert self.settings.command is not None
        env = {**os.environ, "KEYWARD_EVENT": note.event}
        error = run_hook(self.settings.command, note.payload(), env)
        self._log(note, "command", error)
        return error is None

    def _post(self, url: str, note: Notification) -> bool:
        body = json.dumps(
            note.slack() if self.settings.format == "slack" else note.payload()
        ).encode()
        error: str | None = None
        attempts = 1 + self.settings.retries
        for attempt in range(1, attempts + 1):
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "keyward-notify",
                "X-Keyward-Event": note.event,
                "X-Keyward-Delivery": note.id,
                TIMESTAMP_HEADER: timestamp,
            }
            if self.secret is not None:
                headers[SIGNATURE_HEADER] = sign(self.secret, timestamp, body)
            # The scheme is http(s): checked when [notify] was read (notify_settings).
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
            retry = False
            try:
                with _OPENER.open(request, timeout=self.settings.timeout) as response:
                    response.read(65536)
                    error = None
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                retry = exc.code == 429 or exc.code >= 500
            except (OSError, ValueError) as exc:  # URLError, timeouts, refused, TLS
                reason = getattr(exc, "reason", None) or exc
                error = str(reason) or type(exc).__name__
                retry = True
            if error is None or not retry or attempt == attempts:
                break
            self.sleep(BACKOFF * 2 ** (attempt - 1))
        self._log(note, "webhook", error, url=where(url), attempts=attempt)
        return error is None


_ABOUT = ("request_id", "person", "role", "environment", "fingerprint", "grant_id", "until")
