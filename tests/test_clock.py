"""keyward.clock: the process clock reads the environment's settings once."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from keyward.clock import parse_utc, process_clock, system_clock
from keyward.errors import UsageError


@pytest.mark.parametrize(
    ("skew", "expect_offset"),
    [(None, 0.0), ("-300", -300.0), ("7200", 7200.0)],
)
def test_the_process_clock_follows_the_skew_it_started_with(
    monkeypatch: pytest.MonkeyPatch, skew: str | None, expect_offset: float
) -> None:
    monkeypatch.delenv("KEYWARD_NOW", raising=False)
    if skew is None:
        monkeypatch.delenv("KEYWARD_CLOCK_SKEW", raising=False)
    else:
        monkeypatch.setenv("KEYWARD_CLOCK_SKEW", skew)
    clock = process_clock()
    monkeypatch.setenv("KEYWARD_CLOCK_SKEW", "99999")  # later changes are not seen
    offset = (clock() - datetime.now(UTC)).total_seconds()
    assert abs(offset - expect_offset) < 5
    assert clock().tzinfo is not None


def test_the_process_clock_holds_a_fixed_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYWARD_NOW", "2026-03-01T12:00:00Z")
    clock = process_clock()
    assert clock() == datetime(2026, 3, 1, 12, tzinfo=UTC) == system_clock()
    monkeypatch.setenv("KEYWARD_NOW", "2030-01-01")
    assert clock() == parse_utc("2026-03-01T12:00:00Z")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("KEYWARD_NOW", "not a date", "KEYWARD_NOW is not an ISO 8601 time: 'not a date'"),
        ("KEYWARD_CLOCK_SKEW", "soon", "KEYWARD_CLOCK_SKEW must be a number of seconds"),
        ("KEYWARD_CLOCK_SKEW", "nan", "KEYWARD_CLOCK_SKEW must be a number of seconds"),
        ("KEYWARD_CLOCK_SKEW", "1e12", "KEYWARD_CLOCK_SKEW must be a number of seconds"),
    ],
)
def test_a_malformed_setting_fails_where_the_time_is_asked(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.delenv("KEYWARD_NOW", raising=False)
    monkeypatch.delenv("KEYWARD_CLOCK_SKEW", raising=False)
    monkeypatch.setenv(variable, value)
    clock = process_clock()  # building it does not fail (a command may never ask)
    for ask in (clock, system_clock):
        with pytest.raises(UsageError, match=re.escape(message)):
            ask()
