"""The event loop keyward's asynchronous runs use: uvloop, unless told otherwise.

The daemon spends its time moving small SSH packets for thousands of connections on one
event loop. uvloop (MagicStack; libuv underneath) runs the same asyncio code with its
transports and scheduling in C. Measured at 10,000 simulated hosts on this project's
2-CPU machine (docs/benchmarks.md, "Scale: third pass"): the daemon's CPU per revocation
round fell, and a revocation reached every host in 2.7 s instead of 2.8-3.9 s. Nothing in
keyward depends on which loop runs it; the test suite runs on uvloop.

``KEYWARD_EVENT_LOOP=asyncio`` runs the standard library's loop instead, to rule uvloop in
or out when something misbehaves; a platform without uvloop gets the standard loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from keyward.errors import UsageError

T = TypeVar("T")

CHOICES = ("uvloop", "asyncio")


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory ``KEYWARD_EVENT_LOOP`` (or ``choice``) names; None for asyncio's own.

    A value other than ``uvloop`` or ``asyncio`` is a ``UsageError`` naming it.
    """
    if choice is None:
        choice = os.environ.get("KEYWARD_EVENT_LOOP") or "uvloop"
    if choice not in CHOICES:
        raise UsageError(f"KEYWARD_EVENT_LOOP must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:  # a platform uvloop does not support: the standard loop
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``loop_factory`` picks."""
    try:
        factory = loop_factory()
    except UsageError:
        main.close()  # never awaited: say so quietly instead of with a RuntimeWarning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
