"""One ``find_sshd`` decides both which demo runs and which binary ``LocalFleet`` starts.

When the demo and the fleet looked in different places, a machine with sshd only in
``/usr/local/sbin`` chose the OpenSSH demo and then could not start it.  The table below
needs no real sshd: each case builds directories with fake executables.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from keyward.testing.fleet import FleetError
from keyward.testing.sshd import SSHD_DIRS, find_sshd


def _fake(directory: Path, *, executable: bool = True, name: str = "sshd") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o755 if executable else 0o644)
    return path


# (what exists under tmp: dir -> "x" executable sshd, "-" non-executable, "d" a directory;
#  $PATH dirs; the fixed dirs; the dir whose sshd is expected, or None)
CASES = [
    pytest.param(
        {"local_sbin": "x"},
        [],
        ["usr_sbin", "local_sbin", "sbin"],
        "local_sbin",
        id="only-in-usr-local-sbin",
    ),
    pytest.param(
        {"usr_sbin": "x", "local_sbin": "x"},
        [],
        ["usr_sbin", "local_sbin"],
        "usr_sbin",
        id="fixed-dirs-in-order",
    ),
    pytest.param(
        {"bin": "x", "usr_sbin": "x"}, ["bin"], ["usr_sbin"], "bin", id="path-before-fixed-dirs"
    ),
    pytest.param(
        {"bin1": "-", "bin2": "x"}, ["bin1", "bin2"], [], "bin2", id="not-executable-is-skipped"
    ),
    pytest.param(
        {"bin1": "d", "usr_sbin": "x"},
        ["bin1"],
        ["usr_sbin"],
        "usr_sbin",
        id="directory-is-skipped",
    ),
    pytest.param({"bin": "-"}, ["bin", "empty"], ["usr_sbin"], None, id="none-anywhere"),
    pytest.param({}, [], [], None, id="nothing-to-search"),
]


@pytest.mark.parametrize(("layout", "path_dirs", "fixed_dirs", "expected"), CASES)
def test_find_sshd_table(
    tmp_path: Path,
    layout: dict[str, str],
    path_dirs: list[str],
    fixed_dirs: list[str],
    expected: str | None,
) -> None:
    for name, kind in layout.items():
        if kind == "d":
            (tmp_path / name / "sshd").mkdir(parents=True)
        else:
            _fake(tmp_path / name, executable=kind == "x")
    path = os.pathsep.join(str(tmp_path / d) for d in path_dirs)
    found = find_sshd(path, [str(tmp_path / d) for d in fixed_dirs])
    assert found == (None if expected is None else str(tmp_path / expected / "sshd"))


def test_find_sshd_reads_this_process_path_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(fake.parent))
    assert find_sshd(dirs=[]) == str(fake)
    assert find_sshd() == str(fake)  # $PATH comes before the sbin directories


def test_find_sshd_never_looks_in_the_current_directory_and_answers_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty $PATH entry means "here" to a shell; sshd must be started by absolute path."""
    _fake(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert find_sshd(os.pathsep, []) is None
    assert find_sshd("", []) is None
    _fake(tmp_path / "rel")
    found = find_sshd("rel", [])
    assert found == str(tmp_path / "rel" / "sshd") and os.path.isabs(found)


def test_default_places_are_the_usual_sbin_directories() -> None:
    assert SSHD_DIRS[:2] == ("/usr/sbin", "/usr/local/sbin")


def test_the_demo_and_the_fleet_use_the_same_find_sshd() -> None:
    from keyward.cli import demo
    from keyward.testing import localfleet, sshd

    assert demo.find_sshd is sshd.find_sshd
    assert localfleet.find_sshd is sshd.find_sshd


def test_the_demo_chooses_openssh_exactly_where_the_fleet_finds_its_sshd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyward.cli import demo
    from keyward.testing.localfleet import sshd_binary

    fake = _fake(tmp_path / "local" / "sbin")
    monkeypatch.delenv("KEYWARD_DEMO_BACKEND", raising=False)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert demo.choose_backend() == demo.OPENSSH
    assert sshd_binary() == str(fake)


def test_the_fleet_without_sshd_says_where_it_looked(monkeypatch: pytest.MonkeyPatch) -> None:
    from keyward.testing import localfleet

    monkeypatch.setattr(localfleet, "find_sshd", lambda: None)
    with pytest.raises(FleetError, match="/usr/local/sbin"):
        localfleet.sshd_binary()
    with pytest.raises(FleetError, match="not installed"):
        localfleet.LocalFleet(Path("/nonexistent"), 1).start()


@pytest.mark.fleet  # runs a program named sshd (a fake one that logs its arguments)
def test_local_fleet_starts_the_sshd_find_sshd_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyward.testing.localfleet import LocalFleet

    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "sshd"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$0 $*" >> {calls}\necho "fake sshd" >&2\nexit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    fleet = LocalFleet(tmp_path / "fleet", 1, authorized_keys_file=".ssh/authorized_keys")
    with pytest.raises(FleetError, match=r"sshd rejects config .*: fake sshd"):
        fleet.start()
    assert calls.read_text().startswith(f"{fake} -t -f ")
