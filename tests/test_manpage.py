"""keyward(1) and shell completion: what an administrator reaches for without the docs.

The page is rendered by the real ``groff`` (Debian ``groff-base``, as ``man`` uses it) with
warnings on; a missing groff is an error, not a skip. Completion runs the real CLI in a
subprocess, the way bash calls it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest

from keyward.cli.main import cli
from keyward.cli.manpage import escape, render

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "man" / "keyward.1"
REGENERATE = "python3 -m keyward.cli.manpage -o man/keyward.1"


def command_paths(group: click.Group, prefix: str = "keyward") -> list[str]:
    """Every visible command path, found independently of the generator."""
    paths = []
    for name, command in group.commands.items():
        if command.hidden:
            continue
        paths.append(f"{prefix} {name}")
        if isinstance(command, click.Group):
            paths += command_paths(command, f"{prefix} {name}")
    return paths


@pytest.fixture(scope="module")
def rendered() -> str:
    groff = shutil.which("groff")
    if groff is None:
        pytest.fail("groff not found: install the Debian package 'groff-base'")
    proc = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-rLL=200n", "-P-cbou", str(PAGE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc.stdout


def test_checked_in_page_is_current() -> None:
    assert PAGE.read_text() == render(cli), f"man/keyward.1 is stale: run {REGENERATE}"


def test_page_lists_every_command_and_its_options(rendered: str) -> None:
    for path in command_paths(cli):
        assert f"\n   {path} " in rendered, path
    person_add = rendered.split("keyward person add ", 1)[1].split("\n   keyward ", 1)[0]
    assert "--name TEXT" in person_add and "--email TEXT" in person_add
    assert "[required]" in person_add
    daemon = rendered.split("\n   keyward daemon ", 1)[1].split("\n   keyward ", 1)[0]
    assert "--keepalive FLOAT RANGE" in daemon
    for heading in ("NAME", "SYNOPSIS", "OPTIONS", "COMMANDS", "EXIT STATUS", "SEE ALSO"):
        assert f"\n{heading}\n" in rendered, heading
    assert "_KEYWARD_COMPLETE=bash_source keyward" in rendered
    assert "offboard start" not in rendered  # hidden commands stay hidden


def test_wheel_installs_the_page_where_man_looks() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data_files = project["tool"]["setuptools"]["data-files"]
    assert "man/keyward.1" in data_files["share/man/man1"]


@pytest.mark.parametrize(
    ("text", "troff"),
    [
        ("--db URL", "\\-\\-db URL"),
        ("C:\\path", "C:\\epath"),
        (".hidden line", "\\&.hidden line"),
        ("'quoted", "\\&'quoted"),
        ("a\n.b\nc", "a\n\\&.b\nc"),
        ("plain text.", "plain text."),
    ],
)
def test_escape(text: str, troff: str) -> None:
    assert escape(text) == troff


def complete(words: str, cword: int, shell: str = "bash") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keyward"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "_KEYWARD_COMPLETE": f"{shell}_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(cword),
        },
    )


@pytest.mark.parametrize(
    ("words", "cword", "wanted"),
    [
        ("keyward pe", 1, {"person"}),
        ("keyward person a", 2, {"add"}),
        ("keyward person add alice --n", 4, {"--name"}),
        ("keyward daemon --keep", 2, {"--keepalive"}),
    ],
)
def test_bash_completion(words: str, cword: int, wanted: set[str]) -> None:
    proc = complete(words, cword)
    assert proc.returncode == 0, proc.stderr
    offered = {line.split(",", 1)[1] for line in proc.stdout.splitlines()}
    assert wanted <= offered, proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_documented_and_served(shell: str) -> None:
    source = f"_KEYWARD_COMPLETE={shell}_source keyward"
    assert source in (ROOT / "docs" / "cli.md").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "keyward"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "_KEYWARD_COMPLETE": f"{shell}_source"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "_KEYWARD_COMPLETE" in proc.stdout and "keyward" in proc.stdout
