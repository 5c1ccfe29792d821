"""The daemon's one failure policy: an outage is one line, a bug keeps its traceback."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from keyward.daemon.failures import REGISTRY_FAILURES, first_line, round_failed
from keyward.errors import RegistryUnavailable


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))


@pytest.mark.parametrize(
    "exc",
    [
        RegistryUnavailable("cannot use the registry x: gone"),
        OperationalError("SELECT 1", {}, Exception("database is locked")),
        OSError(5, "I/O error"),
    ],
)
def test_an_outage_is_one_line_without_a_traceback(exc: Exception) -> None:
    assert isinstance(exc, REGISTRY_FAILURES)
    log = Log()
    round_failed(log, "push_round_failed", exc)
    [(event, fields)] = log.events
    assert event == "push_round_failed"
    assert set(fields) == {"error"} and "\n" not in fields["error"]


def test_a_bug_is_logged_with_its_traceback_under_the_same_event() -> None:
    log = Log()
    try:
        {}["missing"]
    except KeyError as exc:
        round_failed(log, "verification_failed", exc)
    [(event, fields)] = log.events
    assert event == "verification_failed"
    assert fields["bug"] == "KeyError" and isinstance(fields["exc_info"], KeyError)


def test_first_line_is_short_and_never_empty() -> None:
    assert first_line(ValueError("a\nb")) == "a"
    assert first_line(RuntimeError()) == "RuntimeError"
    assert len(first_line(ValueError("x" * 1000))) == 300
