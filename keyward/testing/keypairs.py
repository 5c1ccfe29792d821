"""Throw-away ed25519 key pairs in OpenSSH format, for the demo, tests and benchmarks.

``cryptography`` writes them (no ``ssh-keygen`` process per key), unencrypted, so that the
agent and the clients can use them without a passphrase.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def make_ed25519(path: Path, comment: str = "") -> Path:
    """Write an unencrypted OpenSSH ed25519 key pair (``path`` and ``path.pub``), mode 0600."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    suffix = f" {comment}" if comment else ""
    Path(f"{path}.pub").write_text(public.decode() + suffix + "\n")
    return path


__all__ = ["make_ed25519"]
