"""What the daemon outlives, in one place.

A one-shot command may stop at the first failure; the daemon must keep enforcing. Two
kinds of failure are expected and logged in one line, after which the loop goes on:

- the registry being unavailable (``REGISTRY_FAILURES``: keyward's own translated errors,
  and the database driver's for the heartbeat's session and errors the translation does
  not cover);
- a host or the network failing, which the engine turns into that host's failed result.

A round that fails as a whole for any other reason hit a bug in keyward. It is still
outlived (a daemon that stops pushing because one round met a bug enforces nothing), but
logged with its traceback under the loop's event, so it never passes for an outage.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from keyward.errors import KeywardError

REGISTRY_FAILURES = (KeywardError, SQLAlchemyError, OSError)


def first_line(exc: BaseException) -> str:
    """An error as one short line for the log."""
    text = exc.message if isinstance(exc, KeywardError) else str(exc)
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def round_failed(log: Any, event: str, exc: Exception, **fields: Any) -> None:
    """Log a round that failed as a whole under ``event``; a bug with its traceback."""
    if isinstance(exc, REGISTRY_FAILURES):
        log.error(event, error=first_line(exc), **fields)
    else:
        log.error(event, error=first_line(exc), bug=type(exc).__name__, exc_info=exc, **fields)
