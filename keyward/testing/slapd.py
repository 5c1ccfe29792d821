"""A real, throwaway OpenLDAP ``slapd`` for the directory-sync tests and benchmark.

Debian's ``slapd`` package, started on a loopback address and a free port with its own
``slapd.conf`` and an MDB database in a temporary directory, loaded with ``slapadd``
before it starts (fast even for ten thousand entries), stopped and removed afterwards.
As with sshd and PostgreSQL, a missing install is an error, not a skip
(``scripts/test`` installs ``slapd`` and ``ldap-utils``).

The directory looks like a small company: ``ou=people`` with ``inetOrgPerson`` entries,
``ou=groups`` with ``groupOfNames`` (the ``memberof`` overlay gives people their
``memberOf``), and a test schema with the two disabled-account attributes keyward
understands: ``nsAccountLock`` (389/Red Hat DS style) and ``userAccountControl``
(Active Directory). ``cn=keyward`` is the read-only bind account; ``cn=limited`` can read
at most three entries per paged search, to cut a search short for real.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from keyward.testing.fleet import free_port

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
SUFFIX = "dc=example,dc=com"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "admin-secret"  # noqa: S105  # a throwaway test directory
BIND_DN = f"cn=keyward,{SUFFIX}"
BIND_PASSWORD = "keyward-secret"  # noqa: S105
LIMITED_DN = f"cn=limited,{SUFFIX}"
START_TIMEOUT = 20.0

TEST_SCHEMA = """\
attributetype ( 2.16.840.1.113730.3.1.610 NAME 'nsAccountLock'
    DESC 'account inactivation, as 389 Directory Server has it'
    EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'
    DESC 'Active Directory account flags; bit 2 is ACCOUNTDISABLE'
    EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.4203.666.11.99.1 NAME 'keywardTestAccount' AUXILIARY
    MAY ( nsAccountLock $ userAccountControl ) )
"""


@dataclass(frozen=True)
class Person:
    """One ``ou=people`` entry."""

    uid: str
    name: str
    email: str | None = None
    locked: bool = False
    account_control: int | None = None

    @property
    def dn(self) -> str:
        return f"uid={self.uid},{PEOPLE}"


@dataclass(frozen=True)
class Group:
    cn: str
    members: tuple[str, ...] = ()

    @property
    def dn(self) -> str:
        return f"cn={self.cn},{GROUPS}"


def _ldif_person(person: Person) -> str:
    lines = [
        f"dn: {person.dn}",
        "objectClass: inetOrgPerson",
        "objectClass: keywardTestAccount",
        f"uid: {person.uid}",
        f"cn: {person.name}",
        f"sn: {person.name.split()[-1]}",
    ]
    if person.email:
        lines.append(f"mail: {person.email}")
    if person.locked:
        lines.append("nsAccountLock: TRUE")
    if person.account_control is not None:
        lines.append(f"userAccountControl: {person.account_control}")
    return "\n".join(lines) + "\n\n"


def base_ldif(people: Iterable[Person]) -> str:
    """The whole directory as LDIF, in an order slapadd accepts (parents first)."""
    parts = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\n"
        "o: Example\n\n",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n",
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n\n",
        f"dn: ou=contractors,{SUFFIX}\nobjectClass: organizationalUnit\nou: contractors\n\n",
        f"dn: {BIND_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: keyward\nuserPassword: {BIND_PASSWORD}\n\n",
        f"dn: {LIMITED_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: limited\nuserPassword: {BIND_PASSWORD}\n\n",
    ]
    parts.extend(_ldif_person(person) for person in people)
    return "".join(parts)


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate for an IP address, in PEM files."""

    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path, address: str, name: str | None = None) -> TlsFiles:
    """A CA and a certificate it signs for ``address`` (or ``name``, to test a mismatch)."""
    import ipaddress
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyward test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt: x509.GeneralName = (
        x509.DNSName(name) if name else x509.IPAddress(ipaddress.ip_address(address))
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name or address)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


@dataclass
class Slapd:
    """``with Slapd(people) as ldap:`` a running directory at ``ldap.url``."""

    people: Iterable[Person] = ()
    address: str = "127.0.0.1"
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="keyward-slapd-")))
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    tls: TlsFiles | None = None
    """With TLS files, slapd also offers StartTLS on ``url`` and listens on ``ldaps_url``."""
    ldaps_port: int = 0

    @property
    def url(self) -> str:
        return f"ldap://{self.address}:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{self.address}:{self.ldaps_port}"

    def _config(self) -> Path:
        (self.base / "schema.schema").write_text(TEST_SCHEMA)
        (self.base / "db").mkdir(mode=0o700)
        includes = "\n".join(
            f"include {SCHEMA_DIR / name}.schema"
            for name in ("core", "cosine", "inetorgperson", "nis")
        )
        tls = ""
        if self.tls is not None:
            tls = (
                f"TLSCACertificateFile {self.tls.ca}\n"
                f"TLSCertificateFile {self.tls.cert}\n"
                f"TLSCertificateKeyFile {self.tls.key}\n"
            )
        conf = self.base / "slapd.conf"
        conf.write_text(
            f"""{includes}
include {self.base / "schema.schema"}
{tls}
pidfile {self.base / "slapd.pid"}
argsfile {self.base / "slapd.args"}
modulepath {MODULE_DIR}
moduleload back_mdb
moduleload memberof
loglevel none

database mdb
maxsize 268435456
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PASSWORD}
directory {self.base / "db"}
index objectClass,uid eq
overlay memberof
limits dn.exact="{BIND_DN}" size=unlimited size.prtotal=unlimited
limits dn.exact="{LIMITED_DN}" size.prtotal=3
access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="{BIND_DN}" read by dn.exact="{LIMITED_DN}" read by * none
"""
        )
        return conf

    def start(self) -> None:
        conf = self._config()
        ldif = self.base / "data.ldif"
        ldif.write_text(base_ldif(self.people))
        # -q: quick mode for a fresh database. The memberof overlay works only on writes
        # through slapd, so groups are added live (add_group), never loaded here.
        subprocess.run(
            [SLAPADD, "-q", "-f", str(conf), "-l", str(ldif)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self.port = free_port(self.address)
        listeners = self.url
        if self.tls is not None:
            self.ldaps_port = free_port(self.address)
            listeners += " " + self.ldaps_url
        self.process = subprocess.Popen(
            [SLAPD, "-d", "0", "-f", str(conf), "-h", listeners],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"slapd exited {self.process.returncode}: {err[-2000:]}")
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("slapd did not start listening") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Slapd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- changing the directory while it runs, as HR would ------------------------------

    def admin(self) -> Any:
        """A connection bound as the directory's administrator (ldap3 is untyped)."""
        import ldap3

        server = ldap3.Server(self.address, port=self.port, get_info=ldap3.NONE)
        return ldap3.Connection(server, ADMIN_DN, ADMIN_PASSWORD, auto_bind=True)

    def modify(self, dn: str, **values: str | None) -> None:
        """Replace (or with None delete) attributes of ``dn``."""
        import ldap3

        changes = {
            name: [(ldap3.MODIFY_REPLACE, [value] if value is not None else [])]
            for name, value in values.items()
        }
        conn = self.admin()
        try:
            if not conn.modify(dn, changes):
                raise RuntimeError(f"modify {dn}: {conn.result}")
        finally:
            conn.unbind()

    def delete(self, dn: str) -> None:
        conn = self.admin()
        try:
            if not conn.delete(dn):
                raise RuntimeError(f"delete {dn}: {conn.result}")
        finally:
            conn.unbind()

    def add_group(self, group: Group) -> None:
        """A group added live, so the memberof overlay gives its members ``memberOf``."""
        conn = self.admin()
        try:
            members = [f"uid={uid},{PEOPLE}" for uid in group.members] or [BIND_DN]
            if not conn.add(group.dn, ["groupOfNames"], {"cn": group.cn, "member": members}):
                raise RuntimeError(f"add {group.dn}: {conn.result}")
        finally:
            conn.unbind()

    def add_person(self, person: Person) -> None:
        """A new hire, added live."""
        conn = self.admin()
        try:
            attributes: dict[str, Any] = {
                "uid": person.uid,
                "cn": person.name,
                "sn": person.name.split()[-1],
            }
            if person.email:
                attributes["mail"] = person.email
            if not conn.add(person.dn, ["inetOrgPerson", "keywardTestAccount"], attributes):
                raise RuntimeError(f"add {person.dn}: {conn.result}")
        finally:
            conn.unbind()
