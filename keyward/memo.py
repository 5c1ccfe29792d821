"""``computed_once``: an attribute computed on first use and then read like a field.

``functools.cached_property`` does the same, but on Python 3.11 every first
access takes a per-attribute lock.  The desired-state computation makes
hundreds of thousands of first accesses (one line object per key per rule),
and that lock alone cost a fifth of its time.  The values cached here are
pure functions of frozen objects, so two threads computing one at once would
only store the same value twice: no lock is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Self, TypeVar, overload

_Owner = TypeVar("_Owner")
_Value = TypeVar("_Value")


class computed_once(Generic[_Owner, _Value]):
    """Compute ``func(obj)`` on first access and keep it in ``obj.__dict__``.

    It is a non-data descriptor, so once the value is in the instance's
    ``__dict__`` Python finds it there and never calls ``__get__`` again.
    Works on frozen dataclasses (it never calls ``__setattr__``); the cached
    value takes no part in their ``__eq__`` or ``__hash__``.
    """

    def __init__(self, func: Callable[[_Owner], _Value]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(self, obj: _Owner, owner: type[Any] | None = None) -> _Value: ...

    def __get__(self, obj: _Owner | None, owner: type[Any] | None = None) -> Self | _Value:
        if obj is None:
            return self
        value = self.func(obj)
        obj.__dict__[self.name] = value
        return value
