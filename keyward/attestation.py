"""How we know a key's private half is protected, as an ordered scale.

A registry only sees public keys, so it cannot prove a passphrase.  Instead
each key records the strongest *honest* claim we have about it, and an
environment can demand a minimum (``min_attestation`` in the inventory).

- ``none``:  nothing but the public key.
- ``admin``: an administrator vouches (recorded with who and when).
- ``proof``: the owner signed a keyward statement with the key (SSHSIG),
  after ``keyward key check`` confirmed the file is passphrase-encrypted.
- ``sk``:    a FIDO security key; deployed with ``verify-required`` so sshd
  demands the PIN at every login.
"""

from __future__ import annotations

from typing import Literal

Attestation = Literal["none", "admin", "proof", "sk"]
ATTESTATION_LEVELS: tuple[Attestation, ...] = ("none", "admin", "proof", "sk")


def attestation_rank(level: str) -> int:
    """Position of ``level`` on the scale; unknown names raise ``ValueError``."""
    try:
        return ATTESTATION_LEVELS.index(level)  # type: ignore[arg-type,unused-ignore]
    except ValueError:
        raise ValueError(
            f"unknown attestation {level!r}; expected one of {', '.join(ATTESTATION_LEVELS)}"
        ) from None


def meets(level: str, minimum: str) -> bool:
    """True when a key attested at ``level`` may be deployed where ``minimum`` is required."""
    return attestation_rank(level) >= attestation_rank(minimum)
