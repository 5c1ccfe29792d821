"""The layers of docs/architecture.md, enforced over every import in ``keyward/``.

Every ``import`` and ``from ... import`` counts, at module level or inside a function
(the CLI imports lazily, so most of its imports are function-local), and under
``TYPE_CHECKING`` too: a layer that only names another in annotations still depends on
its shape. Relative imports are resolved against the importing module.

The rules:

- the pure core (state, desired state, plan, keys, inventory, ...) imports no database,
  SSH, CLI, logging, registry, agent, engine or daemon code;
- the engine (``keyward.engine``) imports no CLI and no click;
- nothing outside ``keyward.cli`` (and ``keyward/__main__.py``) imports ``keyward.cli``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "keyward"

# The pure core: plain values in, plain values out (docs/architecture.md).
PURE_CORE = (
    "keyward.adoption",
    "keyward.attestation",
    "keyward.authorized_keys",
    "keyward.clock",
    "keyward.desired",
    "keyward.errors",
    "keyward.explain",
    "keyward.inventory",
    "keyward.keys",
    "keyward.logins",
    "keyward.memo",
    "keyward.options",
    "keyward.plan",
    "keyward.privkey",
    "keyward.sshsig",
    "keyward.state",
)
PURE_CORE_MAY_NOT = (
    "sqlmodel",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "asyncssh",
    "click",
    "rich",
    "structlog",
    "keyward.logs",
    "keyward.registry",
    "keyward.agent",
    "keyward.cli",
    "keyward.engine",
    "keyward.daemon",
)
ENGINE = ("keyward.engine",)
ENGINE_MAY_NOT = ("keyward.cli", "keyward.daemon", "click")
CLI = ("keyward.cli", "keyward.__main__")


@dataclass(frozen=True)
class Rule:
    name: str
    applies_to: tuple[str, ...]  # importing modules (a package covers its submodules)
    forbidden: tuple[str, ...]  # imported modules (likewise)
    exempt: tuple[str, ...] = ()  # importers the rule does not cover


RULES = (
    Rule("the pure core imports no I/O, logging or outer layer", PURE_CORE, PURE_CORE_MAY_NOT),
    Rule("the engine imports no CLI", ENGINE, ENGINE_MAY_NOT),
    Rule("nothing but the CLI imports the CLI", ("keyward",), ("keyward.cli",), exempt=CLI),
)


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether module ``name`` is one of ``prefixes`` or inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every module ``source`` imports, anywhere in it, with its line.

    ``from a import b`` yields ``a`` and ``a.b`` (``b`` may be a submodule), so
    ``from keyward import cli`` is caught like ``import keyward.cli``.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(module: str, imported: list[tuple[int, str]]) -> list[str]:
    out = []
    for rule in RULES:
        if not within(module, rule.applies_to) or within(module, rule.exempt):
            continue
        lines = set()  # ``from a import b`` yields a and a.b: one report per statement
        for line, name in imported:
            if within(name, rule.forbidden) and line not in lines:
                lines.add(line)
                out.append(f"{module}:{line} imports {name} ({rule.name})")
    return out


def package_violations(root: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        imported = imports_of(path.read_text(), module, path.name == "__init__.py")
        out += violations(module, imported)
    return out


def test_keyward_keeps_its_layers() -> None:
    assert package_violations() == []


def test_every_pure_core_module_exists() -> None:
    """A renamed module must not silently drop out of the rules."""
    for name in PURE_CORE + ENGINE:
        relative = Path(*name.split(".")[1:])
        assert (PACKAGE / relative).is_dir() or (PACKAGE / f"{relative}.py").is_file(), name


# (importing module, its source, whether a violation must be found)
CASES = [
    ("keyward.plan", "import sqlmodel\n", True),
    ("keyward.plan", "from sqlalchemy.orm import Session\n", True),
    ("keyward.desired", "def f():\n    import asyncssh\n", True),  # function-local
    (
        "keyward.state",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import click\n",
        True,
    ),
    ("keyward.keys", "from keyward.logs import get_logger\n", True),
    ("keyward.keys", "import structlog\n", True),
    ("keyward.inventory.model", "from keyward.registry.store import Registry\n", True),
    ("keyward.inventory.model", "from ..registry import store\n", True),  # relative
    ("keyward.explain", "from keyward import engine\n", True),
    ("keyward.explain", "from keyward.agent.reconcile import HostResult\n", True),
    ("keyward.plan", "from keyward.desired import DesiredFile\n", False),
    ("keyward.plan", "import hashlib\nfrom keyward.errors import KeywardError\n", False),
    ("keyward.plan", "import keyward.registryish\n", False),  # a prefix, not the package
    ("keyward.engine.round", "def f():\n    from keyward.cli.output import progress\n", True),
    ("keyward.engine.round", "import click\n", True),
    ("keyward.engine.round", "from keyward import cli\n", True),
    ("keyward.engine.round", "from keyward.registry.store import Registry\n", False),
    ("keyward.engine.round", "from keyward.agent.reconcile import HostResult\n", False),
    ("keyward.registry.record", "from keyward.cli.context import AppContext\n", True),
    ("keyward.daemon.service", "def f():\n    import keyward.cli.main\n", True),
    ("keyward.registry.backup", "from keyward.cli import backup_cmds\n", True),
    ("keyward.cli.offboard_cmds", "from keyward.cli.rounds import load_inputs\n", False),
    ("keyward.cli.main", "from .context import AppContext\n", False),
    ("keyward.__main__", "from keyward.cli.main import main\n", False),
]


@pytest.mark.parametrize(("module", "source", "violates"), CASES)
def test_checker_catches_violations(module: str, source: str, violates: bool) -> None:
    imported = imports_of(source, module)
    assert bool(violations(module, imported)) is violates, (module, source, imported)


def test_checker_walks_a_package(tmp_path: Path) -> None:
    """The whole walk, on a small package with one violation of each rule."""
    root = tmp_path / "keyward"
    for name, text in {
        "__init__.py": "",
        "plan.py": "def f():\n    import sqlmodel\n",
        "engine/__init__.py": "from ..cli import main\n",
        "registry/__init__.py": "",
        "registry/store.py": "from keyward.cli import context\n",
        "cli/__init__.py": "",
        "cli/main.py": "from keyward.engine import round\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    found = package_violations(root)
    assert [v.split(" imports ")[0] for v in found] == [
        "keyward.engine:1",  # the engine imports no CLI
        "keyward.engine:1",  # nothing but the CLI imports the CLI
        "keyward.plan:2",
        "keyward.registry.store:1",
    ]
