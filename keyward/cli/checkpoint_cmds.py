"""``audit verify`` against signed checkpoints; ``audit checkpoint`` (registry.checkpoint)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from keyward.cli.context import AppContext
from keyward.cli.output import emit_json
from keyward.errors import AuditChainBroken, UsageError
from keyward.logs import get_logger

if TYPE_CHECKING:
    from keyward.registry import checkpoint as cp
    from keyward.registry.audit import ChainProblem

pass_app = click.make_pass_decorator(AppContext)
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


@click.command("checkpoint")
@checkpoint_options
@click.option(
    "--reset",
    is_flag=True,
    help="Set this registry's earlier checkpoints aside and start again from the current "
    "head (after restoring by hand or re-creating the registry); recorded as an audit event.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def audit_checkpoint(
    app: AppContext,
    checkpoint_dir: str | None,
    trusted_keys: tuple[str, ...],
    reset: bool,
    as_json: bool,
) -> None:
    """Verify the chain, then sign a checkpoint of its head outside the registry.

    Run it from a timer (e.g. hourly): events after the newest checkpoint are the ones
    a database writer could still delete or rewrite unnoticed.
    """
    if reset:
        _reset(app, checkpoint_dir, trusted_keys)
    report(check_and_checkpoint(app, checkpoint_dir, trusted_keys, must_write=True), as_json)


def _reset(app: AppContext, checkpoint_dir: str | None, trusted_keys: tuple[str, ...]) -> None:
    """Retire the checkpoints of this registry, if its chain holds together on its own."""
    from keyward.cli.registry_cmds import log_events
    from keyward.registry import checkpoint as cp
    from keyward.registry.subjects import Subject
    from keyward.registry.verify import verify_session

    keyring = cp.open_keyring(cp.resolve_dir(checkpoint_dir), trusted_keys)
    if keyring.signing_key not in keyring.trusted:
        raise UsageError("--reset needs the checkpoint directory's own key to be trusted")
    registry = app.registry()
    store = cp.Store(keyring, cp.registry_identity(registry.url))
    with registry.read() as session:
        verified = verify_session(session)
    assert verified is not None
    if verified[2] is not None:
        raise AuditChainBroken(f"not resetting: audit chain broken at {verified[2]}")
    try:
        old = store.load()
        disagreement: str | None = None
        with registry.read() as session:
            against = verify_session(session, old)
        if against is not None and against[2] is not None:
            disagreement = str(against[2])
    except (AuditChainBroken, UsageError) as exc:
        old, disagreement = [], exc.message
    retired = store.retire(registry.clock())
    with registry.write(app.actor) as tx:
        tx.audit(
            "audit.checkpoint-reset",
            Subject("registry", registry.backend),
            {
                "retired": str(retired) if retired else None,
                "newest_retired_seq": old[-1].seq if old else None,
                "disagreement": disagreement,
            },
        )
    log_events(tx)
    get_logger().warning(
        "audit_checkpoints_reset",
        retired=str(retired) if retired else None,
        disagreement=disagreement,
    )
    if retired is not None:
        click.echo(f"earlier checkpoints set aside in {Path(retired)}", err=True)
