"""docs/security.md maps each guarantee to the tests that prove it: those tests must exist.

A renamed or deleted test would otherwise leave the page promising a proof that no longer
runs. References are ``tests/test_x.py::name`` or, after one, ``::name`` for the same file.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`")


def references(text: str) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    current: str | None = None
    for match in REFERENCE.finditer(text):
        path, name = match.group(1), match.group(2)
        if path is None and name is None:
            continue
        if path is not None:
            current = path
        if current is None:
            raise AssertionError(f"`::{name}` before any test file")
        found.append((current, name))
    return found


def test_every_test_named_in_security_md_exists() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    refs = references(text)
    assert len(refs) > 50
    missing = []
    for path, name in refs:
        file = ROOT / path
        if not file.is_file():
            missing.append(path)
        elif name is not None and not re.search(
            rf"^(?:async )?def {name}\(", file.read_text(), re.M
        ):
            missing.append(f"{path}::{name}")
    assert missing == []


def test_references_are_read_per_file() -> None:
    refs = references("`tests/test_a.py::one`, `::two`, `tests/test_b.py`, `::three`")
    assert refs == [
        ("tests/test_a.py", "one"),
        ("tests/test_a.py", "two"),
        ("tests/test_b.py", None),
        ("tests/test_b.py", "three"),
    ]
