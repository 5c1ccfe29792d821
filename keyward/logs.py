"""Structured logging setup: JSON lines for machines, readable lines for people.

Events are snake_case names with context bound as keys (host, account, run
id, fingerprint).  Key material is never logged: only fingerprints.

The console policy (docs/cli.md, "Global options"): a command's answer is on
stdout and its log on stderr, at WARNING and above unless ``-v`` (INFO) or
``-vv`` (DEBUG); ``-q`` keeps errors only.  The format is readable lines when
stderr is a terminal and JSON lines otherwise.  ``--log-format json`` asks for
the full structured log: JSON lines at INFO (what the systemd units use), so
every change a run makes is still a log line.  The daemon, whose only output
is its log, logs at INFO by default.  Only the console's verbosity changes with
these options: the audit trail in the registry records every change regardless.
"""

from __future__ import annotations

import sys
from typing import Any, Literal, TextIO

# structlog is imported by the first get_logger(), not here: it costs tens of milliseconds and
# most commands never log (tests/test_startup.py).  configure() only records its choice.
_pending: tuple[TextIO, bool, int] | None = None

LogFormat = Literal["auto", "human", "json"]

LEVELS = ("debug", "info", "warning", "error")


def console_level(
    verbose: int, quiet: bool, log_format: LogFormat, *, default: str = "warning"
) -> str:
    """The console's log level from ``-v``/``-q``/``--log-format`` (see the module docstring).

    ``default`` is the level without ``-v``/``-q``: WARNING for commands, INFO for
    the daemon.  An explicit ``--log-format json`` means "the full structured log",
    so it starts at INFO.
    """
    if quiet:
        return "error"
    base = LEVELS.index(default)
    if log_format == "json":
        base = min(base, LEVELS.index("info"))
    return LEVELS[max(0, base - verbose)]


def configure(
    stream: TextIO | None = None,
    *,
    json: bool | None = None,
    level: str = "info",
    log_format: LogFormat = "auto",
) -> None:
    """Configure structlog once per process; JSON unless the stream is a terminal.

    ``log_format`` "json"/"human" forces the format; ``json`` (older callers) does too.
    The stream, format and level are decided now (a bad level fails now); structlog itself
    is set up when the first logger is asked for, or at once if it is already loaded.
    """
    global _pending
    out = stream or sys.stderr
    if json is None and log_format != "auto":
        json = log_format == "json"
    as_json = json if json is not None else not _isatty(out)
    import logging  # here, not at import: `--version` and `--help` never configure logs

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
        processors += [structlog.processors.format_exc_info, human_line]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def human_line(_logger: Any, _method: str, event: dict[str, Any]) -> str:
    """One readable line: ``warning: record_failed hosts=web-1,web-2 error="..."``.

    No timestamps (a terminal reader has the time) and no Python reprs: lists are
    comma-joined, mappings and other values are JSON, text with spaces is quoted.
    """
    level = str(event.pop("level", "info"))
    event.pop("timestamp", None)
    name = str(event.pop("event", ""))
    exc = event.pop("exception", None)
    parts = [f"{level}: {name}"]
    parts += [f"{key}={human_value(value)}" for key, value in event.items()]
    line = " ".join(parts)
    return f"{line}\n{exc}" if exc else line


def human_value(value: Any) -> str:
    """A value for people: yes/no, lists comma-joined, mappings as JSON, never a repr."""
    import json  # cached after the first call; keeps json out of every command's start-up

    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(human_value(v) for v in value) or "-"
    if isinstance(value, str):
        return (
            value
            if value and not any(c.isspace() or c in '"=' for c in value)
            else (json.dumps(value, ensure_ascii=False))
        )
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def get_logger(**bound: Any) -> Any:
    structlog = _import_structlog()
    _apply()
    return structlog.get_logger("keyward").bind(**bound)
