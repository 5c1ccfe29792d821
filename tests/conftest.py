"""Shared fixtures: registries on SQLite and on a real PostgreSQL server, and the CLI.

Every test carries exactly one speed class, so a developer can run the fast ones alone
(``scripts/test -m unit``):

- ``fleet``: starts real ``sshd`` hosts, the ``ssh`` client or an OpenLDAP ``slapd``
  (``keyward/testing/slapd.py``), creates local accounts or mounts file systems (root, seconds per
  test). Given by the ``env``/``env_any_db``
  fixtures, or by ``pytestmark = pytest.mark.fleet`` in a module that starts fleets itself.
- ``postgres``: needs the PostgreSQL server (the ``pg_server`` fixture, or ``db_url`` and
  everything built on it in its ``postgresql`` variant).
- ``unit``: everything else, the default. A unit test that starts one of those programs or
  connects to PostgreSQL fails with a message saying which marker it needs, so the
  markers cannot rot: a new module left unmarked is caught the first time it runs. The
  guard sees what the test process itself starts; a test that runs the CLI as a
  subprocess which then starts sshd (``keyward demo``) must be marked by hand.
"""

from __future__ import annotations

import inspect
import os
import shlex
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
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


# -- speed classes: unit / fleet / postgres ------------------------------------------

SPEED_MARKERS = ("unit", "fleet", "postgres")
FLEET_FIXTURES = frozenset({"env", "env_any_db"})
POSTGRES_FIXTURES = frozenset({"pg_server"})

GUARDED_PROGRAMS = {
    "sshd": "fleet",
    "ssh": "fleet",
    "useradd": "fleet",
    "usermod": "fleet",
    "userdel": "fleet",
    "mount": "fleet",
    "umount": "fleet",
    "slapd": "fleet",
    "slapadd": "fleet",
    "chromium": "fleet",
    "chromedriver": "fleet",
    "postgres": "postgres",
    "pg_ctl": "postgres",
    "initdb": "postgres",
    "pg_ctlcluster": "postgres",
    "pg_dump": "postgres",
    "pg_restore": "postgres",
    "psql": "postgres",
}
"""Programs a ``unit`` test may not start, and the marker a test that does needs."""

WRAPPERS = frozenset({"runuser", "sudo", "env", "setpriv", "nice", "timeout", "nsenter"})
"""Programs that run another (``runuser -u postgres -- initdb``): the guard looks past them."""

VIOLATIONS = pytest.StashKey[list[str]]()


def speed_markers(item: pytest.Item) -> set[str]:
    """The speed classes ``item`` is in, from its fixtures, its parameters and its marks."""
    explicit = {name for name in SPEED_MARKERS if item.get_closest_marker(name) is not None}
    fixtures = set(getattr(item, "fixturenames", ()))
    found = explicit - {"unit"}
    if fixtures & FLEET_FIXTURES:
        found.add("fleet")
    callspec = getattr(item, "callspec", None)
    params: dict[str, Any] = callspec.params if callspec is not None else {}
    # db_url asks for pg_server only through getfixturevalue, so its parameter tells.
    if fixtures & POSTGRES_FIXTURES or params.get("db_url") == "postgresql":
        found.add("postgres")
    if "unit" in explicit and found:
        raise pytest.UsageError(
            f"{item.nodeid} is marked unit but needs {' and '.join(sorted(found))}"
        )
    return found or {"unit"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test its speed class before ``-m`` selects on it."""
    for item in items:
        for name in sorted(speed_markers(item)):
            if item.get_closest_marker(name) is None:
                item.add_marker(name)


def refused_program(argv: object) -> str | None:
    """The guarded program ``argv`` would start (looking past a wrapper), or None."""
    if isinstance(argv, str | bytes):
        words = shlex.split(os.fsdecode(argv))
    elif isinstance(argv, os.PathLike):
        words = [os.fspath(argv)]
    else:
        words = [os.fsdecode(word) for word in argv]  # type: ignore[attr-defined]
    if not words:
        return None
    first = os.path.basename(words[0])
    if first == "ssh" and {"-Q", "-V"} & set(words[1:]):
        return None  # only asks the local client what it supports: no host involved
    if first in GUARDED_PROGRAMS:
        return first
    if first in WRAPPERS:
        rest = words[words.index("--") + 1 :] if "--" in words else words[1:]
        return next((w for w in map(os.path.basename, rest) if w in GUARDED_PROGRAMS), None)
    return None


def _unit_guard(item: pytest.Item) -> ExitStack:
    """Patches that make a unit test fail on starting sshd/ssh/PostgreSQL or connecting to it.

    The refusal is raised where the program would start (as a test failure, which no
    ``except Exception`` in the code under test can swallow) and also kept on the item, so
    the report fails even if something caught it anyway.
    """
    violations = item.stash.setdefault(VIOLATIONS, [])

    def refuse(what: str, marker: str) -> None:
        message = f"{item.nodeid} is marked unit but {what}: mark it {marker}"
        violations.append(message)
        pytest.fail(message, pytrace=False)

    real_init = subprocess.Popen.__init__

    def guarded_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        program = refused_program(args)
        if program is not None:
            refuse(f"starts {program}", GUARDED_PROGRAMS[program])
        real_init(self, args, *rest, **kwargs)

    def no_pg(real: Callable[..., Any]) -> Callable[..., Any]:
        """Refuse a connection that reached a server; a refused attempt is fine for unit."""

        def connect(*args: Any, **kwargs: Any) -> Any:
            connection = real(*args, **kwargs)
            connection.close()
            refuse("connects to PostgreSQL", "postgres")

        async def connect_async(*args: Any, **kwargs: Any) -> Any:
            connection = await real(*args, **kwargs)
            await connection.close()
            refuse("connects to PostgreSQL", "postgres")

        return connect_async if inspect.iscoroutinefunction(real) else connect

    stack = ExitStack()
    stack.enter_context(mock.patch.object(subprocess.Popen, "__init__", guarded_init))
    stack.enter_context(mock.patch.object(psycopg, "connect", no_pg(psycopg.connect)))
    for cls in (psycopg.Connection, psycopg.AsyncConnection):
        stack.enter_context(mock.patch.object(cls, "connect", no_pg(cls.connect)))
    return stack


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """Guard unit tests' setup too: a module-scoped fixture may start a fleet there.

    Teardown is left alone: it is where session fixtures (the PostgreSQL server) stop.
    """
    with _unit_guard(item) if item.get_closest_marker("unit") else ExitStack():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _unit_guard(item) if item.get_closest_marker("unit") else ExitStack():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI every test must run: a skip there (say, sshd or PostgreSQL missing) is a failure.

    A unit test that started a guarded program fails even if the code under test caught the
    refusal.
    """
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    violations = item.stash.get(VIOLATIONS, [])
    if violations and report.when in ("setup", "call") and not report.failed:
        report.outcome = "failed"
        report.longrepr = violations[0]
    _fail_skip_in_ci(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """The same for a whole module skipped while it is collected (``pytest.importorskip``,
    ``pytest.skip(allow_module_level=True)``): no test of it would ever report a skip."""
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())  # type: ignore[attr-defined]


def _fail_skip_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {report.longrepr}"
