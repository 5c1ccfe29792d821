"""Parsing the dates and durations people type on the command line."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from keyward.errors import UsageError

_DURATION_RE = re.compile(r"^(\d{1,6})([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def end_of_day(text: str, option: str) -> datetime:
    """``YYYY-MM-DD`` means "through that day (UTC)"; a full ISO timestamp is taken as is."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{option}: expected YYYY-MM-DD or an ISO 8601 timestamp") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def start_of_day(text: str, option: str) -> datetime:
    """``YYYY-MM-DD`` as the start of that day (UTC), for ``--since``."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{option}: expected YYYY-MM-DD or an ISO 8601 timestamp") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def duration(text: str, option: str) -> timedelta:
    """``90s``, ``15m``, ``4h``, ``30d``, ``2w``."""
    match = _DURATION_RE.match(text.strip())
    if not match:
        raise UsageError(f"{option}: expected a duration such as 30m, 4h, 30d or 2w")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
