"""Typed access to one inventory TOML file, recording located problems instead of raising.

``check_inventory`` must report *every* problem in one go, each located as
``file: key: message``; so parsing and every getter here append a ``Problem``
and return a fallback rather than stop at the first one.
"""

from __future__ import annotations

import difflib
import re
import tomllib
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

TOML_ERROR_RE = re.compile(r"^(?P<msg>.*?) \(at (?P<where>line \d+, column \d+|end of document)\)$")
MISSING = object()
"""The default of ``dict.get`` that tells an absent field from one set to anything."""


@dataclass(frozen=True)
class Problem:
    """One located inventory problem: ``production.toml: hosts[2].port: must be ...``."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.key, self.message) if part)


def join(where: str, field: str) -> str:
    """``hosts[0]`` + ``port`` -> ``hosts[0].port``; a top-level field stays bare."""
    return f"{where}.{field}" if where else field


def has_unsafe_char(text: str) -> bool:
    """Control, format and line-separator characters; never wanted in names or paths."""
    return any(unicodedata.category(char) in {"Cc", "Cf", "Zl", "Zp"} for char in text)


def type_name(value: object) -> str:
    """The TOML name of a parsed value's type, for "must be X, not Y" messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def read_toml(path: Path, problems: list[Problem]) -> dict[str, Any] | None:
    """Parse one file; syntax errors become problems located by line and column."""
    file = path.name
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        problems.append(Problem(file, "", "is not valid UTF-8"))
        return None
    except OSError as error:
        problems.append(Problem(file, "", f"cannot be read: {error.strerror}"))
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        match = TOML_ERROR_RE.match(str(error))
        message = match.group("msg") if match else str(error)
        where = match.group("where") if match else ""
        problems.append(Problem(file, where, f"TOML syntax error: {message}"))
        return None


class Reader:
    """Typed access to one parsed TOML file that records problems instead of raising.

    Every getter returns ``default`` when the field is absent *or* invalid;
    an invalid value has already been recorded, and no ``Inventory`` is built
    from a file with problems, so the fallback only keeps later checks going.
    """

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems

    def add(self, key: str, message: str) -> None:
        self.problems.append(Problem(self.file, key, message))

    def fields(self, table: Mapping[str, Any], where: str, allowed: Collection[str]) -> None:
        """Report every field of ``table`` not in ``allowed`` (typos must not be ignored)."""
        for name in table:
            if name not in allowed:
                close = difflib.get_close_matches(name, list(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.add(where, f"unknown field {name!r}{hint}")

    def table(self, parent: Mapping[str, Any], where: str, field: str) -> dict[str, Any] | None:
        value = parent.get(field)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.add(join(where, field), f"must be a table [{field}], not {type_name(value)}")
            return None
        return cast(dict[str, Any], value)

    def tables(self, parent: Mapping[str, Any], field: str) -> list[tuple[str, dict[str, Any]]]:
        """An array of tables (``[[hosts]]``) as (location, table) pairs."""
        value = parent.get(field)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.add(field, f"must be an array of tables [[{field}]]")
            return []
        return [(f"{field}[{index}]", item) for index, item in enumerate(value)]

    def string(
        self,
        table: Mapping[str, Any],
        where: str,
        field: str,
        default: str | None = None,
        *,
        required: bool = False,
    ) -> str | None:
        value = table.get(field, MISSING)
        key = join(where, field)
        if value is MISSING:
            if required:
                self.add(where, f"missing required field {field!r}")
            return default
        if not isinstance(value, str):
            self.add(key, f"must be a string, not {type_name(value)}")
            return default
        if value == "":
            self.add(key, "must not be empty")
            return default
        if has_unsafe_char(value):
            self.add(key, "must not contain control characters")
            return default
        return value

    def integer(
        self, table: Mapping[str, Any], where: str, field: str, default: int, low: int, high: int
    ) -> int:
        value = table.get(field, MISSING)
        if value is MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.add(join(where, field), f"must be an integer {low}-{high}")
            return default
        return value

    def boolean(self, table: Mapping[str, Any], where: str, field: str, default: bool) -> bool:
        value = table.get(field, MISSING)
        if value is MISSING:
            return default
        if not isinstance(value, bool):
            self.add(join(where, field), f"must be true or false, not {type_name(value)}")
            return default
        return value

    def number(
        self,
        table: Mapping[str, Any],
        where: str,
        field: str,
        default: float,
        low: float,
        high: float,
    ) -> float:
        value = table.get(field, MISSING)
        if value is MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
            self.add(
                join(where, field), f"must be a number of seconds above {low:g} up to {high:g}"
            )
            return default
        return float(value)

    def strings(
        self,
        table: Mapping[str, Any],
        where: str,
        field: str,
        *,
        required: bool = False,
        allow_empty: bool = False,
    ) -> tuple[str, ...] | None:
        """An array of strings, de-duplicated in order; ``None`` if absent.

        Empty arrays are refused unless ``allow_empty``: for ``groups`` or
        ``hosts`` an empty list would silently match nothing.
        """
        value = table.get(field, MISSING)
        key = join(where, field)
        if value is MISSING:
            if required:
                self.add(where, f"missing required field {field!r}")
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.add(key, "must be an array of strings")
            return None
        if not value and not allow_empty:
            self.add(key, "must not be empty (leave the field out instead)")
            return None
        return tuple(dict.fromkeys(cast(list[str], value)))

    def names(
        self,
        table: Mapping[str, Any],
        where: str,
        field: str,
        pattern: re.Pattern[str],
        what: str,
        *,
        required: bool = False,
        allow_empty: bool = False,
    ) -> tuple[str, ...] | None:
        """``strings`` whose every element matches ``pattern``; bad elements are reported."""
        values = self.strings(table, where, field, required=required, allow_empty=allow_empty)
        if values is None:
            return None
        bad = [value for value in values if not pattern.fullmatch(value)]
        for value in bad:
            self.add(join(where, field), f"{short(value)} is not a valid {what}")
        return None if bad else values


def short(text: str) -> str:
    """A bounded, escaped rendering of inventory text for a message."""
    return repr(text if len(text) <= 60 else text[:57] + "...")
