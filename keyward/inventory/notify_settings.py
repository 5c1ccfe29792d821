"""``[notify]`` in ``keyward.toml``: where notifications go and when reminders are due.

Read by ``keyward server`` (requests and decisions), the daemon and ``keyward notify
reminders`` (expired access, renewal reminders). Checked with the rest of the file by
``keyward inventory check``, so a mistyped URL is reported, not silently never called.

    [notify]
    command = "/usr/local/bin/keyward-notify"        # JSON on stdin, argv (no shell)
    webhook = "https://hooks.example.com/keyward"    # or an array of URLs
    format = "json"                                   # json | slack
    secret_file = "/etc/keyward/webhook.secret"       # HMAC-SHA256 signature header
    timeout = 5                                       # seconds per attempt
    retries = 2                                       # extra attempts after a failure
    renewal_days = 14                                 # remind key owners; 0: never
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from keyward.inventory.reader import Reader, has_unsafe_char, short

FORMATS = ("json", "slack")
DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 2
DEFAULT_RENEWAL_DAYS = 14
_FIELDS = ("command", "webhook", "format", "secret_file", "timeout", "retries", "renewal_days")


@dataclass(frozen=True)
class NotifySettings:
    command: str | None = None
    """Run for every notification, split like a shell would and run without one."""
    webhooks: tuple[str, ...] = ()
    format: str = "json"
    secret_file: Path | None = None
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    renewal_days: int = DEFAULT_RENEWAL_DAYS

    @property
    def channels(self) -> bool:
        """Whether anything would receive a notification."""
        return bool(self.command or self.webhooks)


def _webhooks(reader: Reader, table: Mapping[str, Any]) -> tuple[str, ...]:
    value = table.get("webhook")
    if value is None:
        return ()
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        reader.add("notify.webhook", "must be a URL or an array of URLs")
        return ()
    good: list[str] = []
    for url in urls:
        parts = urlsplit(url)
        if has_unsafe_char(url) or " " in url:
            reader.add("notify.webhook", f"{short(url)} has spaces or control characters")
        elif parts.scheme not in ("http", "https") or not parts.hostname:
            reader.add("notify.webhook", f"{short(url)} is not an http(s) URL")
        elif url not in good:
            good.append(url)
    return tuple(good)


def read_notify_settings(data: Mapping[str, Any], reader: Reader, root: Path) -> NotifySettings:
    """The ``[notify]`` table of a parsed ``keyward.toml``; problems go to ``reader``."""
    table = reader.table(data, "", "notify") or {}
    reader.fields(table, "notify", _FIELDS)
    command = reader.string(table, "notify", "command")
    if command is not None and (not command.strip() or has_unsafe_char(command)):
        reader.add("notify.command", "must be a command line without control characters")
        command = None
    form = reader.string(table, "notify", "format", "json") or "json"
    if form not in FORMATS:
        reader.add("notify.format", f"must be one of {', '.join(FORMATS)}")
        form = "json"
    secret = reader.string(table, "notify", "secret_file")
    secret_path = None
    if secret:
        secret_path = Path(secret) if Path(secret).is_absolute() else root / secret
    return NotifySettings(
        command=command,
        webhooks=_webhooks(reader, table),
        format=form,
        secret_file=secret_path,
        timeout=reader.number(table, "notify", "timeout", DEFAULT_TIMEOUT, 0, 60),
        retries=reader.integer(table, "notify", "retries", DEFAULT_RETRIES, 0, 5),
        renewal_days=reader.integer(table, "notify", "renewal_days", DEFAULT_RENEWAL_DAYS, 0, 365),
    )
