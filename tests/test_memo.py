"""computed_once: computed on first access only, invisible to a frozen dataclass's identity."""

from __future__ import annotations

import dataclasses

import pytest

from keyward.memo import computed_once

CALLS: list[str] = []


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int

    @computed_once
    def label(self) -> str:
        """A label, counted each time it is really computed."""
        CALLS.append(f"{self.x},{self.y}")
        return f"({self.x}, {self.y})"


def test_value_is_computed_once_per_object() -> None:
    CALLS.clear()
    a, b = Point(1, 2), Point(3, 4)
    assert [a.label, a.label, b.label, a.label] == ["(1, 2)", "(1, 2)", "(3, 4)", "(1, 2)"]
    assert CALLS == ["1,2", "3,4"]


def test_frozen_object_stays_frozen_and_equality_ignores_the_cache() -> None:
    a, b = Point(1, 2), Point(1, 2)
    _ = a.label  # cached on a only
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.x = 5  # type: ignore[misc]


def test_class_access_gives_the_descriptor_with_its_docstring() -> None:
    descriptor = Point.label
    assert isinstance(descriptor, computed_once)
    assert descriptor.__doc__ == "A label, counted each time it is really computed."
