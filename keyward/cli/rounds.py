"""The engine as commands drive it: what a command's round runs with, and its exit codes.

``plan``, ``reconcile``, ``offboard`` and ``directory sync`` run rounds of
``keyward.engine``; the little they share as commands (the surroundings from the global
options, the inputs from the command's inventory, how a lock wait is shown) lives here, so
no command module imports another.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from keyward.cli.context import AppContext
from keyward.cli.output import chatter
from keyward.logs import get_logger

if TYPE_CHECKING:
    from keyward.engine.inputs import RoundInputs
    from keyward.engine.round import Surroundings

EXIT_IN_SYNC = 0
EXIT_FAILED = 1
EXIT_PENDING = 3


def surroundings(app: AppContext) -> Surroundings:
    """The registry, actor, clock and sleep a command's round runs with.

    The agent's registry: a round's events keep the actor as given (``keyward-agent``).
    """
    from keyward.engine.round import Surroundings

    registry = app.registry(agent=True)
    return Surroundings(registry, app.actor, registry.clock, time.sleep)


def load_inputs(app: AppContext, env: str | None, host: str | None) -> RoundInputs:
    """The round's inputs from the command's inventory and registry."""
    from keyward.engine import inputs

    around = surroundings(app)
    return inputs.load_inputs(around.registry, around.clock, app.inventory_dir(), env, host)


def say_lock_wait(holder: str) -> None:
    """On stderr (and in the log): a writer is waiting, and for whom."""
    get_logger().info("lock_wait", holder=holder)
    chatter(f"waiting for the writers' lock held by {holder}", err=True)
