"""The engine's pieces without hosts or a database: the recorder's one retry policy, the
host-failure boundary (a host's protocol problem fails the host, keyward's bug raises), and
the injected clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from keyward.agent import connection
from keyward.agent.reconcile import RunContext, observed_from_reply, reconcile_host
from keyward.agent.transport import file_read
from keyward.desired import FileTarget
from keyward.engine.recorder import RETRY, Recorder, RetryPolicy
from keyward.errors import HostProtocolError, RegistryUnavailable

NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    warning = info

    def bind(self, **fields: Any) -> Log:
        return self


def result(name: str) -> Any:
    return SimpleNamespace(host=SimpleNamespace(name=name), auth=None)


NOBODY: Any = object()  # what the fakes below never look at (registry, snapshot, connector)


def recorder(log: Log) -> Recorder:
    return Recorder(NOBODY, "tester", lambda: NOW, "run1", (), log)


def refusing(times: int) -> Any:
    """A ``record_hosts`` that refuses ``times`` calls, then records."""
    calls: list[list[str]] = []

    def record_hosts(registry: Any, actor: str, batch: list[Any], *rest: Any) -> None:
        calls.append([r.host.name for r in batch])
        if len(calls) <= times:
            raise RegistryUnavailable("the registry is locked")

    record_hosts.calls = calls  # type: ignore[attr-defined]
    return record_hosts


def test_the_retry_policy_doubles_up_to_its_maximum() -> None:
    assert [RETRY.delay(i) for i in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert RetryPolicy(attempts=3, max_delay=2).delay(5) == 2


def test_a_refused_batch_is_kept_and_recorded_by_the_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = refusing(times=2)
    monkeypatch.setattr("keyward.registry.record.record_hosts", fake)
    log = Log()
    rec = recorder(log)
    rec.record([result("web1"), result("web2")])
    assert [r.host.name for r in rec.unrecorded] == ["web1", "web2"]
    assert log.events == [
        ("record_failed", {"hosts": ["web1", "web2"], "error": "the registry is locked"})
    ]
    slept: list[float] = []
    rec.retry(slept.append)
    # web1 refused once more (1 s), then both recorded one by one; retries log nothing more.
    assert slept == [1.0]
    assert rec.unrecorded == []
    assert fake.calls == [["web1", "web2"], ["web1"], ["web2"], ["web1"]]
    assert len(log.events) == 1


def test_hosts_never_recorded_are_named_and_the_last_attempt_does_not_sleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("keyward.registry.record.record_hosts", refusing(times=1000))
    rec = recorder(Log())
    rec.record([result("web1")])
    slept: list[float] = []
    with pytest.raises(RegistryUnavailable, match="hosts web1 were reconciled"):
        rec.retry(slept.append, RetryPolicy(attempts=4))
    assert slept == [1.0, 2.0, 4.0]


def test_nothing_to_retry_sleeps_not_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("keyward.registry.record.record_hosts", refusing(times=0))
    rec = recorder(Log())
    rec.record([result("web1")])
    slept: list[float] = []
    rec.retry(slept.append)
    assert slept == [] and rec.unrecorded == []


# -- the host-failure boundary ----------------------------------------------------


def context(clock: Any = lambda: NOW, connector: Any = NOBODY) -> RunContext:
    return RunContext(
        snapshot=NOBODY,
        desired={},
        connector=connector,
        now=NOW,
        agent_fingerprint=None,
        run_id="run1",
        clock=clock,
        log=Log(),
    )


HOST: Any = SimpleNamespace(name="web1", managed_accounts=(), authorized_keys=())


def connected_to(read_raises: Exception) -> Any:
    """A connector whose hosts' reads raise ``read_raises``."""

    async def read(files: list[Any]) -> list[Any]:
        raise read_raises

    async def close() -> None:
        return None

    async def open_(host: Any, keepalive: float = 0) -> Any:
        return SimpleNamespace(host=host, read=read, close=close)

    return SimpleNamespace(open=open_)


def test_a_helper_answer_keyward_cannot_read_fails_that_host() -> None:
    connector = connected_to(HostProtocolError("web1: the answer to read is not JSON"))
    got = asyncio.run(reconcile_host(HOST, context(connector=connector)))
    assert got.error == "web1: the answer to read is not JSON"


@pytest.mark.parametrize("bug", [KeyError("action"), ValueError("bad"), TypeError("x")])
def test_a_bug_in_keyward_raises_instead_of_failing_the_host(bug: Exception) -> None:
    with pytest.raises(type(bug)):
        asyncio.run(reconcile_host(HOST, context(connector=connected_to(bug))))


def test_bad_base64_from_a_host_is_a_protocol_error() -> None:
    async def read(content: object) -> object:
        reply = {"ok": True, "files": [{"state": "present", "content_b64": content}]}

        async def call(op: str, **args: object) -> object:
            return reply

        helper: Any = SimpleNamespace(call=call)
        conn = connection.HostConnection(HOST, Any, helper)  # type: ignore[arg-type]
        return await conn.read([("deploy", ".ssh/authorized_keys")])

    with pytest.raises(HostProtocolError, match="not base64"):
        asyncio.run(read("@@not base64@@"))
    with pytest.raises(HostProtocolError):
        asyncio.run(read(42))
    target = FileTarget("web1", "deploy", ".ssh/authorized_keys")
    seen = observed_from_reply(target, file_read({"state": "error", "error": "not an object"}))
    assert seen.error_code is None


@pytest.mark.parametrize(
    ("line", "problem"),
    [("not json\n", "is not JSON"), ("[1, 2]\n", "not a JSON object")],
)
def test_the_helper_conversation_names_an_unreadable_answer(line: str, problem: str) -> None:
    async def readline() -> str:
        return line

    process: Any = SimpleNamespace(
        stdin=SimpleNamespace(write=lambda text: None), stdout=SimpleNamespace(readline=readline)
    )
    helper = connection.RemoteHelper(process, "web1")
    with pytest.raises(HostProtocolError, match=problem):
        asyncio.run(helper.call("hello"))


def test_a_host_s_times_come_from_the_injected_clock() -> None:
    later = NOW + timedelta(minutes=5)
    connector = connected_to(HostProtocolError("web1: gone"))
    got = asyncio.run(reconcile_host(HOST, context(clock=lambda: later, connector=connector)))
    assert got.started == later and got.finished == later
