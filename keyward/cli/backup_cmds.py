"""Backup commands: create, list, prune, restore.

The workflows and their audit events are ``keyward.registry.backup``; this module
parses options, calls them, logs and prints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from keyward.cli.checkpoints import checkpoint_options
from keyward.cli.common import log_events
from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, table, ts
from keyward.errors import AuditChainBroken, BackupFailed, KeywardError
from keyward.logs import get_logger
from keyward.registry import checkpoint as cp
from keyward.registry.backup.copy_command import COPY_ENV, COPY_TIMEOUT, parse_copy_command
from keyward.registry.backup.create import copy_and_record, take_snapshot
from keyward.registry.backup.files import default_backup_dir
from keyward.registry.backup.restore import restore_backup
from keyward.registry.backup.retention import list_backups, prune_backups
from keyward.registry.db import describe
from keyward.registry.schema import head_revision

pass_app = click.make_pass_decorator(AppContext)

DIR_HELP = "Backup directory [default: <state dir>/backups, e.g. /var/lib/keyward/backups]."


def backup_dir(directory: str | None) -> Path:
    if directory:
        return Path(directory).expanduser().absolute()
    return default_backup_dir(dict(os.environ), os.geteuid()).absolute()


@click.group()
def backup() -> None:
    """Snapshots of the registry: take, list, prune, restore."""


# -- create -----------------------------------------------------------------------


@backup.command("create")
@click.argument("directory", required=False, metavar="[DIR]")
@click.option(
    "--copy-command",
    envvar=COPY_ENV,
    metavar="COMMAND",
    help="Copy each new file elsewhere, e.g. 'rclone copyto {path} remote:keyward/{name}'; "
    "run without a shell for the snapshot, its .sha256, .checkpoint and .checkpoint.sig "
    "files ({path} and {name} are "
    "quoted by keyward: do not quote them). A failure exits 1 and is "
    f"recorded as a backup.copy-failed audit event [env {COPY_ENV}]",
)
@click.option(
    "--copy-timeout",
    type=click.FloatRange(min=1),
    default=COPY_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Kill the copy command after this long (and fail).",
)
@checkpoint_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def backup_create(
    app: AppContext,
    directory: str | None,
    copy_command: str | None,
    copy_timeout: float,
    checkpoint_dir: str | None,
    trusted_keys: tuple[str, ...],
    as_json: bool,
) -> None:
    """Write a consistent, verified, signed snapshot of the registry into DIR.

    SQLite registries are copied with SQLite's online backup API, PostgreSQL ones with
    pg_dump -Fc; other administrators and the agent can keep writing meanwhile. The
    snapshot is then opened and its audit chain verified against the registry's signed
    checkpoints; a checkpoint naming the snapshot's SHA-256 is signed next to it and the
    registry's own checkpoint advanced. The backup.create audit event is written to the
    live registry afterwards, so a snapshot never contains its own event.
    """
    log = get_logger()
    target = backup_dir(directory)
    if copy_command:
        parse_copy_command(copy_command)
    keyring = cp.open_keyring(cp.resolve_dir(checkpoint_dir), trusted_keys)
    registry = app.registry()
    now = registry.clock()
    try:
        created = take_snapshot(registry.url, registry.backend, target, now, keyring)
    except AuditChainBroken as exc:
        log.error("backup_verify_failed", directory=str(target), error=exc.message)
        raise AuditChainBroken(f"no snapshot kept: {exc.message}") from None
    except KeywardError as exc:
        log.error("backup_failed", directory=str(target), error=exc.message)
        raise
    failures = copy_and_record(
        registry, app.actor, created, target, copy_command, copy_timeout, log_events
    )
    log.info(
        "backup_created",
        path=str(created.path),
        sha256=created.sha256,
        bytes=created.size,
        events=created.events,
    )
    for failure in failures:
        log.error(
            "backup_copy_failed",
            path=str(created.path),
            file=failure.file,
            program=failure.program,
            exit_code=failure.exit_code,
            timed_out=failure.timed_out,
            error=failure.error,
        )
    if as_json:
        emit_json(
            {
                "path": str(created.path),
                "name": created.path.name,
                "checksum_file": str(created.checksum),
                "checkpoint_file": str(created.checkpoint),
                "signature_file": str(created.signature),
                "head_seq": created.events,
                "backend": created.backend,
                "taken_at": ts(now),
                "bytes": created.size,
                "sha256": created.sha256,
                "events_verified": created.events,
                "copied": bool(copy_command) and not failures,
                "copy_error": str(failures[0]) if failures else None,
            }
        )
    else:
        click.echo(
            f"backup {created.path} ({created.size} bytes, sha256 {created.sha256[:16]}); "
            f"audit chain ok: {created.events} events"
        )
    if failures:
        raise BackupFailed(f"snapshot {created.path.name} was written, but {failures[0]}")
    if copy_command and not as_json:
        click.echo(f"copied {created.path.name} with its .sha256, .checkpoint and .checkpoint.sig")


# -- list -------------------------------------------------------------------------


@backup.command("list")
@click.argument("directory", required=False, metavar="[DIR]")
@click.option("--check", is_flag=True, help="Also recompute each snapshot's checksum.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def backup_list(directory: str | None, check: bool, as_json: bool) -> None:
    """List keyward's snapshots in DIR, oldest first."""
    target = backup_dir(directory)
    rows: list[dict[str, Any]] = [
        {
            "name": listed.snapshot.name,
            "path": str(listed.snapshot.path),
            "kind": listed.snapshot.kind,
            "taken_at": ts(listed.snapshot.taken_at),
            "bytes": listed.bytes,
            "sha256": listed.sha256,
            "checksum": listed.checksum,
        }
        for listed in list_backups(target, check)
    ]
    if as_json:
        emit_json(rows)
        return
    table(
        rows,
        [("name", "SNAPSHOT"), ("taken_at", "TAKEN"), ("bytes", "BYTES"), ("checksum", "CHECKSUM")],
    )
    if check and any(r["checksum"] != "ok" for r in rows):
        raise BackupFailed("some snapshots do not match their checksum (or have none)")


# -- prune ------------------------------------------------------------------------


@backup.command("prune")
@click.argument("directory", required=False, metavar="[DIR]")
@click.option(
    "--keep-days",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Keep snapshots taken within this many days (the newest is always kept).",
)
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def backup_prune(
    app: AppContext, directory: str | None, keep_days: int, dry_run: bool, as_json: bool
) -> None:
    """Delete snapshots older than --keep-days (by the time in their name).

    Only files named like keyward's own snapshots (and their .sha256 files) are touched.
    """
    target = backup_dir(directory)
    registry = None if dry_run else app.registry()
    now = app.clock()
    pruned = prune_backups(registry, app.actor, target, now, keep_days, log_events)
    keep, delete, stale = pruned.keep, pruned.delete, pruned.stale
    if not dry_run:
        get_logger().info(
            "backup_pruned", directory=str(target), deleted=len(delete), kept=len(keep)
        )
    if as_json:
        emit_json(
            {
                "directory": str(target),
                "keep_days": keep_days,
                "dry_run": dry_run,
                "deleted": [s.name for s in delete],
                "kept": [s.name for s in keep],
                "half_written_deleted": stale,
            }
        )
        return
    for name in stale:
        click.echo(f"deleted half-written {name}")
    verb = "would delete" if dry_run else "deleted"
    for snap in delete:
        click.echo(f"{verb} {snap.name}")
    click.echo(f"{len(keep)} snapshots kept, {len(delete)} {verb.split()[-1]} ({target})")


# -- restore ----------------------------------------------------------------------


@backup.command("restore")
@click.argument("file", metavar="FILE")
@click.option("--force", is_flag=True, help="Replace a registry that is not empty.")
@checkpoint_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def backup_restore(
    app: AppContext,
    file: str,
    force: bool,
    checkpoint_dir: str | None,
    trusted_keys: tuple[str, ...],
    as_json: bool,
) -> None:
    """Restore snapshot FILE into the registry (--db / KEYWARD_DB), then verify it.

    FILE's .sha256, .checkpoint and .checkpoint.sig files must be next to it, and the
    checkpoint signed by a trusted key (this machine's checkpoint key, or --trusted-key)
    for FILE's SHA-256. Only table rows are copied, into a freshly built schema. The
    registry must be empty (new, or only initialised) unless --force. Exit 1 if the
    restored audit chain is broken or disagrees with the signed checkpoint.
    """
    url = app.url
    path = Path(file).expanduser().absolute()
    keyring = cp.open_keyring(cp.resolve_dir(checkpoint_dir), trusted_keys)
    done = restore_backup(
        path,
        url,
        force=force,
        keyring=keyring,
        clock=app.clock,
        actor=app.actor,
        on_audit=log_events,
    )
    restored, revision = done.restored, done.revision
    get_logger().info(
        "backup_restored", path=str(path), registry=describe(url), events=restored.events
    )
    current = revision == head_revision()
    if as_json:
        emit_json(
            {
                "file": str(path),
                "registry": describe(url),
                "sha256": restored.sha256,
                "events_verified": restored.events,
                "schema": revision,
                "schema_current": current,
                "replaced": None if restored.replaced.empty else str(restored.replaced),
            }
        )
        return
    click.echo(
        f"restored {path.name} into {describe(url)}; audit chain ok: {restored.events} events"
    )
    if not current:
        click.echo(
            f"the snapshot is at schema {revision}, this keyward uses {head_revision()}: "
            "run 'keyward init' to bring it to the installed schema"
        )


def register(cli: click.Group) -> None:
    cli.add_command(backup)
