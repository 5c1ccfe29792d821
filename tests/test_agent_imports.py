"""The agent talks to hosts, never to the database: that code lives in ``keyward/registry/``.

Every import in ``keyward/agent/*.py`` is read from the source, including those inside
functions and under ``TYPE_CHECKING``, so a lazy import cannot slip past.
"""

from __future__ import annotations

import ast
from pathlib import Path

import keyward

AGENT = Path(keyward.__file__).parent / "agent"
DATABASE = ("sqlmodel", "sqlalchemy", "keyward.registry")


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``; ``from a import b`` yields ``a.b`` too."""
    package = "keyward.agent"
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against keyward.agent
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def is_database(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in DATABASE)


def test_the_agent_imports_no_database_code() -> None:
    files = sorted(AGENT.glob("*.py"))
    assert len(files) > 5, AGENT
    offenders = [
        f"{path.name}:{line}: {module}"
        for path in files
        for line, module in imported(path)
        if is_database(module)
    ]
    assert offenders == []


def test_the_scan_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "def f():\n"
        "    from sqlmodel import select\n"
        "    import sqlalchemy.exc\n"
        "    from ..registry import models\n"
        "    from keyward import registry\n"
        "    from keyward.logins import parse_lines\n"
    )
    flagged = sorted({m for _, m in imported(source) if is_database(m)})
    assert flagged == [
        "keyward.registry",
        "keyward.registry.models",
        "sqlalchemy.exc",
        "sqlmodel",
        "sqlmodel.select",
    ]
