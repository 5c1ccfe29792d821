"""The speed classes (unit / fleet / postgres): assigned to every test, and enforced.

A developer runs ``scripts/test -m unit`` for the fast tests; that is only honest if a test
that starts ``sshd`` or PostgreSQL can never sit in the unit class. These tests run pytest on
a small test file with this suite's conftest and check what it selects and what it refuses.
Nothing here starts a server: the refused programs are refused before they are executed, and
the "allowed" ones are paths that do not exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import refused_program

ROOT = Path(__file__).resolve().parent.parent

INNER_TESTS = """
import subprocess

import psycopg
import pytest


def test_pure():
    assert sum([1, 2]) == 3


def test_starts_sshd():
    subprocess.run(["/nonexistent/sbin/sshd", "-D"], capture_output=True)


def test_swallows_the_refusal():
    try:
        subprocess.run(["ssh", "-F", "/dev/null", "root@127.0.0.1", "true"])
    except BaseException:
        pass


def test_initdb_through_runuser():
    subprocess.run(["runuser", "-u", "postgres", "--", "/nonexistent/bin/initdb", "-D", "x"])


def test_asks_the_ssh_client_what_it_supports():
    with pytest.raises(FileNotFoundError):
        subprocess.run(["/nonexistent/bin/ssh", "-Q", "cipher"])


def test_a_refused_postgres_connection_is_fine():
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect("host=127.0.0.1 port=1 dbname=x connect_timeout=2")


@pytest.mark.fleet
def test_marked_fleet_may_start_sshd():
    with pytest.raises(FileNotFoundError):
        subprocess.run(["/nonexistent/sbin/sshd", "-D"])


def test_fleet_fixture(env):
    pass


def test_per_backend(db_url):
    pass
"""

INI = """[pytest]
addopts = -p no:cacheprovider --strict-markers
markers =
    unit: fast
    fleet: sshd
    postgres: PostgreSQL
"""


CONFTEST = """from tests.conftest import *  # noqa: F403


def pytest_collection_finish(session):
    for item in session.items:
        classes = [m for m in ("unit", "fleet", "postgres") if item.get_closest_marker(m)]
        print("CLASS", item.name, "+".join(classes))
"""


def inner_pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on INNER_TESTS with this suite's conftest (its hooks and fixtures)."""
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    (tmp_path / "pytest.ini").write_text(INI)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-rfE", *args, "test_inner.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CI": ""},
    )


def test_every_test_gets_one_class_and_unmarked_ones_are_unit(tmp_path: Path) -> None:
    proc = inner_pytest(tmp_path, "--collect-only")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    classes = dict(line.split()[1:] for line in proc.stdout.splitlines() if line[:6] == "CLASS ")
    assert classes == {
        "test_pure": "unit",
        "test_starts_sshd": "unit",
        "test_swallows_the_refusal": "unit",
        "test_initdb_through_runuser": "unit",
        "test_asks_the_ssh_client_what_it_supports": "unit",
        "test_a_refused_postgres_connection_is_fine": "unit",
        "test_marked_fleet_may_start_sshd": "fleet",
        "test_fleet_fixture": "fleet",
        "test_per_backend[sqlite]": "unit",
        "test_per_backend[postgresql]": "postgres",
    }


def test_a_unit_test_that_starts_sshd_ssh_or_postgres_fails_naming_the_marker(
    tmp_path: Path,
) -> None:
    proc = inner_pytest(tmp_path, "-m", "unit or fleet", "-k", "not test_fleet_fixture")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "3 failed, 5 passed" in out, out
    assert "test_starts_sshd is marked unit but starts sshd: mark it fleet" in out
    # Caught by the code under test, and still a failure:
    assert "test_swallows_the_refusal is marked unit but starts ssh: mark it fleet" in out
    assert "test_initdb_through_runuser is marked unit but starts initdb: mark it postgres" in out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        (["/usr/sbin/sshd", "-D", "-f", "cfg"], "sshd"),
        (["ssh", "-p", "2222", "root@127.0.0.2", "true"], "ssh"),
        (["ssh", "-Q", "cipher"], None),
        (["ssh-keygen", "-t", "ed25519", "-f", "/tmp/ssh"], None),
        (["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl"], "pg_ctl"),
        (["sudo", "useradd", "-m", "bob"], "useradd"),
        (["mount", "--bind", "a", "b"], "mount"),
        ("initdb -D /tmp/x", "initdb"),
        (b"/usr/bin/true", None),
        (Path("/usr/bin/pg_dump"), "pg_dump"),
        (["python3", "-c", "print('sshd')"], None),
        ([], None),
    ],
)
def test_refused_program(argv: object, refused: str | None) -> None:
    assert refused_program(argv) == refused


SKIPPING_TESTS = {
    "test_skips.py": """
import pytest


@pytest.fixture
def sshd_binary():
    pytest.skip("no sshd here")


@pytest.mark.skipif(True, reason="no PostgreSQL here")
def test_marked():
    pass


def test_in_body():
    pytest.skip("no browser here")


def test_in_fixture(sshd_binary):
    pass
""",
    "test_module_skip.py": """
import pytest

pytest.skip("no sudo here", allow_module_level=True)


def test_never_collected():
    pass
""",
    "test_importorskip.py": """
import pytest

pytest.importorskip("no_such_browser_driver")


def test_never_collected():
    pass
""",
}


@pytest.mark.parametrize("ci", ["true", ""])
def test_in_ci_every_kind_of_skip_is_a_failure(tmp_path: Path, ci: str) -> None:
    """CI=true (what .ci/run sets): a missing sshd, PostgreSQL or browser cannot pass as a
    skip, whether a test, its fixture, its marker or its whole module asks to skip."""
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "pytest.ini").write_text(INI)
    for name, text in SKIPPING_TESTS.items():
        (tmp_path / name).write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rN", "--continue-on-collection-errors"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CI": ci},
    )
    out = proc.stdout
    if ci:
        assert proc.returncode == 1, out + proc.stderr
        assert out.count("skipped in CI, where every test must run") == 5, out
        for reason in ("no sshd", "no PostgreSQL", "no browser", "no sudo", "no_such_browser"):
            assert reason in out, (reason, out)
        assert " skipped" not in out.splitlines()[-1], out
    else:
        assert proc.returncode == 0, out + proc.stderr
        assert "5 skipped" in out.splitlines()[-1], out
