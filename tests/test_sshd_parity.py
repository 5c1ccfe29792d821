"""Differential test: keyward's authorized_keys reader against a real sshd.

The judge is the local OpenSSH ``sshd`` (9.2 on the test image).  Every case
is one line of one authorized_keys file, and every line carries its own,
freshly generated key, so a login with case *i*'s key can only ever match line
*i*.  We log in with each key and read sshd's verdict from its DEBUG1 log:

    sshd honours the line  <=>  sshd logs "<file>:<i>: matching key found"

sshd logs that after it has read the key *and* accepted the line's options,
and before it applies them.  So a line whose ``from=`` does not match the
client, or whose ``expiry-time`` is past, still counts as honoured: sshd
would let that key in from elsewhere or did until then, and an offboarding
sweep must see it.  A line sshd skips entirely (no key it can read, an
option it refuses) is never logged.

    keyward sees the line  <=>  parse_authorized_keys() reports, on line i,
                                a key with the fingerprint of case i's key

The two must agree on every case.  The property that matters most is "every
key sshd could honour, keyward sees" (never miss a key); the other direction,
"keyward reports no key on a line sshd ignores", holds too, except for the
documented deviations in ``DEVIATIONS``, each of which errs on the side of
seeing a key (safe for offboarding: a key that is seen can be removed).  The
test fails on any undocumented disagreement, and also when a documented
deviation stops happening (so the list cannot rot).

The cases are OpenSSH's own option-parser test strings (see
``OPENSSH_AUTHOPT``), the line shapes from the issue, key-encoding variants,
and a fixed, seeded set of generated option mutations: about 200 keys.  A
connection per key would cost a fork and re-exec of sshd each, far too slow
on a shared machine, so sshd is configured with ``AuthenticationMethods
publickey,publickey,...`` (one step per case): on a single connection the
client offers every case's key once, in order, and each key sshd accepts is
a partial success that lets the next key be tried.  This changes nothing in
how sshd reads the file; the log lines are per key and per line either way.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import getpass
import random
import re
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from keyward.authorized_keys import parse_authorized_keys
from keyward.keys import WireReader
from keyward.options import validate_option
from keyward.testing.fleet import FleetHost, safe_base_dir
from keyward.testing.localfleet import LocalFleet
from keyward.testing.ssh_client import ssh_login
from tests.agent_env import AgentEnv

# --- the corpus ----------------------------------------------------------------

# Option strings from OpenSSH's own option-parser unit test,
# regress/unittests/authopt/tests.c (openssh-portable V_9_2_P1, unchanged to
# V_10_2_P1; "Placed in the public domain"), test_authkeys_parse().  The
# FLAG_TEST, STRING_TEST and ARRAY_TEST macros there also run each string
# prefixed with "restrict," (and for strings and arrays suffixed with
# ",restrict"); those forms are spelled out here.  In the unit test a FAIL
# string ends the options; here a space and a key follow it, which is why
# "restrict," and "," are honoured lines below (sshd passes over an empty
# option when a space, not the end of the string, follows the comma).
_FLAGS = [
    "cert-authority",
    "port-forwarding",
    "agent-forwarding",
    "x11-forwarding",
    "pty",
    "user-rc",
    "no-port-forwarding",
    "no-agent-forwarding",
    "no-x11-forwarding",
    "no-pty",
    "no-user-rc",
]
_STRINGS = [
    'command="/bin/true"',
    'principals="gregor,josef,K"',
    'from="127.0.0.0/8"',
]
_ARRAYS = [
    'environment="foo=1",environment="bar=2"',
    'environment="foo=1",environment="foo=2"',
    'permitopen="foo:123",permitopen="bar:*"',
]
_FAILS = [
    "restrict,",
    ",",
    "BLAH",
    "BLAH,",
    "BLAH ",
    'tunnel="blah"',
    "no-cert-authority",
    "command=oops",
    "principals=estragon",
    "from=127.0.0.1",
    'environment=",=bah"',
    "foo:bar",
    "foo:",
    "foo",
    "[:",
]
OPENSSH_AUTHOPT: list[str] = [
    "",
    " ",
    "restrict",
    'tunnel="1"',
    'tunnel="any"',
    *_FLAGS,
    *(f"restrict,{flag}" for flag in _FLAGS),
    *_STRINGS,
    *(f"restrict,{s},restrict" for s in _STRINGS),
    *_ARRAYS,
    *(f"restrict,{a},restrict" for a in _ARRAYS),
    *_FAILS,
]

# Line shapes named in the issue, and the option checks sshd makes that the
# unit test does not reach.
ISSUE_OPTIONS: list[str] = [
    "restrict,",
    ",",
    "no-pty,,restrict",
    ",,,no-pty",
    "no-pty,\t",
    "BLAH",
    'command="a",command="b"',
    'from="a",FROM="b"',
    'expiry-time="2025"',
    'expiry-time="20301231"',
    'expiry-time="203012312359"',
    'expiry-time="20301231235959Z"',
    'expiry-time="20301231235959utc"',
    'expiry-time="20201231"',  # past: still a key sshd honoured
    'expiry-time="19700101Z"',  # the epoch itself is "invalid" to sshd
    'expiry-time="20301331"',
    'expiry-time="2030 1 1Z"',
    'expiry-time="20300101",expiry-time="20310101"',
    'from="10.0.0.0/33"',
    'from="10.1.2.3/8"',
    'from="10.0.0.1,"',
    'from=""',
    'permitopen="host:0"',
    'permitopen="host/22"',
    'permitopen=":22"',
    'permitopen="[::1]:22"',
    'permitopen="[::1]x:22"',
    'permitopen="host: 22"',
    'permitopen="host:+22"',
    'permitopen="host:ssh"',
    'permitopen="host:nosuchservicename"',
    'permitlisten="8080"',
    'permitlisten="host/22"',
    'permitlisten="0"',
    'tunnel="-1"',
    'environment="A_1=b c"',
    'environment="A-1=b"',
    "no-touch-required",
    "verify-required",
    "no-verify-required",
    "ptyx",
    "pty=1",
    "no-no-pty",
    'NO-PTY,RESTRICT,Command="/bin/true"',
    'command="echo \\"a b\\""',
    'command="x" ,pty',
    'command="x"pty',
    'command="unterminated',
    "restrict,cert-authority",
]

# Tokens the generated mutations are built from (seeded, so the same cases
# run every time).  cert-authority is left out: it is a documented deviation
# tested on its own above.
_POOL = [
    "",
    "restrict",
    "no-pty",
    "PTY",
    "no-X11-forwarding",
    "agent-forwarding",
    "user-rc",
    "BLAH",
    "restrictx",
    'command="/bin/true"',
    'command="a b,c"',
    "command=oops",
    'from="127.0.0.1"',
    'from="10.0.0.0/33"',
    'expiry-time="20300101"',
    'expiry-time="2030"',
    'environment="A=b"',
    'environment="=b"',
    'permitopen="h:22"',
    'permitopen="h"',
    'permitlisten="80"',
    'tunnel="any"',
    'tunnel="x"',
    'principals="p"',
]


def _mutations(count: int, seed: int = 20261204) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < count:
        tokens = rng.choices(_POOL, k=rng.randint(1, 4))
        text = ",".join(tokens)
        if rng.random() < 0.2:
            text = text.upper()
        if rng.random() < 0.1:
            text += ","
        if text.strip() and text not in out:
            out.append(text)
    return out


# --- keys and key-encoding cases -------------------------------------------------


@dataclass
class Key:
    kind: str
    private: Path
    line: str  # "type base64"
    blob: bytes


def _s(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _make_key(directory: Path, index: int, kind: str) -> Key:
    private_key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ed25519":
        private_key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ecdsa":
        private_key = ec.generate_private_key(ec.SECP256R1())
    else:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = directory / f"id_{index}"
    path.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    line = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return Key(kind, path, line, base64.b64decode(line.split()[1]))


def _rsa_parts(key: Key) -> tuple[bytes, bytes]:
    reader = WireReader(key.blob)
    reader.string()
    return reader.string(), reader.string()


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def _spare_bits(key: Key) -> str:
    text = _b64(key.blob)
    assert text.endswith("=") and not text.endswith("==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(text[-2])
    assert last & 3 == 0
    return f"ecdsa-sha2-nistp256 {text[:-2]}{alphabet[last | 1]}="


def _rsa_line(key: Key, stated: str, name: bytes, e_pad: int, n_pad: int, tail: bytes = b"") -> str:
    e, n = _rsa_parts(key)
    blob = _s(name) + _s(b"\0" * e_pad + e) + _s(b"\0" * n_pad + n) + tail
    return f"{stated} {_b64(blob)} rsa"


# (case id, key kind, line builder)
KEY_CASES: list[tuple[str, str, Callable[[Key], str]]] = [
    ("rsa_plain", "rsa", lambda k: k.line),
    ("rsa_e_leading_zero", "rsa", lambda k: _rsa_line(k, "ssh-rsa", b"ssh-rsa", 1, 0)),
    ("rsa_n_extra_zero", "rsa", lambda k: _rsa_line(k, "ssh-rsa", b"ssh-rsa", 0, 1)),
    (
        "rsa_both_zeros_opts",
        "rsa",
        lambda k: "restrict, " + _rsa_line(k, "ssh-rsa", b"ssh-rsa", 3, 2),
    ),
    ("rsa_sha2_512_label", "rsa", lambda k: _rsa_line(k, "rsa-sha2-512", b"ssh-rsa", 0, 0)),
    ("rsa_blob_short_name", "rsa", lambda k: _rsa_line(k, "ssh-rsa", b"RSA", 0, 0)),
    ("rsa_blob_nul_name", "rsa", lambda k: _rsa_line(k, "ssh-rsa", b"ssh-rsa\0", 0, 0)),
    ("rsa_blob_sha256_name", "rsa", lambda k: _rsa_line(k, "ssh-rsa", b"rsa-sha2-256", 0, 0)),
    ("rsa_trailing_byte", "rsa", lambda k: _rsa_line(k, "ssh-rsa", b"ssh-rsa", 0, 0, b"\0")),
    ("rsa_label_mismatch", "rsa", lambda k: _rsa_line(k, "ssh-dss", b"ssh-rsa", 0, 0)),
    ("ecdsa_plain", "ecdsa", lambda k: k.line + " c"),
    ("ecdsa_spare_bits", "ecdsa", _spare_bits),
    ("ecdsa_unpadded", "ecdsa", lambda k: k.line.rstrip("=")),
    ("ecdsa_vtab_in_b64", "ecdsa", lambda k: k.line[:40] + "\v" + k.line[40:]),
    ("ecdsa_wrong_curve", "ecdsa", lambda k: "ecdsa-sha2-nistp384 " + k.line.split()[1]),
    ("ecdsa_as_ed25519", "ecdsa", lambda k: "ssh-ed25519 " + k.line.split()[1]),
    ("ed_crlf", "ed25519", lambda k: k.line + " c\r"),
    ("ed_tabs", "ed25519", lambda k: "no-pty\t" + k.line.replace(" ", "\t") + "\tc"),
    ("ed_type_twice", "ed25519", lambda k: "ssh-ed25519 " + k.line),
    ("ed_cert_label", "ed25519", lambda k: "ssh-ed25519-cert-v01@openssh.com " + k.line.split()[1]),
]


# Where keyward and sshd differ on purpose: case id -> why.  Every entry errs
# on the side of keyward seeing a key that this sshd does not honour as a
# user key, which is safe for an offboarding sweep.
DEVIATIONS: dict[str, str] = {
    "authopt:cert-authority": (
        "a cert-authority line lets in certificates signed by its key; keyward reports the key"
    ),
    "authopt:restrict,cert-authority": "as authopt:cert-authority",
    "issue:restrict,cert-authority": "as authopt:cert-authority",
    'issue:permitopen="host:nosuchservicename"': (
        "a port name is resolved in the host's services database, which keyward cannot see; "
        "any plausible name is accepted"
    ),
}


@dataclass
class Case:
    ident: str
    key: Key
    line: str


def _cases(directory: Path) -> list[Case]:
    specs: list[tuple[str, str, Callable[[Key], str]]] = []

    def with_options(options: str) -> Callable[[Key], str]:
        return lambda k: f"{options} {k.line} case" if options else f"{k.line} case"

    specs += [(f"authopt:{o}", "ed25519", with_options(o)) for o in OPENSSH_AUTHOPT]
    specs += [(f"issue:{o}", "ed25519", with_options(o)) for o in ISSUE_OPTIONS]
    specs += [(f"mutation:{o}", "ed25519", with_options(o)) for o in _mutations(70)]
    specs += KEY_CASES
    cases: list[Case] = []
    seen: set[str] = set()
    for index, (ident, kind, build) in enumerate(specs):
        if ident in seen:
            continue
        seen.add(ident)
        key = _make_key(directory, index, kind)
        cases.append(Case(ident, key, build(key)))
    return cases


# --- the run -------------------------------------------------------------------

_MATCH = re.compile(r":(\d+): matching key found: \S+ (SHA256:[A-Za-z0-9+/]+)")


@pytest.fixture(scope="module")
def base_dir() -> Iterator[Path]:
    path = safe_base_dir("keyward-test-parity-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _offer_every_key(host: FleetHost, user: str, known: Path, cases: list[Case]) -> None:
    """Offer each case's key, in order, on as few connections to ``host`` as possible.

    sshd merges the options of every key accepted on one connection and
    drops the connection when they conflict (two different forced
    commands); the run then goes on, on a new connection, from the key that
    was being offered, so every key is judged on its own line.
    """
    keys = [asyncssh.import_private_key(case.key.private.read_bytes()) for case in cases]
    position = 0
    connections = 0
    while position < len(keys):
        connections += 1
        assert connections <= 80, "sshd dropped the connection far too often"
        start = position

        class _Client(asyncssh.SSHClient):
            def public_key_auth_requested(self) -> asyncssh.SSHKey | None:
                nonlocal position
                if position >= len(keys):
                    return None
                position += 1
                return keys[position - 1]

        try:
            async with asyncssh.connect(
                host.address,
                host.port,
                username=user,
                known_hosts=str(known),
                client_factory=_Client,
                client_keys=None,
                agent_path=None,
                config=None,
                preferred_auth="publickey",
                connect_timeout=30,
                login_timeout=120,
            ):
                pass
        except asyncssh.PermissionDenied:
            assert position == len(keys)  # no key left to offer: the run is over
        except asyncssh.DisconnectError:
            if position - start > 1:
                position -= 1  # offer the key in flight again on a fresh connection


@pytest.mark.fleet
@pytest.mark.timeout(180)
def test_reader_agrees_with_sshd(base_dir: Path) -> None:
    keydir = base_dir / "ids"
    keydir.mkdir()
    cases = _cases(keydir)
    assert len(cases) > 150
    user = getpass.getuser()
    content = "".join(case.line + "\n" for case in cases)
    config = (
        "AuthenticationMethods " + ",".join(["publickey"] * len(cases)) + "\n"
        f"MaxAuthTries {4 * len(cases)}\n"
    )
    with LocalFleet(
        base_dir / "fleet", 1, log_level="DEBUG1", first_address=201, extra_config=config
    ) as fleet:
        host: FleetHost = fleet.hosts[0]
        path = host.authorized_keys_path(user)
        path.write_text(content)
        path.chmod(0o644)
        known = fleet.write_known_hosts(base_dir / "known_hosts")
        asyncio.run(_offer_every_key(host, user, known, cases))
        log = host.log_file.read_text(errors="replace")
    honoured = {(int(m.group(1)), m.group(2)) for m in _MATCH.finditer(log)}
    seen = {
        (line.lineno, line.key.fingerprint)
        for line in parse_authorized_keys(content.encode())
        if line.key is not None
    }
    problems: list[str] = []
    deviated: set[str] = set()
    for lineno, (case, fingerprint) in enumerate(zip(cases, _fingerprints(cases), strict=True), 1):
        item = (lineno, fingerprint)
        sshd_says, keyward_says = item in honoured, item in seen
        if sshd_says == keyward_says:
            continue
        if case.ident in DEVIATIONS and keyward_says and not sshd_says:
            deviated.add(case.ident)
            continue
        problems.append(f"{case.ident}: sshd honours={sshd_says} keyward sees={keyward_says}")
    stale = set(DEVIATIONS) - deviated
    assert not stale, f"documented deviations that no longer happen: {sorted(stale)}"
    assert not problems, "\n".join(problems)
    # The run must exercise both verdicts, or it proves nothing.
    assert 40 < len(honoured & seen) < len(cases) - 40


def _fingerprints(cases: list[Case]) -> list[str]:
    """Fingerprints of every case key as ssh-keygen prints them (one call for all)."""
    listing = "".join(case.key.line + "\n" for case in cases)
    done = subprocess.run(
        ["ssh-keygen", "-l", "-f", "-"],
        input=listing,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    prints = [line.split()[1] for line in done.stdout.splitlines()]
    assert len(prints) == len(cases)
    return prints


# from= values and whether keyward's writer accepts them.  The client logs in
# from 127.0.0.1; each accepted value contains it, so sshd must let the key
# in, and each refused one is a list sshd never matches (an invalid CIDR
# entry is an error that refuses the key whatever else the list says).
FROM_CASES: list[tuple[str, bool]] = [
    ('from="127.0.0.0/8"', True),
    ('from="127.0.0.1"', True),
    ('from="127.0.0.*,10.0.0.0/8"', True),
    ('from="127.0.0.0/33"', False),
    ('from="127.0.0.1/8"', False),
    ('from="127.0.0.256,!10.0.0.1"', False),
    ('from="127.0.0.0/8,10.0.0.0/33"', False),
]


@pytest.mark.fleet
@pytest.mark.timeout(120)
def test_from_lists_keyward_refuses_are_never_matched_by_sshd(base_dir: Path) -> None:
    keydir = base_dir / "from-ids"
    keydir.mkdir()
    keys = [_make_key(keydir, i, "ed25519") for i in range(len(FROM_CASES))]
    for option, accepted in FROM_CASES:
        if accepted:
            assert validate_option(option) == option
        else:
            with pytest.raises(ValueError, match="from= entry"):
                validate_option(option)
    user = getpass.getuser()
    content = "".join(f"{opt} {key.line}\n" for (opt, _), key in zip(FROM_CASES, keys, strict=True))
    with LocalFleet(base_dir / "from-fleet", 1, first_address=202) as fleet:
        host = fleet.hosts[0]
        path = host.authorized_keys_path(user)
        path.write_text(content)
        path.chmod(0o644)
        known = fleet.write_known_hosts(base_dir / "from_known_hosts")
        with ThreadPoolExecutor(max_workers=4) as pool:
            codes = list(
                pool.map(lambda k: ssh_login(host, user, k.private, known).returncode, keys)
            )
    assert [code == 0 for code in codes] == [accepted for _, accepted in FROM_CASES]


@pytest.mark.timeout(240)
def test_offboard_removes_hand_copied_lines_sshd_honours(env: AgentEnv) -> None:
    """The issue's scenario through the CLI: lines keyward used to read as "no key"
    outlived ``offboard`` in a managed-block file while the evidence said she was gone."""
    env.rewrite_inventory(dataclasses.replace(env.spec, mode="managed-block"))
    fp = env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    host = env.hosts[0]
    alice = env.pub("alice").read_text().strip()
    path = env.file(host, env.app)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_text(f"# the owner's own lines\nrestrict, {alice}\n, {alice}\nno-pty,,pty {alice}\n")
    shutil.chown(path, env.app, env.app)
    shutil.chown(path.parent, env.app, env.app)
    assert env.can_login(host, env.app, "alice")  # sshd honours these lines

    result = env.kw("offboard", "alice", "--reason", "left", "--json")
    assert result.code == 0, str(result)
    case = result.json()
    assert case["fingerprints"] == [fp]
    row = next(t for t in case["targets"] if t["host"] == host.name and t["account"] == env.app)
    assert row["removed"] == 3 and row["confirmed_at"]
    assert not env.can_login(host, env.app, "alice")
    assert alice.split()[1] not in path.read_text()
    assert "# the owner's own lines" in path.read_text()
