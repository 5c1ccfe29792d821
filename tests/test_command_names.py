"""Every ``keyward ...`` command that a message or the docs tell a user to run exists.

The mentions are found in the package's string constants (error messages, help,
docstrings) and in docs/*.md and README.md (code spans and code blocks), then
resolved against the real click command tree, options included: a suggestion such
as ``see keyward inventory show`` must name a command the installed keyward has.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from keyward.cli.main import cli
from keyward.cli.offboard_cmds import DefaultCommandGroup
from tests.agent_env import AgentEnv

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "keyward"
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

WORDS = r"((?:[a-z][\w-]*)(?: (?:[a-z][\w-]*|--[\w-]+))*)"
# 'keyward x y', `keyward x`, "keyward x", ``keyward x``, or "run/see/try keyward x".
MENTION = re.compile(r"(?:['`\"]|\b(?:run|see|try|use|then)\s+)keyward " + WORDS)
DOC_LINE = re.compile(r"^\s*(?:\$ )?keyward " + WORDS)


def resolve(words: list[str]) -> str | None:
    """None if ``keyward <words>`` names a real command (and real options); else why not."""
    command: click.Command = cli
    path = ["keyward"]
    rest = list(words)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("--"):
        name = rest[0]
        # get_command, not .commands: the top-level group loads its commands lazily.
        sub = command.get_command(click.Context(command), name)
        if sub is None:
            if isinstance(command, DefaultCommandGroup):
                break  # "keyward offboard alice ..." runs its default subcommand
            if command is cli:
                return f"no command {name!r}"
            return f"{' '.join(path)} has no subcommand {name!r}"
        command, path = sub, [*path, name]
        rest.pop(0)
    if isinstance(command, DefaultCommandGroup):
        command = command.get_command(click.Context(command), "start") or command
    known = {opt for param in command.params for opt in getattr(param, "opts", [])}
    for word in rest:
        if word.startswith("--") and word not in known:
            return f"{' '.join(path)} has no option {word}"
    return None


def package_strings() -> Iterator[tuple[str, str]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                yield f"{path.relative_to(ROOT)}:{node.lineno}", node.value


def mentions(text: str) -> Iterator[list[str]]:
    for match in MENTION.finditer(text):
        yield match.group(1).split()


def doc_mentions(doc: Path) -> Iterator[tuple[str, list[str]]]:
    in_code = False
    for lineno, line in enumerate(doc.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        where = f"{doc.relative_to(ROOT)}:{lineno}"
        if in_code:
            match = DOC_LINE.match(line)
            if match:
                yield where, match.group(1).split()
            continue
        for span in re.findall(r"`([^`]+)`", line):
            match = DOC_LINE.match(span)
            if match:
                yield where, match.group(1).split()


def test_the_resolver_catches_a_command_that_does_not_exist() -> None:
    assert resolve(["inventory", "check"]) is None
    assert resolve(["hosts", "scan", "--write"]) is None
    assert resolve(["offboard", "status"]) is None
    assert resolve(["reconcile", "again"]) is None  # prose after a leaf command
    assert resolve(["inventory", "nosuch"]) == "keyward inventory has no subcommand 'nosuch'"
    assert resolve(["nosuch"]) == "no command 'nosuch'"
    assert resolve(["hosts", "scan", "--nosuch"]) == "keyward hosts scan has no option --nosuch"
    assert [m for _, s in [("x", "run 'keyward hosts scan --write'")] for m in mentions(s)] == [
        ["hosts", "scan", "--write"]
    ]


def test_every_command_a_message_names_exists() -> None:
    wrong = [
        f"{where}: keyward {' '.join(words)}: {problem}"
        for where, text in package_strings()
        for words in mentions(text)
        if (problem := resolve(words)) is not None
    ]
    assert wrong == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_command_the_docs_name_exists(doc: Path) -> None:
    found = list(doc_mentions(doc))
    if doc.name in ("cli.md", "README.md", "operations.md"):
        assert len(found) > 10  # the extraction works
    wrong = [
        f"{where}: keyward {' '.join(words)}: {problem}"
        for where, words in found
        if (problem := resolve(words)) is not None
    ]
    assert wrong == []


@pytest.mark.parametrize("command", ["plan", "reconcile"])
def test_an_unknown_host_names_close_ones_and_a_real_command(env: AgentEnv, command: str) -> None:
    near = env.hosts[0].name[:-1] + "9"  # one letter off a real name
    result = env.kw.fails(command, "--host", near)
    assert result.err.startswith(f"keyward: error: unknown host {near!r} (did you mean ")
    assert env.hosts[0].name in result.err
    assert "'keyward inventory show'" in result.err
    assert len(result.err.splitlines()) == 1
