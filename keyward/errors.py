"""The one error hierarchy of keyward.

Every failure a user can cause or meet is a ``KeywardError`` (or a subclass).
The CLI maps these to exit codes in exactly one place (``keyward.cli.main``),
so library code raises and never prints or exits.  Messages are one line,
name what is wrong, and never contain key material or passphrases.
"""

from __future__ import annotations


class KeywardError(Exception):
    """Root of every error keyward reports to a user.

    ``exit_code`` is what the CLI exits with: 2 for bad input or a refused
    operation (nothing was changed), 1 for an operational failure.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line, always: a multi-line message could smuggle fake log lines.
        flat = " ".join(str(message).split())
        super().__init__(flat)
        self.message = flat


class UsageError(KeywardError):
    """Input that is malformed or refers to something that does not exist."""


class KeyPolicyError(KeywardError):
    """A public or private key that keyward refuses under its key policy."""


class ProofError(KeywardError):
    """A proof-of-possession signature that does not verify."""


class RegistryError(KeywardError):
    """The registry refused a change (conflict, not found, not allowed)."""


class RegistryUnavailable(KeywardError):
    """The registry database cannot be opened, is locked, or is not initialised."""


class AuditChainBroken(KeywardError):
    """``audit verify`` found an event whose hash does not match."""

    exit_code = 1


class InventoryError(KeywardError):
    """The inventory does not parse or does not validate."""


class HostError(KeywardError):
    """A host could not be reached, refused us, or refused a write."""

    exit_code = 1


class HostProtocolError(HostError):
    """A host's helper answered what keyward cannot read (not JSON, a missing field, bad
    base64): a broken or hostile host. It fails that host; keyward's own bugs are not this."""


class PlanRefused(KeywardError):
    """A plan would lock the agent out (or otherwise break a safety rule)."""
