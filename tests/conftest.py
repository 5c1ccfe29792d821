"""Shared fixtures: registries on SQLite and on a real PostgreSQL server, and the CLI."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_env import AgentEnv, agent_env
from tests.cli_runner import Keyward
from tests.pgserver import PgServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with PgServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty registry URL on each backend (the same tests run on both)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    name = "kw_" + uuid.uuid4().hex[:12]
    url = server.create_database(name)
    try:
        yield url
    finally:
        server.drop_database(name)


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``audit verify`` and ``backup create`` signs a checkpoint; keep each test's
    checkpoints and signing key in its own directory, never the machine's state directory."""
    monkeypatch.setenv("KEYWARD_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture
def kw(db_url: str, tmp_path: Path) -> Keyward:
    """The CLI on an initialised registry, with no inventory (default key policy)."""
    runner = Keyward(db_url, str(tmp_path / "no-inventory"))
    runner.ok("init")
    return runner


@pytest.fixture
def env(tmp_path: Path, sqlite_url: str) -> Iterator[AgentEnv]:
    """A real three-host sshd fleet with an inventory and a SQLite registry."""
    yield from agent_env(sqlite_url, tmp_path)


@pytest.fixture
def env_any_db(tmp_path: Path, db_url: str) -> Iterator[AgentEnv]:
    """The same fleet, on each registry backend."""
    yield from agent_env(db_url, tmp_path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI every test must run: a skip there (say, sshd or PostgreSQL missing) is a failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {report.longrepr}"
