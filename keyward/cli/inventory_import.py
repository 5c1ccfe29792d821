"""``keyward inventory import ansible``: environment files from an Ansible inventory.

The conversion is ``keyward.inventory.ansible`` (pure); this module is its thin edge:
run ``ansible-inventory --list`` (or read its JSON from stdin), print or write the files,
and name everything that was not imported.  It attaches ``import`` to the ``inventory``
group (``attach``) instead of registering a top-level command of its own, and imports
nothing heavier than click until the command runs, so ``inventory check`` stays fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from keyward.cli.output import chatter, emit_json
from keyward.errors import KeywardError, UsageError

if TYPE_CHECKING:
    from keyward.inventory.ansible import Conversion

ANSIBLE_INVENTORY = "ansible-inventory"
ANSIBLE_TIMEOUT = 300.0  # seconds; a dynamic inventory may ask a cloud API
INSTALL_HINT = (
    "install Ansible (pip install ansible-core), or run `ansible-inventory -i INVENTORY --list` "
    "where it is installed and pipe its output to `keyward inventory import ansible -`"
)
ATTESTATIONS = ("none", "admin", "proof", "sk")  # keyward.attestation, without importing it


class AnsibleFailed(KeywardError):
    """``ansible-inventory`` is missing, failed or did not finish."""

    exit_code = 1


@click.group("import")
def import_group() -> None:
    """Environment files from where teams already keep their host lists."""


@import_group.command("ansible")
@click.argument("source", metavar="INVENTORY")
@click.option(
    "--env-group",
    "env_groups",
    multiple=True,
    metavar="ENV=GROUP",
    help="Environment ENV is Ansible group GROUP and every host under it (repeatable; "
    "ENV=all for the whole inventory). Default: every top-level group, under its own name.",
)
@click.option(
    "--min-attestation",
    type=click.Choice(ATTESTATIONS),
    default="proof",
    show_default=True,
    help="min_attestation written into every environment file.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the files into this directory. Without it, print them and write nothing.",
)
@click.option("--force", is_flag=True, help="Overwrite environment files that exist in --out.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def import_ansible(
    source: str,
    env_groups: tuple[str, ...],
    min_attestation: str,
    out: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    """Turn an Ansible inventory into keyward environment files.

    INVENTORY is what `ansible-inventory -i` takes (an INI or YAML file, a directory, a
    plugin configuration), read through ansible-inventory itself; `-` reads the JSON of
    `ansible-inventory --list` from stdin. Every host, group and variable that could not
    be mapped is reported, one line each. Environments use mode managed-block, so the
    keys already on the hosts stay.
    """
    from keyward.inventory.ansible import convert, load_list_json, parse_env_groups, render

    text = sys.stdin.read() if source == "-" else run_ansible_inventory(source)
    result = convert(load_list_json(text), parse_env_groups(env_groups))
    label = "stdin" if source == "-" else source
    files = {env.file_name: render(env, label, min_attestation) for env in result.environments}
    written: list[str] | None = None
    if out is not None and files:
        written = [str(path) for path in write_files(out, files, force=force)]
    if as_json:
        emit_json(_json(result, files, written))
    else:
        if out is None:
            for name, body in files.items():
                click.echo(f"# ---- {name} ----")
                click.echo(body)
        for problem in result.problems:
            click.echo(str(problem), err=True)
        _summary(result, out, written)
    if not files:
        raise UsageError("no environment file to write: no host could be imported")


def run_ansible_inventory(source: str, timeout: float = ANSIBLE_TIMEOUT) -> str:
    """The ``--list`` JSON of ``source``; any source ansible cannot parse is an error.

    By default ansible-inventory only warns about a file it cannot parse and lists
    the rest (or nothing): an import must not quietly miss hosts.
    """
    env = {
        **os.environ,
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
        "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true",
        "ANSIBLE_NOCOLOR": "true",
    }
    locale = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or ""
    if "utf-8" not in locale.lower() and "utf8" not in locale.lower():
        env["LC_ALL"] = "C.UTF-8"  # ansible refuses to start under any other encoding
    try:
        done = subprocess.run(
            [ANSIBLE_INVENTORY, f"--inventory={source}", "--list"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise AnsibleFailed(f"{ANSIBLE_INVENTORY} is not installed: {INSTALL_HINT}") from None
    except subprocess.TimeoutExpired:
        raise AnsibleFailed(f"{ANSIBLE_INVENTORY} did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if "ERROR" in line] or lines or ["(no message)"]
        raise AnsibleFailed(
            f"{ANSIBLE_INVENTORY} -i {source} failed (exit {done.returncode}): {errors[0]}"
        )
    return done.stdout


def write_files(out: Path, files: dict[str, str], *, force: bool) -> list[Path]:
    """Write every file into ``out``, or none: existing ones are refused unless ``force``."""
    targets = {out / name: body for name, body in files.items()}
    existing = [str(path) for path in targets if path.exists()]
    if existing and not force:
        raise UsageError(
            f"{', '.join(existing)} already exist(s); nothing written (--force to overwrite)"
        )
    out.mkdir(parents=True, exist_ok=True)
    for path, body in targets.items():
        partial = path.with_name(f".{path.name}.tmp")
        partial.write_text(body, encoding="utf-8")
        partial.replace(path)
    return list(targets)


def _summary(result: Conversion, out: Path | None, written: list[str] | None) -> None:
    hosts = sum(len(env.hosts) for env in result.environments)
    head = (
        f"{len(result.environments)} environment(s), {hosts} host(s); "
        f"{len(result.left_out)} host(s) left out, {len(result.problems)} line(s) not imported"
    )
    if out is None:
        chatter(f"{head}; dry run, nothing written (--out DIR writes the files)", err=True)
    elif written:
        for path in written:
            chatter(f"wrote {path}", err=True)
        chatter(f"{head}; next: keyward --inventory {out} inventory check", err=True)


def _json(result: Conversion, files: dict[str, str], written: list[str] | None) -> dict[str, Any]:
    return {
        "environments": [
            {
                "name": env.name,
                "group": env.group,
                "file": env.file_name,
                "hosts": [
                    {
                        "name": host.name,
                        "address": host.address,
                        "port": host.port,
                        "login": host.login,
                        "groups": list(host.groups),
                    }
                    for host in env.hosts
                ],
                "toml": files[env.file_name],
            }
            for env in result.environments
        ],
        "problems": [{"where": p.where, "message": p.message} for p in result.problems],
        "left_out": list(result.left_out),
        "written": written,
    }


def attach(inventory: click.Group) -> None:
    """Add ``import`` to the ``inventory`` group (defined in inventory_cmds)."""
    inventory.add_command(import_group)
