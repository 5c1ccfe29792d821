"""``keyward hosts scan``: fetch hosts' keys and pin them in known_hosts, audited."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, progress
from keyward.cli.rounds import EXIT_FAILED
from keyward.errors import UsageError
from keyward.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from keyward.agent import scan
    from keyward.inventory.model import Hop, Host

pass_app = click.make_pass_decorator(AppContext)


@click.group()
def hosts() -> None:
    """Hosts and their pinned host keys."""


@hosts.command("scan")
@click.argument("names", nargs=-1)
@click.option("--env", default=None, help="Every host of this environment.")
@click.option("--all", "all_hosts", is_flag=True, help="Every host of the inventory.")
@click.option("--write", is_flag=True, help="Pin the keys of hosts seen for the first time.")
@click.option(
    "--replace",
    is_flag=True,
    help="With --write: replace the pins of hosts whose key CHANGED (needs --fingerprint).",
)
@click.option(
    "--fingerprint",
    "fingerprints",
    multiple=True,
    metavar="SHA256:...",
    help="With --write: pin only these presented keys, the ones you checked out of band.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def hosts_scan(
    app: AppContext,
    names: tuple[str, ...],
    env: str | None,
    all_hosts: bool,
    write: bool,
    replace: bool,
    fingerprints: tuple[str, ...],
    as_json: bool,
) -> None:
    """Fetch the host keys of NAMES (inventory host names), --env ENV or --all; print them.

    A key that differs from the host's pin is shown as CHANGED and never pinned next
    to the old one: an impostor must not become trusted by a routine --write.  Hosts
    behind jump hosts are scanned through them (each hop must be pinned already);
    --env and --all scan those jump hosts too, and NAMES may name one.
    """
    from keyward import event_loop
    from keyward.agent import scan
    from keyward.agent.connection import Credentials
    from keyward.inventory import load_inventory

    if (replace or fingerprints) and not write:
        raise UsageError("--replace and --fingerprint only make sense with --write")
    if replace and not fingerprints:
        raise UsageError("--replace needs --fingerprint naming the new key you checked")
    if (1 if names else 0) + (env is not None) + all_hosts != 1:
        raise UsageError(
            "name the hosts to scan: host NAMES, --env ENV or --all (exactly one of them)"
        )
    wanted = [scan.check_fingerprint(fp) for fp in fingerprints]
    inv = load_inventory(app.inventory_dir())
    if names:
        targets = [_named(inv.hosts(), inv.host, name) for name in names]
    else:
        targets = scan.with_jump_hosts(inv.select_hosts(env))
    path = inv.agent.known_hosts
    try:
        existing = path.read_text() if path.exists() else ""
    except OSError as exc:
        raise UsageError(f"cannot read known_hosts {path}: {exc.strerror}") from None

    def credentials() -> Credentials:
        """The agent's key, to log in to jump hosts (only a scan through one needs it)."""
        return Credentials.load(
            inv.agent.identity, path, inv.agent.connect_timeout, inv.agent.python
        )

    with progress(len(targets), "hosts scan") as advance:
        found, failures = event_loop.run(
            scan.scan_hosts(
                targets,
                existing,
                inv.agent.connect_timeout,
                on_done=advance,
                credentials=credentials,
            )
        )
    for item in found if not as_json else ():
        click.echo(item.describe())
        if item.status != "changed":  # a changed key is not offered as a line to paste
            click.echo(item.line)
    for host, error in failures:
        click.echo(f"# {host.name}: {error}", err=True)
    chosen: list[scan.Scanned] = []
    if write:
        chosen = scan.select_pins(found, replace=replace, fingerprints=wanted)
        if chosen:
            _write_pins(app, path, existing, chosen, err=as_json)
    if as_json:
        emit_json(
            {
                "hosts": [
                    {
                        "host": item.host.name,
                        "fingerprint": item.fingerprint,
                        "status": item.status,
                        "pinned": list(item.pinned),
                        # a changed key is not offered as a line to paste
                        "line": item.line if item.status != "changed" else None,
                        "written": item in chosen,
                    }
                    for item in found
                ],
                "failures": [{"host": host.name, "error": error} for host, error in failures],
            }
        )
    if failures:
        sys.exit(EXIT_FAILED)


def _named(
    hosts: Sequence[Host], find: Callable[[str], Host], name: str
) -> tuple[scan.Target, tuple[Hop, ...]]:
    """A host of the inventory by name, or a jump host its hosts go through."""
    from keyward.agent import scan

    hop = scan.find_jump_host(hosts, name)
    if hop is not None and all(host.name != name for host in hosts):
        return hop
    host = find(name)  # unknown: the inventory's own error, with its suggestions
    return host, host.jump


def _write_pins(
    app: AppContext, path: Path, existing: str, chosen: list[scan.Scanned], err: bool = False
) -> None:
    """Write the chosen pins; a replaced pin is audited in the same registry transaction.

    ``err``: say what was written on stderr (stdout carries the JSON).

    The file is replaced atomically inside the transaction; if the audit record
    cannot be committed the old file is put back, so a replacement is never
    unaudited.
    """
    from keyward.agent import scan
    from keyward.registry.subjects import Subject

    log = get_logger()
    text = scan.updated_known_hosts(existing, chosen)
    replaced = [item for item in chosen if item.status == "changed"]
    if replaced:
        written = False
        try:
            with app.registry().write(app.actor) as tx:
                for item in replaced:
                    tx.audit(
                        "host.key-replace",
                        Subject.host(item.host.name),
                        {
                            "old_fingerprints": list(item.pinned),
                            "fingerprint": item.fingerprint,
                            "known_hosts": str(path),
                        },
                    )
                scan.write_known_hosts(path, text)
                written = True
        except BaseException:
            if written:  # the audit record did not commit: put the old pins back
                scan.write_known_hosts(path, existing)
            raise
    else:
        scan.write_known_hosts(path, text)
    for item in chosen:
        if item.status == "changed":
            log.warning(
                "host_key_replaced",
                host=item.host.name,
                old_fingerprints=list(item.pinned),
                fingerprint=item.fingerprint,
                known_hosts=str(path),
            )
            click.echo(
                f"replaced the pinned host key of {item.host.name} "
                f"({', '.join(item.pinned)} -> {item.fingerprint})",
                err=err,
            )
        else:
            log.info(
                "host_key_pinned",
                host=item.host.name,
                fingerprint=item.fingerprint,
                known_hosts=str(path),
            )
    added = len(chosen) - len(replaced)
    if added:
        click.echo(f"added {added} host keys to {path}", err=err)


def register(cli: click.Group) -> None:
    cli.add_command(hosts)
