"""Structured logging setup: JSON lines for machines, readable lines for people.

Events are snake_case names with context bound as keys (host, account, run
id, fingerprint).  Key material is never logged: only fingerprints.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

# structlog is imported by the first get_logger(), not here: it costs tens of milliseconds and
# most commands never log (tests/test_startup.py).  configure() only records its choice.
_pending: tuple[TextIO, bool, int] | None = None


def configure(
    stream: TextIO | None = None, *, json: bool | None = None, level: str = "info"
) -> None:
    """Configure structlog once per process; JSON unless the stream is a terminal.

    The stream, format and level are decided now (a bad level fails now); structlog itself
    is set up when the first logger is asked for, or at once if it is already loaded.
    """
    global _pending
    out = stream or sys.stderr
    as_json = json if json is not None else not out.isatty()
    _pending = (out, as_json, logging.getLevelNamesMapping()[level.upper()])
    if "structlog" in sys.modules:
        _apply()


def _import_structlog() -> Any:
    """``import structlog``, without letting it import ``rich``.

    structlog imports rich, when installed, for pretty tracebacks in its console renderer;
    keyward never uses them (JSON logs, or plain lines on a terminal), and rich costs about
    50 ms on every command that logs.  A ``None`` in ``sys.modules`` makes that import fail
    as if rich were absent; it is removed again so other code can still import rich.
    """
    if "structlog" in sys.modules:
        return sys.modules["structlog"]
    block = "rich" not in sys.modules
    if block:
        sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog
    finally:
        if block and sys.modules.get("rich", False) is None:
            del sys.modules["rich"]
    return structlog


def _apply() -> None:
    global _pending
    if _pending is None:
        return
    structlog = _import_structlog()

    out, as_json, threshold = _pending
    _pending = None
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if as_json:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors += [
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> Any:
    structlog = _import_structlog()
    _apply()
    return structlog.get_logger("keyward").bind(**bound)
