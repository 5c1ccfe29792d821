"""Host results the registry did not take, kept in order and recorded once it is back.

A daemon keeps writing through a registry outage (expiries, and with a single daemon
everything). Recording only the net difference once the registry is back
(``recorded-late``) loses what came and went in between: a grant pushed just as the
registry went down and removed when it ran out during the outage would leave no audit
event at all. So the daemon keeps every round it could not record, oldest first, and
records them, in order and under their own run ids, before anything newer.

Logins are not kept: their read positions were not saved, so later rounds read the
lines again. The backlog is bounded (:data:`MAX_RESULTS`); past it the oldest rounds are
dropped with an error, and ``recorded-late`` still records their net effect.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from keyward.daemon.failures import REGISTRY_FAILURES, first_line

if TYPE_CHECKING:
    from keyward.agent.reconcile import HostResult
    from keyward.engine.recorder import Recorder

MAX_RESULTS = 50_000  # host results kept; about the size of a few rounds of a large fleet


class Backlog:
    """Unrecorded rounds: (run id, results), oldest first."""

    def __init__(self, log: Any, max_results: int = MAX_RESULTS) -> None:
        self._rounds: list[tuple[str, list[HostResult]]] = []
        self._log = log
        self._max = max_results
        self._flushing = asyncio.Lock()

    def __len__(self) -> int:
        return sum(len(results) for _, results in self._rounds)

    def keep(self, run_id: str, results: list[HostResult]) -> None:
        """Keep a round's results (without their login lines) for later."""
        if not results:
            return
        self._rounds.append((run_id, [dataclasses.replace(r, auth=None) for r in results]))
        while len(self) > self._max and len(self._rounds) > 1:
            dropped, lost = self._rounds.pop(0)
            self._log.error(
                "unrecorded_dropped",
                run_id=dropped,
                hosts=[r.host.name for r in lost][:20],
                reason="backlog full; the net change will be recorded late",
            )

    async def flush(self, recorder_for: Callable[[str], Recorder]) -> bool:
        """Record the kept rounds in order; False (and kept) when the registry refuses."""
        async with self._flushing:
            while self._rounds:
                run_id, results = self._rounds[0]
                recorder = recorder_for(run_id)
                try:
                    await asyncio.to_thread(recorder.record, results)
                except REGISTRY_FAILURES as exc:  # not translated: still unavailable
                    self._log.warning("backlog_not_recorded", error=first_line(exc))
                    return False
                if recorder.unrecorded:
                    return False
                self._rounds.pop(0)
                self._log.info("recorded_after_outage", run_id=run_id, hosts=len(results))
            return True
