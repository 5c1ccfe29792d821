"""Checks on the free text and names that go into the registry.

Everything here ends up in tables, audit events, logs and (usernames) in
authorized_keys comments, so control characters and line breaks are refused
outright rather than escaped.
"""

from __future__ import annotations

import re
import unicodedata

from keyward.errors import UsageError

USERNAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
ROLE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
CUSTOMER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{1,63}$")


def has_control(text: str) -> bool:
    """True for any control, format or line/paragraph separator character."""
    return any(unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp"} for ch in text)


def username(value: str) -> str:
    if not USERNAME_RE.fullmatch(value):
        raise UsageError(
            f"invalid username {value[:40]!r}: use a POSIX login name "
            "(lowercase letter or _, then lowercase letters, digits, _ or -, at most 32)"
        )
    return value


def role_name(value: str) -> str:
    if not ROLE_RE.fullmatch(value):
        raise UsageError(
            f"invalid role name {value[:40]!r}: lowercase letter, then lowercase letters, "
            "digits, _ or -"
        )
    return value


def customer(value: str) -> str:
    if not CUSTOMER_RE.fullmatch(value):
        raise UsageError(f"invalid customer name {value[:40]!r}: letters, digits, _ . -")
    return value


def line(field: str, value: str, *, max_length: int = 500, required: bool = True) -> str:
    """A single line of free text: no control characters, bounded length."""
    value = value.strip()
    if required and not value:
        raise UsageError(f"{field} must not be empty")
    if has_control(value):
        raise UsageError(f"{field} must be a single line without control characters")
    if len(value) > max_length:
        raise UsageError(f"{field} is longer than {max_length} characters")
    return value


def email(value: str) -> str:
    value = line("email", value, max_length=254)
    if not EMAIL_RE.fullmatch(value):
        raise UsageError(f"invalid email address {value[:60]!r}")
    return value
