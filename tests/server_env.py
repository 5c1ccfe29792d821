"""A real ``keyward server`` for tests: a SQLite registry, people with real keys, an ssh-agent.

The server runs as ``python3 -m keyward server`` in a subprocess on 127.0.0.x, exactly as
the systemd unit starts it; the ssh-agent is started by the test, bounded, and killed
after.  People:

- rita: a member who files the requests the approvers decide;
- alice: a member; bob: approver of ``devops`` (through the role ``security``);
- carol: approver of ``dba`` only (named as a person);
- dave: auditor; erin: administrator;
- frank: offboarded; grace: her only key revoked.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from keyward.auth.signer import KeySigner, load_signer
from keyward.registry import lifecycle
from keyward.registry.store import Registry
from tests.cli_runner import Keyward
from tests.keygen import make_key

ROOT = Path(__file__).resolve().parent.parent
PEOPLE = ("rita", "alice", "bob", "carol", "dave", "erin", "frank", "grace")

SETTINGS = """\
[server]
admin_role = "kw-admin"
auditor_role = "kw-auditor"
min_attestation = "admin"
session_hours = 8

[server.approvers]
devops = ["role:security"]
dba = ["person:carol"]

[policy]
purge_after_days = 0  # 'person purge' works at once (tests/test_server_api.py)
"""

ENVIRONMENT = """\
[environment]
name = "prod"
min_attestation = "admin"

[defaults]
login = "root"
accounts = ["deploy"]

[[hosts]]
name = "prod-web-1"
address = "127.0.0.1"

[[access]]
roles = ["devops"]
accounts = ["deploy"]
"""


_LOGINS = itertools.count(1)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ServerEnv:
    base: Path
    db_url: str
    inventory: Path
    url: str
    kw: Keyward
    keys: dict[str, Path]  # person -> private key file (its .pub beside it)
    agent_sock: str
    process: subprocess.Popen[bytes]
    log: Path
    signers: dict[str, KeySigner] = field(default_factory=dict)

    def signer(self, person: str) -> KeySigner:
        if person not in self.signers:
            self.signers[person] = load_signer(str(self.keys[person]))
        return self.signers[person]

    def pub(self, person: str) -> Path:
        key = self.keys[person]
        return key.with_name(key.name + ".pub")

    def registry(self) -> Registry:
        return Registry.open(self.db_url)

    def request_for(self, person: str = "rita", role: str = "devops") -> int:
        """A new pending request of ``person``, filed directly in the database."""
        result = self.kw.ok(
            "access",
            "request",
            role,
            "--env",
            "prod",
            "--for",
            "1h",
            "--reason",
            "fix",
            "--json",
            actor=person,
        )
        return int(result.json()["id"])

    def alert_for(self, person: str = "rita", host: str | None = "prod-web-1") -> int:
        """A new open alert about ``person``, raised directly in the database."""
        from keyward.registry.models import Alert

        registry = self.registry()
        try:
            with registry.write("keyward-agent") as tx:
                alert = Alert(
                    kind="new_source",
                    person=person,
                    host=host,
                    summary=f"{person} logged in from a new address",
                    details='{"addr": "127.0.0.9"}',
                    created_at=tx.now,
                )
                tx.session.add(alert)
                tx.session.flush()
                assert alert.id is not None
                return alert.id
        finally:
            registry.dispose()

    def mark_offboarded(self, person: str) -> None:
        """Mark ``person`` offboarded directly in the database (no case: nothing to confirm)."""
        from keyward.registry import ops

        registry = self.registry()
        try:
            with registry.write("keyward-agent") as tx:
                row = ops.find_person(tx.session, person)
                row.status = "offboarded"
                tx.session.add(row)
        finally:
            registry.dispose()

    def login_for(self, person: str, host: str = "prod-web-1", outcome: str = "accepted") -> None:
        """A login event of ``person``'s key, stored directly in the database."""
        from keyward.registry.models import LoginEvent

        registry = self.registry()
        try:
            with registry.write("keyward-agent") as tx:
                n = next(_LOGINS)
                tx.session.add(
                    LoginEvent(
                        host=host,
                        account="deploy",
                        at=tx.now,
                        outcome=outcome,
                        addr="127.0.0.9",
                        port=40000 + n,
                        fingerprint=f"SHA256:test{n}",
                        person=person,
                        pos=f"test:{n}",
                        collected_at=tx.now,
                    )
                )
        finally:
            registry.dispose()

    def head(self) -> tuple[int, str]:
        registry = self.registry()
        try:
            return registry.head()
        finally:
            registry.dispose()

    def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """A raw HTTP request; (status, parsed JSON body)."""
        request = urllib.request.Request(
            self.url + path,
            data=body if method != "GET" or body else None,
            method=method,
            headers={"content-type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            assert b"Traceback" not in raw, raw
            assert raw.count(b"\n") == 0, raw  # one line
            return exc.code, json.loads(raw)

    def signed(
        self,
        person: str,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        when: datetime | None = None,
    ) -> dict[str, str]:
        return self.signer(person).headers(method, path, body, when or datetime.now(UTC))

    def cli_env(self, person: str, **extra: str) -> dict[str, str]:
        """The environment a person's shell has when using the server through their agent."""
        return {
            "KEYWARD_URL": self.url,
            "KEYWARD_KEY": str(self.pub(person)),
            "SSH_AUTH_SOCK": self.agent_sock,
            "KEYWARD_STATE_DIR": str(self.base / "home" / person),
            **extra,
        }


def _wait_listening(host: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"keyward server exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"keyward server did not listen in 30 s: {log.read_text()[-2000:]}")


@contextmanager
def ssh_agent(base: Path) -> Iterator[str]:
    sock = str(base / "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if time.monotonic() > deadline or agent.poll() is not None:
                raise RuntimeError("ssh-agent did not start")
            time.sleep(0.02)
        yield sock
    finally:
        agent.kill()
        agent.wait(timeout=10)


def start_server(
    base: Path,
    db_url: str,
    inventory: Path,
    host: str,
    port: int,
    *extra: str,
    environ: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], Path]:
    """``environ`` is added to the server's environment (``KEYWARD_NOW`` for a fixed clock)."""
    log = base / f"server-{port}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KEYWARD_STATE_DIR": str(base / "state")}
    env.pop("KEYWARD_NOW", None)
    env.update(environ or {})
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keyward",
                "--db",
                db_url,
                "--inventory",
                str(inventory),
                "--log-format",
                "json",
                "server",
                "--listen",
                f"{host}:{port}",
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return process, log


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def server_env(
    base: Path, host: str = "127.0.0.21", db_url: str | None = None
) -> Iterator[ServerEnv]:
    inventory = base / "inventory"
    inventory.mkdir(parents=True)
    # The agent's own key: the access review (``report access``, the web page) plans with it.
    agent_key, _ = make_key(base / "keys", "ed25519", name="agent", comment="keyward-agent")
    (inventory / "keyward.toml").write_text(f'[agent]\nidentity = "{agent_key}"\n\n{SETTINGS}')
    (inventory / "prod.toml").write_text(ENVIRONMENT)
    db_url = db_url or f"sqlite:///{base / 'registry.db'}"
    kw = Keyward(db_url, str(inventory))
    kw.ok("init")
    keys: dict[str, Path] = {}
    for person in PEOPLE:
        kw.ok("person", "add", person, "--name", person.title())
        private, public = make_key(base / "keys", "ed25519", name=person, comment=person)
        kw.ok("key", "add", person, str(public), "--attest", "admin")
        keys[person] = private
    for role in ("security", "devops", "dba", "kw-admin", "kw-auditor"):
        kw.ok("role", "add", role)
    for role, person in (("security", "bob"), ("kw-auditor", "dave"), ("kw-admin", "erin")):
        kw.ok("role", "grant", role, person, "--reason", "setup")
    fingerprint = load_signer(str(keys["grace"])).public.fingerprint
    kw.ok("key", "revoke", fingerprint, "--reason", "lost laptop")
    registry = Registry.open(db_url)
    with registry.write("admin") as tx:
        lifecycle.offboard(tx, "frank", "left", [])
    registry.dispose()
    port = free_port(host)
    process, log = start_server(base, db_url, inventory, host, port)
    try:
        _wait_listening(host, port, process, log)
        with ssh_agent(base) as sock:
            for person in PEOPLE:
                subprocess.run(
                    ["ssh-add", "-q", str(keys[person])],
                    env={**os.environ, "SSH_AUTH_SOCK": sock},
                    check=True,
                    capture_output=True,
                    timeout=10,
                )
            yield ServerEnv(
                base, db_url, inventory, f"http://{host}:{port}", kw, keys, sock, process, log
            )
    finally:
        stop(process)


def self_signed(directory: Path, address: str) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyward test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextmanager
def tls_server(server: ServerEnv, directory: Path, host: str) -> Iterator[tuple[str, Path, Path]]:
    """A second server on ``server``'s registry, serving TLS itself on ``host`` with a
    self-signed certificate: yields (its https URL, the certificate, its log), stopped after."""
    cert, key = self_signed(directory, host)
    port = free_port(host)
    process, log = start_server(
        server.base,
        server.db_url,
        server.inventory,
        host,
        port,
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    try:
        _wait_listening(host, port, process, log)
        yield f"https://{host}:{port}", cert, log
    finally:
        stop(process)
