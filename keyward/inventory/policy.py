"""``[policy]`` of ``keyward.toml``: the fleet-wide key policy, read on its own.

A module of its own because the key commands (``key check``, ``key add``) need the policy
and nothing else: reading it must not load the inventory model, the environment files or
the other settings' readers, which is what keeps ``key check`` instant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keyward.errors import InventoryError
from keyward.inventory.reader import Problem, Reader, read_toml, short
from keyward.inventory.where import SETTINGS_FILE
from keyward.keys import DEFAULT_ALLOWED_TYPES, DSA, KNOWN_TYPES, KeyPolicy

DEFAULT_MAX_KEY_AGE_DAYS = 365
DEFAULT_MIN_RSA_BITS = 3072
DEFAULT_PROOF_MAX_AGE_DAYS = 30
FAILURE_MODES = ("off", "suspend", "restrict")
POLICY_FIELDS = (
    "max_key_age_days",
    "min_rsa_bits",
    "allowed_key_types",
    "proof_max_age_days",
    "failed_login_threshold",
    "failed_login_window_minutes",
    "multi_source_window_minutes",
    "failure_mode",
    "alert_command",
    "purge_after_days",
)


@dataclass(frozen=True)
class PolicySettings:
    """Fleet-wide key policy (``[policy]`` in ``keyward.toml``).

    ``allowed_key_types`` is ``None`` for "whatever keyward's key policy allows".
    """

    max_key_age_days: int
    min_rsa_bits: int
    allowed_key_types: tuple[str, ...] | None
    proof_max_age_days: int = 30
    failed_login_threshold: int = 5
    failed_login_window_minutes: int = 10
    multi_source_window_minutes: int = 60
    failure_mode: str = "off"  # off | suspend | restrict
    alert_command: str | None = None
    purge_after_days: int = 365  # how long an offboarded person's details are kept

    def key_policy(self) -> KeyPolicy:
        """The ``keyward.keys.KeyPolicy`` these settings describe, for checking keys."""
        allowed = (
            DEFAULT_ALLOWED_TYPES
            if self.allowed_key_types is None
            else frozenset(self.allowed_key_types)
        )
        return KeyPolicy(
            allowed_types=allowed,
            min_rsa_bits=self.min_rsa_bits,
            max_key_age_days=self.max_key_age_days,
            proof_max_age_days=self.proof_max_age_days,
        )


def read_policy(reader: Reader, data: Mapping[str, Any]) -> PolicySettings:
    """The ``[policy]`` table of parsed ``keyward.toml`` ``data``; problems go to ``reader``."""
    policy = reader.table(data, "", "policy") or {}
    reader.fields(policy, "policy", POLICY_FIELDS)
    types = reader.strings(policy, "policy", "allowed_key_types")
    for key_type in types or ():
        if key_type == DSA:
            reader.add("policy.allowed_key_types", "ssh-dss (DSA) keys cannot be allowed")
        elif key_type not in KNOWN_TYPES:
            known = ", ".join(sorted(KNOWN_TYPES - {DSA}))
            reader.add(
                "policy.allowed_key_types",
                f"unknown key type {short(key_type)} (known: {known})",
            )
    return PolicySettings(
        max_key_age_days=reader.integer(
            policy, "policy", "max_key_age_days", DEFAULT_MAX_KEY_AGE_DAYS, 1, 36500
        ),
        min_rsa_bits=reader.integer(
            policy, "policy", "min_rsa_bits", DEFAULT_MIN_RSA_BITS, 2048, 16384
        ),
        allowed_key_types=types,
        proof_max_age_days=reader.integer(
            policy, "policy", "proof_max_age_days", DEFAULT_PROOF_MAX_AGE_DAYS, 0, 3650
        ),
        failed_login_threshold=reader.integer(
            policy, "policy", "failed_login_threshold", 5, 1, 100000
        ),
        failed_login_window_minutes=reader.integer(
            policy, "policy", "failed_login_window_minutes", 10, 1, 10080
        ),
        multi_source_window_minutes=reader.integer(
            policy, "policy", "multi_source_window_minutes", 60, 1, 10080
        ),
        failure_mode=_failure_mode(reader, policy),
        alert_command=reader.string(policy, "policy", "alert_command"),
        purge_after_days=reader.integer(policy, "policy", "purge_after_days", 365, 0, 36500),
    )


def load_policy(root: Path) -> PolicySettings:
    """``[policy]`` of ``root``'s ``keyward.toml`` (defaults without one); ``InventoryError``.

    All a key command needs: neither the environment files nor the other sections are
    read, so ``key check`` and ``key add`` neither pay for nor depend on checking the
    whole fleet's inventory (``keyward inventory check`` does that).
    """
    problems: list[Problem] = []
    path = root / SETTINGS_FILE
    data = (read_toml(path, problems) or {}) if path.exists() else {}
    policy = read_policy(Reader(SETTINGS_FILE, problems), data)
    if problems:
        raise InventoryError(str(problems[0]))
    return policy


def _failure_mode(reader: Reader, policy: Mapping[str, Any]) -> str:
    value = reader.string(policy, "policy", "failure_mode", "off") or "off"
    if value not in FAILURE_MODES:
        reader.add("policy.failure_mode", f"must be one of {', '.join(FAILURE_MODES)}")
        return "off"
    return value
