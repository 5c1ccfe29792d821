"""Time, passed explicitly.

keyward decides a lot by the clock (expiry, grants' ``until``, grace periods).
Code takes a ``Clock`` argument instead of calling ``datetime.now`` so tests
drive time without sleeping and the pure core stays pure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from keyward.errors import UsageError

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """Now, in UTC.  ``KEYWARD_NOW`` (ISO 8601) overrides it, for tests and drills;
    ``KEYWARD_CLOCK_SKEW`` (seconds, may be negative) plays a machine whose clock is off.
    Both are read at every call (``process_clock`` reads them once)."""
    return _clock_from(os.environ.get("KEYWARD_NOW"), os.environ.get("KEYWARD_CLOCK_SKEW"))()


def process_clock() -> Clock:
    """``system_clock`` with ``KEYWARD_NOW`` and ``KEYWARD_CLOCK_SKEW`` read once, now.

    For one process's run, whose environment does not change: the daemon asks the time
    several times per host in every round, and reading the two variables from
    ``os.environ`` each time was an eighth of its push at a thousand hosts.
    """
    try:
        return _clock_from(os.environ.get("KEYWARD_NOW"), os.environ.get("KEYWARD_CLOCK_SKEW"))
    except UsageError:
        return system_clock  # a malformed value fails where the time is asked, as before


MAX_SKEW = 10 * 366 * 86400.0  # seconds: a clock off by more is a typo, not a drill


def _clock_from(fixed: str | None, skew: str | None) -> Clock:
    """The clock the two settings describe; a malformed one is a ``UsageError`` naming it."""
    if fixed:
        try:
            moment = parse_utc(fixed)
        except ValueError:
            raise UsageError(f"KEYWARD_NOW is not an ISO 8601 time: {fixed!r}") from None
        return lambda: moment
    if skew:
        try:
            seconds = float(skew)
        except ValueError:
            seconds = math.nan
        if not abs(seconds) <= MAX_SKEW:  # also refuses nan
            raise UsageError(
                f"KEYWARD_CLOCK_SKEW must be a number of seconds within ±{MAX_SKEW:.0f}: {skew!r}"
            )
        offset = timedelta(seconds=seconds)
        return lambda: datetime.now(UTC) + offset
    return _utc_now


def _utc_now() -> datetime:
    return datetime.now(UTC)


def parse_utc(text: str) -> datetime:
    """Parse an ISO 8601 date or timestamp; naive values are taken as UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def as_utc(value: datetime) -> datetime:
    """Normalise a datetime read back from a database (SQLite drops the zone)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
