"""The daemon's backlog of rounds the registry did not take (keyward.daemon.backlog).

Rounds are recorded in order, under their own run ids, once the registry takes them
again; nothing newer is recorded before them; a full backlog drops the oldest, loudly.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from keyward.agent.reconcile import AuthBatch, HostResult
from keyward.daemon.backlog import Backlog
from keyward.errors import RegistryUnavailable
from keyward.inventory.model import Host

NOW = datetime(2026, 12, 4, tzinfo=UTC)


class Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def _add(self, event: str, **fields: Any) -> None:
        self.events.append(event)

    info = warning = error = _add


@dataclass
class FakeRecorder:
    run_id: str
    registry_up: list[bool]
    recorded: list[tuple[str, list[str]]]
    unrecorded: list[HostResult] = field(default_factory=list)

    def record(self, batch: list[HostResult]) -> None:
        if not self.registry_up[0]:
            self.unrecorded.extend(batch)
            return
        assert all(r.auth is None for r in batch)  # login lines are re-read, never kept
        self.recorded.append((self.run_id, [r.host.name for r in batch]))


def result(name: str) -> HostResult:
    auth = AuthBatch("journal", (), {"cursor": "c"})
    host = Host(name, "prod", "127.0.0.1", 22, "root", ("%h/.ssh/authorized_keys",), "exclusive",
                (), ("root",))  # fmt: skip
    return HostResult(host, NOW, NOW, auth=auth)


def test_rounds_are_recorded_in_order_once_the_registry_is_back() -> None:
    up, recorded = [False], []
    backlog = Backlog(Log())

    def recorder_for(run_id: str) -> Any:
        return FakeRecorder(run_id, up, recorded)

    backlog.keep("d1", [result("web-1"), result("web-2")])
    backlog.keep("d2", [result("web-1")])
    backlog.keep("d3", [])
    assert len(backlog) == 3
    assert asyncio.run(backlog.flush(recorder_for)) is False
    assert recorded == [] and len(backlog) == 3
    up[0] = True
    assert asyncio.run(backlog.flush(recorder_for)) is True
    assert recorded == [("d1", ["web-1", "web-2"]), ("d2", ["web-1"])]
    assert len(backlog) == 0


def test_a_registry_error_that_escapes_the_recorder_keeps_the_round() -> None:
    backlog = Backlog(Log())

    class Failing:
        def __init__(self) -> None:
            self.unrecorded: list[HostResult] = []

        def record(self, batch: list[HostResult]) -> None:
            raise RegistryUnavailable("down")

    backlog.keep("d1", [result("web-1")])
    assert asyncio.run(backlog.flush(lambda run_id: Failing())) is False  # type: ignore[arg-type,return-value]
    assert len(backlog) == 1


def test_a_full_backlog_drops_the_oldest_rounds_loudly() -> None:
    log = Log()
    backlog = Backlog(log, max_results=3)
    for i in range(4):
        backlog.keep(f"d{i}", [result("web-1"), result("web-2")])
    assert len(backlog) == 2  # the newest round only
    assert log.events.count("unrecorded_dropped") == 3
