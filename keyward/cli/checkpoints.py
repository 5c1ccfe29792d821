"""Signed audit checkpoints for the commands: the shared options, verify-then-sign, the report.

``audit verify``, ``audit checkpoint`` and ``backup`` use them; keyward.registry.checkpoint
reads and signs the checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from keyward.cli.context import AppContext
from keyward.cli.output import emit_json
from keyward.errors import AuditChainBroken
from keyward.logs import get_logger

if TYPE_CHECKING:
    from keyward.registry import checkpoint as cp
    from keyward.registry.audit import ChainProblem

F = TypeVar("F", bound=Callable[..., Any])


# keyward.registry.checkpoint's names, copied so that defining the options (at import) does
# not import cryptography and SQLAlchemy; tests/test_startup.py keeps them equal.
DIR_ENV = "KEYWARD_CHECKPOINT_DIR"
TRUSTED_ENV = "KEYWARD_CHECKPOINT_TRUSTED_KEY"
KEY_NAME = "checkpoint_ed25519"


def checkpoint_options(func: F) -> F:
    """``--checkpoint-dir`` and ``--trusted-key``, shared by every command that uses them."""
    func = click.option(
        "--trusted-key",
        "trusted_keys",
        multiple=True,
        envvar=TRUSTED_ENV,
        metavar="FILE",
        help="Trust only checkpoints signed by the ssh-ed25519 key in FILE (a pinned copy of "
        f"{KEY_NAME}.pub; repeatable) [env {TRUSTED_ENV}; default: the checkpoint "
        "directory's own key]",
    )(func)
    return click.option(
        "--checkpoint-dir",
        envvar=DIR_ENV,
        metavar="DIR",
        help="Signed audit checkpoints and their key, outside the registry "
        f"[env {DIR_ENV}; default <state dir>/checkpoints]",
    )(func)


@dataclass(frozen=True)
class Checked:
    head_seq: int
    head_hash: str
    problem: ChainProblem | None
    checkpoints: list[cp.Checkpoint]
    written: cp.Checkpoint | None
    keyring: cp.Keyring


def check_and_checkpoint(
    app: AppContext,
    checkpoint_dir: str | None,
    trusted_keys: tuple[str, ...],
    *,
    must_write: bool,
) -> Checked:
    """Verify the chain against every checkpoint, then checkpoint the head if it moved.

    A chain that fails is never checkpointed.  With pinned ``--trusted-key``s that do not
    include this directory's key, verification still runs but nothing is signed (unless
    ``must_write``, which then fails).
    """
    from keyward.registry import checkpoint as cp
    from keyward.registry.verify import verify_session

    keyring = cp.open_keyring(cp.resolve_dir(checkpoint_dir), trusted_keys)
    registry = app.registry()
    store = cp.Store(keyring, cp.registry_identity(registry.url))
    checkpoints = store.load()
    with registry.read() as session:
        verified = verify_session(session, checkpoints)
    assert verified is not None  # Registry.open checked the schema, so the head row exists
    head_seq, head_hash, problem = verified
    written = None
    can_sign = keyring.signing_key in keyring.trusted
    newest = checkpoints[-1].seq if checkpoints else -1
    if problem is None and (must_write or can_sign) and head_seq > newest:
        written = store.write(head_seq, head_hash, registry.clock())
        get_logger().info(
            "audit_checkpoint_written", seq=head_seq, path=str(written.path), key=_key(keyring)
        )
    return Checked(head_seq, head_hash, problem, checkpoints, written, keyring)


def _key(keyring: cp.Keyring) -> str | None:
    return keyring.signing_key.fingerprint if keyring.signing_key else None


def report(checked: Checked, as_json: bool) -> None:
    """Print the outcome; AuditChainBroken (exit 1) naming the first problem."""
    newest = checked.checkpoints[-1] if checked.checkpoints else None
    if as_json:
        emit_json(
            {
                "ok": checked.problem is None,
                "events": checked.head_seq,
                "head": checked.head_hash,
                "first_bad_event": checked.problem.seq if checked.problem else None,
                "problem": str(checked.problem) if checked.problem else None,
                "checkpoints_checked": len(checked.checkpoints),
                "newest_checkpoint": _describe(newest),
                "checkpoint_written": _describe(checked.written),
                "checkpoint_key": _key(checked.keyring),
            }
        )
    if checked.problem is not None:
        raise AuditChainBroken(f"audit chain broken at {checked.problem}")
    if as_json:
        return
    if newest is None:
        against = "no earlier checkpoint of this registry"
    else:
        count = len(checked.checkpoints)
        against = (
            f"{count} signed checkpoint{' agrees' if count == 1 else 's agree'} "
            f"(newest: event {newest.seq}, {newest.when})"
        )
    click.echo(
        f"audit chain ok: {checked.head_seq} events, head {checked.head_hash[:16]}; {against}"
    )
    if checked.written is not None:
        click.echo(
            f"checkpoint written: event {checked.written.seq} in {checked.written.path} "
            f"(key {_key(checked.keyring)})"
        )


def _describe(checkpoint: cp.Checkpoint | None) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    return {"seq": checkpoint.seq, "at": checkpoint.when, "path": str(checkpoint.path)}
