"""``keyward demo``: the whole flow on a machine with nothing set up.

It starts three local SSH hosts on loopback (real OpenSSH ``sshd`` processes when
``sshd`` is installed, otherwise asyncssh servers inside this process that enforce the
authorized_keys files the agent writes; ``KEYWARD_DEMO_BACKEND=openssh|embedded`` forces
one), registers people, keys and a role in a throw-away registry, reconciles, logs in
with the granted key, revokes it, reconciles again, shows the login refused,
verifies the audit chain and cleans everything up.  Every step is printed as
the keyward command a user would type.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import getpass
import io
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from keyward.errors import KeywardError
from keyward.testing.sshd import find_sshd

if TYPE_CHECKING:
    from keyward.testing.embedded_ssh import EmbeddedFleet
    from keyward.testing.localfleet import LocalFleet


class DemoError(KeywardError):
    exit_code = 1


OPENSSH = "openssh"
EMBEDDED = "embedded"
BACKEND_ENV = "KEYWARD_DEMO_BACKEND"


def choose_backend() -> str:
    """``openssh`` when sshd is installed, else ``embedded``; ``$KEYWARD_DEMO_BACKEND`` forces.

    sshd is found by ``find_sshd``, the function ``LocalFleet`` starts it by, so the
    OpenSSH demo is chosen only where its fleet can start.
    """
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if forced == OPENSSH:
        if find_sshd() is None:
            raise DemoError(
                f"{BACKEND_ENV}=openssh but OpenSSH's sshd is not installed "
                "(Debian/Ubuntu: apt-get install openssh-server)"
            )
        return OPENSSH
    if forced == EMBEDDED:
        return EMBEDDED
    if forced:
        raise DemoError(f"{BACKEND_ENV} must be 'openssh' or 'embedded', not {forced!r}")
    return OPENSSH if find_sshd() is not None else EMBEDDED


class Demo:
    def __init__(
        self, work: Path, fleet: LocalFleet | EmbeddedFleet, user: str, backend: str
    ) -> None:
        self.work = work
        self.fleet = fleet
        self.user = user
        self.backend = backend
        # The real ssh client proves logins to real sshd; otherwise an asyncssh client does.
        self.use_ssh_client = backend == OPENSSH and shutil.which("ssh") is not None
        self.inventory = work / "inventory"
        # What a user would export before typing the commands below.
        self.env = {
            "KEYWARD_DB": str(work / "registry.db"),
            "KEYWARD_INVENTORY": str(self.inventory),
            "KEYWARD_ACTOR": "demo-admin",
            # The demo's audit checkpoints (and their key) go away with its directory.
            "KEYWARD_CHECKPOINT_DIR": str(work / "checkpoints"),
        }

    def say(self, text: str) -> None:
        click.secho(f"\n== {text}", bold=True)

    def run(self, *args: str, actor: str | None = None, check: bool = True) -> int:
        shown = " ".join(args)
        click.secho(f"$ keyward {shown}", fg="cyan")
        code, out, err = self.invoke(*args, actor=actor)
        if out:
            click.echo(out.rstrip())
        if code != 0 and check:
            click.echo(err.rstrip(), err=True)
            raise DemoError(f"demo step failed: keyward {shown} (exit {code})")
        return code

    def invoke(self, *args: str, actor: str | None = None) -> tuple[int, str, str]:
        """Run ``keyward ARGS`` in this process: (exit code, stdout, stderr).

        The same ``main()`` as the ``keyward`` script, with the demo's environment, but
        without a new interpreter per step: a fresh process pays the imports (SQLAlchemy,
        asyncssh) again each time, which was most of the demo's run time.
        """
        from keyward.cli.main import main

        env = {**self.env, "KEYWARD_ACTOR": actor or self.env["KEYWARD_ACTOR"]}
        saved = {name: os.environ.get(name) for name in env}
        out, err = io.StringIO(), io.StringIO()
        code = 0
        os.environ.update(env)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        return code, out.getvalue(), err.getvalue()

    def login(self, key: Path, expect: bool) -> None:
        """Try ``key`` on every host at once (each login is its own client and connection)."""
        known = self.inventory / "known_hosts"
        if self.use_ssh_client:
            from keyward.testing.ssh_client import can_login as check
        else:
            from keyward.testing.asyncssh_client import asyncssh_can_login as check

        hosts = self.fleet.hosts
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            verdicts = list(pool.map(lambda h: check(h, self.user, key, known), hosts))
        for host, ok in zip(hosts, verdicts, strict=True):
            verdict = "logged in" if ok else "refused"
            click.echo(f"  ssh -i {key.name} {self.user}@{host.address} -p {host.port}: {verdict}")
            if ok != expect:
                raise DemoError(
                    f"expected the login on {host.name} to be {'accepted' if expect else 'refused'}"
                )


def _no_rc_files(base: Path, user: str) -> str:
    """sshd_config lines giving ``user``'s sessions an empty ``$HOME`` for rc files.

    The demo's hosts stand in for fresh servers, but they share this machine's accounts:
    a slow ``~/.bashrc`` (``pyenv init`` takes about 0.3 s) would run in every agent session
    and every login the demo checks.  The session still runs in the account's real home
    (sshd changes to the passwd home, not ``$HOME``), and keys are still read from the
    fleet's ``AuthorizedKeysFile``.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", user):
        return ""  # a name sshd_config cannot carry unquoted: keep the rc files
    home = base / "empty-home"
    home.mkdir(mode=0o755, parents=True, exist_ok=True)
    return f"Match User {user}\n  SetEnv HOME={home}\n"


def _fleet(backend: str, base: Path, hosts: int, user: str) -> LocalFleet | EmbeddedFleet:
    if backend == OPENSSH:
        from keyward.testing.localfleet import LocalFleet

        return LocalFleet(
            base / "fleet", hosts, name_prefix="demo-", extra_config=_no_rc_files(base, user)
        )
    from keyward.testing.embedded_ssh import EmbeddedFleet  # asyncssh: only for this backend

    return EmbeddedFleet(base / "fleet", hosts, name_prefix="demo-")


def run_demo(hosts: int, keep: bool) -> None:
    from keyward.testing.fleet import safe_base_dir
    from keyward.testing.inventory import AccessSpec, InventorySpec, write_inventory
    from keyward.testing.keypairs import make_ed25519

    backend = choose_backend()
    user = getpass.getuser()
    base = safe_base_dir("keyward-demo-")
    work = Path(tempfile.mkdtemp(prefix="keyward-demo-"))
    try:
        with _fleet(backend, base, hosts, user) as fleet:
            demo = Demo(work, fleet, user, backend)
            keys = work / "keys"
            agent = make_ed25519(keys / "agent", "keyward-agent")
            alice = make_ed25519(keys / "alice", "alice@laptop")
            make_ed25519(keys / "bob", "bob@laptop")
            # Bootstrap: the agent's own key is placed once, as an operator would.
            for host in fleet.hosts:
                path = host.authorized_keys_path(user)
                path.write_text(Path(f"{agent}.pub").read_text())
                os.chmod(path, 0o600)
            spec = InventorySpec(
                environment="demo",
                login=user,
                accounts=(user,),
                access=(AccessSpec(("devops",), (user,), ("no-agent-forwarding",)),),
            )
            write_inventory(demo.inventory, fleet.hosts, spec, agent)
            addresses = ", ".join(f"{h.address}:{h.port}" for h in fleet.hosts)
            if backend == OPENSSH:
                kind = "OpenSSH sshd"
            else:
                kind = "embedded asyncssh (no OpenSSH sshd used)"
            client = "ssh" if demo.use_ssh_client else "asyncssh client"
            click.echo(f"backend: {kind}; logins checked with: {client}")
            demo.say(f"{hosts} SSH hosts running on loopback ({addresses}); account {user}")
            demo.run("inventory", "check")
            demo.say("Register people, their personal keys and a role")
            demo.run("init")
            demo.run("person", "add", "alice", "--name", "Alice Example")
            demo.run("person", "add", "bob", "--name", "Bob Example")
            demo.run("key", "add", "alice", str(alice) + ".pub", "--attest", "admin")
            demo.run("key", "add", "bob", str(keys / "bob.pub"), "--attest", "admin")
            demo.run("role", "add", "devops", "--description", "production operators")
            demo.run("role", "grant", "devops", "alice", "--reason", "OPS-42", actor="security")
            demo.say("Plan, then reconcile every host")
            demo.run("plan", check=False)
            demo.run("reconcile")
            demo.say("alice (devops) logs in; bob (no role) is refused")
            demo.login(alice, expect=True)
            demo.login(keys / "bob", expect=False)
            demo.say("A second reconcile changes nothing")
            demo.run("reconcile")
            demo.say("Revoke alice's key and reconcile: her login is refused everywhere")
            code, listed, err = demo.invoke("key", "list", "alice", "--json")
            if code != 0:
                raise DemoError(f"demo step failed: keyward key list alice --json: {err}")
            fp = json.loads(listed)[0]["fingerprint"]
            demo.run("key", "revoke", fp, "--reason", "laptop stolen (INC-7)")
            demo.run("reconcile")
            demo.login(alice, expect=False)
            demo.say("Who did what: the audit trail, and its hash chain")
            demo.run("audit", "log")
            demo.run("audit", "verify")
            demo.run("status")
        click.secho("\ndemo finished: all hosts stopped", bold=True)
    finally:
        if keep:
            click.echo(f"kept {work} (registry, inventory, keys)")
        else:
            _remove_tree(work)
        _remove_tree(base)


def _remove_tree(path: Path) -> None:
    """Remove a directory even while stopped sshd processes finish removing their pid files."""
    for _ in range(25):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.2)


@click.command()
@click.option("--hosts", type=click.IntRange(1, 20), default=3, help="How many local hosts.")
@click.option("--keep", is_flag=True, help="Keep the demo registry, inventory and keys.")
def demo(hosts: int, keep: bool) -> None:
    """Run the whole flow against local SSH hosts on loopback; leaves nothing behind."""
    from keyward.testing.fleet import is_root

    if not is_root() and os.environ.get("KEYWARD_DEMO_ALLOW_USER") is None:
        pass  # works as a normal user too: sshd then serves only that user
    run_demo(hosts, keep)


def register(cli: click.Group) -> None:
    cli.add_command(demo)
