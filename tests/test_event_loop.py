"""keyward's runs go on uvloop unless ``KEYWARD_EVENT_LOOP=asyncio`` says otherwise; a
value that names neither is a one-line usage error (exit 2) before anything is done."""

from __future__ import annotations

import asyncio
import warnings

import pytest
import uvloop

from keyward import event_loop
from keyward.errors import UsageError
from tests.agent_env import AgentEnv


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.parametrize(
    ("setting", "module"),
    [
        (None, "uvloop"),
        ("", "uvloop"),
        ("uvloop", "uvloop"),
        ("asyncio", "asyncio.unix_events"),
    ],
)
def test_a_run_goes_on_the_loop_the_setting_names(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, module: str
) -> None:
    if setting is None:
        monkeypatch.delenv("KEYWARD_EVENT_LOOP", raising=False)
    else:
        monkeypatch.setenv("KEYWARD_EVENT_LOOP", setting)
    assert event_loop.run(loop_module()).startswith(module)


def test_the_factory_is_uvloops_own_or_none_for_asyncios() -> None:
    assert event_loop.loop_factory("uvloop") is uvloop.new_event_loop
    assert event_loop.loop_factory("asyncio") is None


@pytest.mark.parametrize("setting", ["uv", "UVLOOP", "trio", "asyncio "])
def test_an_unknown_loop_is_a_usage_error_and_the_run_never_starts(
    monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv("KEYWARD_EVENT_LOOP", setting)
    started = []

    async def body() -> None:
        started.append(True)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited"
        with pytest.raises(UsageError) as caught:
            event_loop.run(body())
    assert str(caught.value) == (
        f"KEYWARD_EVENT_LOOP must be one of uvloop, asyncio, not {setting!r}"
    )
    assert started == []


def test_a_reconcile_on_either_loop_gives_access_and_a_bad_setting_writes_nothing(
    env: AgentEnv,
) -> None:
    env.person_with_key("alice", "devops")
    host = env.hosts[0]
    files = [env.file(h, account) for h in env.hosts for account in (env.deploy, "root")]
    before = {f: f.read_bytes() if f.exists() else None for f in files}

    bad = env.kw.fails("reconcile", env={"KEYWARD_EVENT_LOOP": "libuv"})
    assert "KEYWARD_EVENT_LOOP must be one of uvloop, asyncio, not 'libuv'" in bad.err
    assert len(bad.err.strip().splitlines()) == 1
    assert {f: f.read_bytes() if f.exists() else None for f in files} == before
    assert not env.can_login(host, env.deploy, "alice")

    env.kw.ok("reconcile", env={"KEYWARD_EVENT_LOOP": "asyncio"})
    assert env.can_login(host, env.deploy, "alice")

    env.person_with_key("bob", "devops")
    env.kw.ok("reconcile", env={"KEYWARD_EVENT_LOOP": "uvloop"})
    assert env.can_login(host, env.deploy, "bob")
    assert env.can_login(host, env.deploy, "alice")
