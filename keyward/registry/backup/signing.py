"""The signed checkpoint next to a snapshot: what a restore trusts, not the ``.sha256``.

A writer who doctors a snapshot can rewrite its checksum but cannot sign
without the checkpoint key.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from keyward.errors import AuditChainBroken, UsageError
from keyward.registry import checkpoint as cp
from keyward.registry.backup.files import check_checksum, checkpoint_file, signature_file
from keyward.registry.backup.verify import Verified


def write_snapshot_checkpoint(
    keyring: cp.Keyring, path: Path, identity: str, verified: Verified, digest: str, now: datetime
) -> tuple[Path, Path]:
    """Sign (registry, head, time, snapshot name and SHA-256) next to the snapshot.

    This, not the ``.sha256`` file, is what a restore trusts: a writer who doctors the
    snapshot can rewrite a checksum but cannot sign without the checkpoint key.
    """
    statement = cp.Checkpoint(identity, verified.events, verified.head, now, path.name, digest)
    armored = keyring.sign(statement)
    cp.write_private(signature_file(path), armored, replace=True)
    cp.write_private(checkpoint_file(path), statement.statement(), replace=True)
    return checkpoint_file(path), signature_file(path)


def authenticate_snapshot(path: Path, keyring: cp.Keyring) -> tuple[str, cp.Checkpoint]:
    """(sha256, signed checkpoint) of a snapshot whose checkpoint a trusted key signed.

    Refuses (UsageError, nothing changed) a missing or unsigned checkpoint and a
    snapshot whose SHA-256 is not the signed one, whatever its ``.sha256`` file says.
    """
    digest = check_checksum(path)
    if not checkpoint_file(path).exists():
        raise UsageError(
            f"no signed checkpoint {checkpoint_file(path).name} next to {path}; refusing an "
            "unauthenticated snapshot; nothing was restored"
        )
    try:
        signed = cp.read_signed(keyring, checkpoint_file(path), f"snapshot {path.name}")
    except AuditChainBroken as exc:
        raise UsageError(f"{exc.message}; nothing was restored") from None
    if signed.snapshot_sha256 != digest:
        raise UsageError(
            f"{path} is not the snapshot its signed checkpoint names (sha256 {digest[:16]}..., "
            f"signed {(signed.snapshot_sha256 or 'none')[:16]}...): the snapshot and its "
            ".sha256 file were changed; nothing was restored"
        )
    return digest, signed
