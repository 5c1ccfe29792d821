"""What a notification says: one event, its recipients, a line of text and the facts.

Plain values in, plain values out. The same object becomes the JSON the command hook
reads on stdin and a webhook receives, or a Slack-compatible ``{"text": ...}`` payload.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

EVENTS = (
    "access_requested",
    "access_approved",
    "access_denied",
    "access_expired",
    "key_expiring",
    "grant_expiring",
    "test",
)


@dataclass(frozen=True)
class Recipient:
    username: str
    email: str | None = None


@dataclass(frozen=True)
class Notification:
    event: str
    at: datetime
    recipients: tuple[Recipient, ...]
    text: str
    """One line for people; built from registry values (validated single lines)."""
    details: dict[str, Any]
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    """Per notification; a receiver can drop a retried delivery it already has."""

    def payload(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "id": self.id,
            "at": ts(self.at),
            "recipients": [{"username": r.username, "email": r.email} for r in self.recipients],
            "text": self.text,
            "details": self.details,
        }

    def slack(self) -> dict[str, Any]:
        """Slack's incoming-webhook shape (Mattermost and others accept it too).

        ``<``, ``>`` and ``&`` are escaped as Slack asks, so a reason such as ``<!channel>``
        is shown as text instead of paging a whole channel.
        """
        names = ", ".join(r.username for r in self.recipients)
        text = f"keyward: {self.text}" + (f" (for {names})" if names else "")
        return {"text": slack_escape(text)}


def slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def ts(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def duration(seconds: int) -> str:
    """``7200`` -> ``2h``; the form ``keyward access request --for`` takes."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def access_text(event: str, row: dict[str, Any]) -> str:
    """The line for an access request event; ``row`` as ``keyward access list --json``."""
    what = f"{row['role']} in {row['environment']}"
    rid = row["id"]
    if event == "access_requested":
        return (
            f"{row['person']} requests {what} for {duration(row['duration_seconds'])}: "
            f"{row['reason']} (request {rid}; keyward access approve {rid})"
        )
    if event == "access_approved":
        by, who = row["decided_by"], row["person"]
        return f"{by} approved {who}'s {what} until {row['until']} (request {rid})"
    if event == "access_denied":
        return f"{row['decided_by']} denied {row['person']}'s {what} (request {rid})"
    return f"{row['person']}'s {what} expired at {row['until']} (request {rid})"


def access_notification(
    event: str, row: dict[str, Any], recipients: tuple[Recipient, ...], at: datetime
) -> Notification:
    details = {"request_id": row["id"], **{k: v for k, v in row.items() if k != "id"}}
    return Notification(event, at, recipients, access_text(event, row), details)
