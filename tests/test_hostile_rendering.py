"""Hostile input against the key parser and the line renderer, checked by OpenSSH itself.

Three properties, each with bounded hypothesis runs:

- ``parse_public_key`` over arbitrary text and near-valid key lines raises nothing but
  ``KeyPolicyError``, and a key it accepts is exactly one key whose blob names its type
  (and ``ssh-keygen -lf`` agrees on the fingerprint);
- a file of rendered ``DesiredLine``s with any option set keyward accepts is read by the real
  OpenSSH parser (``ssh-keygen -lf``, the same ``sshkey_read``/``sshkey_advance_past_options``
  code sshd uses) as exactly those keys in that order, and by ``parse_authorized_keys`` as
  exactly those option tuples; option values that could end a quote or a line are refused;
- usernames, names, key comments and inventory options carrying newlines, CR, NUL, quotes,
  backslashes, commas or Unicode line separators never add a key or an option: through the
  CLI and the real fleet, the files hold exactly the keys and options keyward intended.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from keyward.authorized_keys import parse_authorized_keys
from keyward.desired import DesiredLine
from keyward.errors import KeyPolicyError
from keyward.keys import KNOWN_TYPES, WireReader, decode_key, parse_public_key
from keyward.options import FLAGS, REFUSED, expiry_time_option, validate_option, validate_options
from keyward.testing.inventory import AccessSpec
from tests.agent_env import AgentEnv

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
    database=None,
)
# Property (b) runs ssh-keygen once per example: fewer, bigger examples.
RENDER_SETTINGS = settings(SETTINGS, max_examples=120)

HOSTILE_CHARS = [
    "\n",
    "\r",
    "\0",
    "\u2028",
    "\u2029",
    "\u0085",
    '"',
    "\\",
    ",",
    " ",
    "\t",
    "\x0b",
    "\x0c",
    "\x1b",
    "\u202e",
    "\ufeff",
    "#",
    "'",
    "=",
]
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def _openssh(public: object) -> str:
    return public.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


@functools.cache
def real_lines() -> tuple[str, ...]:
    """Real public key lines of every common type (made once per session)."""
    keys = [
        ed25519.Ed25519PrivateKey.generate().public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        ec.generate_private_key(ec.SECP521R1()).public_key(),
        rsa.generate_private_key(65537, 3072).public_key(),
    ]
    return tuple(_openssh(k) for k in keys)


@functools.cache
def real_keys() -> tuple[object, ...]:
    return tuple(parse_public_key(line) for line in real_lines())


def keygen_fingerprints(path: Path) -> list[str]:
    """The fingerprints ``ssh-keygen -lf`` lists for a file, in order."""
    done = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if done.returncode != 0:
        return []
    return [line.split()[1] for line in done.stdout.splitlines() if line.strip()]


# -- (a) the key parser ------------------------------------------------------------------


@st.composite
def near_valid_lines(draw: st.DrawFn) -> str:
    lines = real_lines()
    index = draw(st.integers(0, len(lines) - 1))
    key_type, data = lines[index].split()[:2]
    comment = draw(st.sampled_from(["", " alice@laptop", ' "x",y\\z', " a b c"]))
    line = f"{key_type} {data}{comment}"
    for _ in range(draw(st.integers(1, 3))):
        op = draw(
            st.sampled_from(
                ["flip", "label", "insert", "append", "truncate", "options", "swap", "pad"]
            )
        )
        if op == "flip" and line:
            start = line.find(" ") + 1
            pos = draw(st.integers(min(start, len(line) - 1), len(line) - 1))
            char = draw(st.sampled_from(B64 + "-_.*"))
            line = line[:pos] + char + line[pos + 1 :]
        elif op == "label":
            label = draw(
                st.sampled_from(
                    [
                        *sorted(KNOWN_TYPES),
                        "ssh-ed25519-cert-v01@openssh.com",
                        "rsa-sha2-256",
                        "SSH-ED25519",
                        "ssh-ed448",
                        "",
                        "ssh-ed25519\0",
                    ]
                )
            )
            line = label + line[line.find(" ") :] if " " in line else label
        elif op == "insert":
            pos = draw(st.integers(0, len(line)))
            line = line[:pos] + draw(st.sampled_from(HOSTILE_CHARS)) + line[pos:]
        elif op == "append":
            tail = draw(st.lists(st.sampled_from([*HOSTILE_CHARS, "x", "ssh-ed25519 AAAA"])))
            line += "".join(tail)
        elif op == "truncate":
            line = line[: draw(st.integers(0, len(line)))]
        elif op == "options":
            line = draw(st.sampled_from(["no-pty ", 'command="id" ', "restrict,"])) + line
        elif op == "swap":
            # Type confusion: another key's blob under this label.
            other = lines[draw(st.integers(0, len(lines) - 1))].split()[1]
            parts = line.split(" ", 2)
            if len(parts) >= 2:
                parts[1] = other
                line = " ".join(parts)
        elif op == "pad":
            line = line.replace(" ", draw(st.sampled_from(["  ", "\t", " \t "])), 1)
    return line


def _check_parse(text: str) -> None:
    try:
        key = parse_public_key(text)
    except KeyPolicyError as exc:
        # One line, and never the raw input.
        assert "\n" not in exc.message and "\r" not in exc.message
        for token in text.split():
            if len(token) >= 24 and token not in KNOWN_TYPES:
                assert token not in exc.message
        return
    assert key.key_type in KNOWN_TYPES
    assert WireReader(key.blob).text() == key.key_type
    line = key.openssh()
    assert line.isascii() and line.count(" ") == 1 and line.isprintable()
    assert decode_key(key.key_type, key.blob) == key
    assert parse_public_key(line) == key
    assert all(ch.isprintable() or ch == "\t" for ch in key.comment)


@SETTINGS
@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_key_policy_error(text: str) -> None:
    _check_parse(text)


@SETTINGS
@given(st.lists(st.sampled_from(list(B64) + HOSTILE_CHARS + ["ssh-ed25519 ", "AAAAC3Nz"])))
def test_key_shaped_garbage_only_raises_key_policy_error(parts: list[str]) -> None:
    _check_parse("ssh-ed25519 " + "".join(parts))


@SETTINGS
@given(near_valid_lines())
def test_near_valid_key_lines_are_refused_or_exactly_one_key(text: str) -> None:
    _check_parse(text)


@settings(SETTINGS, max_examples=60)
@given(near_valid_lines())
def test_accepted_keys_have_the_fingerprint_ssh_keygen_prints(text: str) -> None:
    try:
        key = parse_public_key(text)
    except KeyPolicyError:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "key.pub"
        path.write_text(text if "\n" not in text else key.openssh() + "\n")
        assert keygen_fingerprints(path) == [key.fingerprint]


@SETTINGS
@given(st.binary(max_size=400))
def test_authorized_keys_parser_never_raises(data: bytes) -> None:
    for line in parse_authorized_keys(data):
        if line.key is None:
            assert line.error
        else:
            assert WireReader(line.key.blob).text() == line.key.key_type


# -- (b) rendering through the real OpenSSH parser ----------------------------------------

SAFE_VALUE = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp"), blacklist_characters='"\\'
    ),
    min_size=1,
    max_size=30,
)
FROM_PATTERN = st.from_regex(r"!?[A-Za-z0-9.*?:/_%\[\]-]{1,20}", fullmatch=True)
HOSTNAME = st.one_of(
    st.from_regex(r"[A-Za-z0-9.*_-]{1,15}", fullmatch=True),
    st.sampled_from(["[::1]", "[fe80::1%eth0]", "127.0.0.1"]),
)
PORT = st.one_of(st.integers(1, 65535).map(str), st.just("*"))


def _random_case(draw: st.DrawFn, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if f else c for c, f in zip(name, flips, strict=True))


@st.composite
def accepted_option(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["flag", "from", "command", "permitopen", "permitlisten"]))
    if kind == "flag":
        return _random_case(draw, draw(st.sampled_from(sorted(FLAGS))))
    if kind == "from":
        return 'from="' + ",".join(draw(st.lists(FROM_PATTERN, min_size=1, max_size=3))) + '"'
    if kind == "command":
        return f'command="{draw(SAFE_VALUE)}"'
    if kind == "permitopen":
        return f'permitopen="{draw(HOSTNAME)}:{draw(PORT)}"'
    host = draw(st.one_of(st.none(), HOSTNAME))
    return f'permitlisten="{"" if host is None else host + ":"}{draw(PORT)}"'


@st.composite
def option_sets(draw: st.DrawFn) -> tuple[str, ...]:
    raw = draw(st.lists(accepted_option(), max_size=5))
    try:
        return validate_options(raw)
    except ValueError:
        # Only combination rules (a repeated from/command, pty with no-pty) may refuse.
        assume(False)
        raise


@RENDER_SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(0, 5), option_sets(), st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_rendered_lines_are_read_by_openssh_as_exactly_those_keys(
    specs: list[tuple[int, tuple[str, ...], bool]],
) -> None:
    from datetime import UTC, datetime

    keys = real_keys()
    lines = []
    for index, options, with_expiry in specs:
        opts = (*options, expiry_time_option(datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)))
        lines.append(
            DesiredLine(
                keys[index],  # type: ignore[arg-type]
                opts if with_expiry else options,
                "alice",
                "person",
            )
        )
    text = "".join(line.render() + "\n" for line in lines)
    assert text.count("\n") == len(lines)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "authorized_keys"
        path.write_bytes(text.encode())
        assert keygen_fingerprints(path) == [line.key.fingerprint for line in lines]
    parsed = parse_authorized_keys(text.encode())
    assert [p.options for p in parsed] == [line.options for line in lines]
    assert [p.key for p in parsed] == [line.key for line in lines]
    assert all(p.error is None for p in parsed)


@SETTINGS
@given(
    st.sampled_from(["command", "from", "permitopen", "permitlisten"]),
    st.text(min_size=0, max_size=10),
    st.sampled_from(HOSTILE_CHARS[:8]),
    st.text(min_size=0, max_size=10),
)
def test_values_that_could_end_a_quote_or_a_line_are_refused(
    name: str, before: str, evil: str, after: str
) -> None:
    with pytest.raises(ValueError):
        validate_option(f'{name}="{before}{evil}{after}"')


@SETTINGS
@given(st.text(max_size=60))
def test_any_option_text_is_refused_or_renders_as_exactly_itself(text: str) -> None:
    key = real_keys()[0]
    try:
        normalised = validate_option(text)
    except ValueError:
        with pytest.raises(ValueError):
            DesiredLine(key, (text,), "alice", "person").render()  # type: ignore[arg-type]
        return
    line = DesiredLine(key, (text,), "alice", "person").render()  # type: ignore[arg-type]
    assert "\n" not in line and "\r" not in line
    parsed = parse_authorized_keys((line + "\n").encode())
    assert len(parsed) == 1 and parsed[0].options == (normalised,) and parsed[0].key == key


def test_refused_option_names_and_injections_are_refused() -> None:
    for name in REFUSED:
        with pytest.raises(ValueError):
            validate_option(name if name != "environment" else 'environment="A=B"')
    for text in (
        'command="a",no-pty',
        'command="a" ssh-ed25519',
        'command="a\\"b"',
        'command="x"\nssh-ed25519 AAAA',
        "no-pty,restrict",
        'from="1.2.3.4 "',
        'from="1.2.3.4",command="x"',
        "no-pty ",
        " no-pty",
        'command=""',
        "command=x",
        'permitopen="host:99999"',
        "no-pty\u2028ssh-ed25519",
        'command="a\u0085b"',
        'command="a\u202eb"',
    ):
        with pytest.raises(ValueError):
            validate_option(text)


@SETTINGS
@given(st.text(max_size=40))
def test_owner_labels_cannot_inject(owner: str) -> None:
    key = real_keys()[2]
    try:
        line = DesiredLine(key, ("no-pty",), owner, "person").render()  # type: ignore[arg-type]
    except ValueError:
        return
    assert "\n" not in line and line.isprintable()
    parsed = parse_authorized_keys((line + "\n").encode())
    assert len(parsed) == 1 and parsed[0].options == ("no-pty",)
    assert parsed[0].comment == f"keyward:{owner}:{key.short_fingerprint}"  # type: ignore[attr-defined]


# -- (c) through the CLI and real hosts --------------------------------------------------

HOSTILE_TEXTS = [
    "a\nb",
    "a\rb",
    "a\0b",
    "a\u2028b",
    "a\u2029b",
    "a\u0085b",
    "a\x1b[2Kb",
    "a\u202eb",
]


def test_hostile_usernames_and_names_are_refused(env: AgentEnv) -> None:
    for evil in [*HOSTILE_TEXTS, 'a"b', "a\\b", "a,b", "A", "a b", "-a", "x" * 40, ""]:
        result = env.kw("person", "add", "--name", "X", "--", evil)
        assert result.code == 2 and "Traceback" not in result.err, str(result)
        assert len(result.err.strip().splitlines()) == 1
    for evil in HOSTILE_TEXTS:
        result = env.kw("person", "add", "eve", "--name", evil)
        assert result.code == 2 and "Traceback" not in result.err, str(result)
        result = env.kw("person", "add", "eve", "--name", "Eve", "--email", f"e{evil}@x.org")
        assert result.code == 2, str(result)
    assert env.kw.ok("person", "list", "--json").json() == []


def test_hostile_key_comments_and_options_never_add_a_key_or_an_option(env: AgentEnv) -> None:
    env.kw.ok("person", "add", "alice", "--name", "Alice")
    env.kw.ok("person", "add", "carol", "--name", "Carol \"\\, O'Brien")
    key_type, data = env.pub("alice").read_text().split()[:2]
    mallory = " ".join(env.pub("mallory").read_text().split()[:2])
    # A comment that tries to start a new line (or option) is refused outright ...
    for evil in HOSTILE_TEXTS[:6]:
        bad = env.keys / "bad.pub"
        bad.write_text(f"{key_type} {data} x{evil}{mallory}\n")
        result = env.kw("key", "add", "alice", str(bad), "--attest", "admin")
        assert result.code == 2 and "Traceback" not in result.err, str(result)
        assert len(result.err.strip().splitlines()) == 1
        assert data not in result.err and mallory.split()[1] not in result.err
    # ... and one with quotes, backslashes and commas is kept as a label that never
    # reaches a host.
    good = env.keys / "good.pub"
    good.write_text(f'{key_type} {data} x" ,command="id" \\" {mallory}\n')
    env.kw.ok("key", "add", "alice", str(good), "--attest", "admin")
    env.kw.ok("key", "add", "carol", str(env.pub("carol")), "--attest", "admin")
    env.kw.ok("role", "add", "devops")
    env.kw.ok("role", "add", "qa")
    env.kw.ok("role", "grant", "devops", "alice", "--reason", "t", actor="security")
    env.kw.ok("role", "grant", "qa", "carol", "--reason", 'a"b\\c,d', actor="security")

    # Hostile inventory options are refused by the loader, so nothing is written at all.
    for evil in (
        'command="a",no-pty',
        'command="a\\"b"',
        'command="x"\nssh-ed25519 AAAA',
        "no-pty\u2028restrict",
        'environment="LD_PRELOAD=/tmp/x"',
        "no-touch-required",
    ):
        spec = env.spec.__class__(
            **{
                **env.spec.__dict__,
                "access": (AccessSpec(roles=("qa",), accounts=(env.app,), options=(evil,)),),
            }
        )
        env.rewrite_inventory(spec)
        result = env.kw("reconcile")
        assert result.code == 2 and "Traceback" not in result.err, str(result)
        assert len(result.err.strip().splitlines()) == 1, str(result)
    assert not env.file(env.hosts[0], env.app).exists()

    # Accepted but awkward options land exactly as intended.
    awkward = ("command=\"echo a, b; printf '%s' #x\"", 'from="127.0.0.1,!10.*"', "No-PTY")
    spec = env.spec.__class__(
        **{
            **env.spec.__dict__,
            "access": (
                AccessSpec(roles=("devops",), accounts=(env.deploy, "root")),
                AccessSpec(roles=("qa",), accounts=(env.app,), options=awkward),
            ),
        }
    )
    env.rewrite_inventory(spec)
    result = env.kw("reconcile")
    assert result.code == 0, str(result)
    fp_alice = parse_public_key(env.pub("alice").read_text()).fingerprint
    fp_carol = parse_public_key(env.pub("carol").read_text()).fingerprint
    agent = parse_public_key(Path(f"{env.agent_key}.pub").read_text()).fingerprint
    for host in env.hosts:
        expected = {env.deploy: [fp_alice], env.app: [fp_carol], "root": [agent, fp_alice]}
        for account, fps in expected.items():
            path = env.file(host, account)
            assert keygen_fingerprints(path) == fps, (account, path.read_text())
            content = path.read_bytes()
            parsed = parse_authorized_keys(content)
            assert [p.key.fingerprint for p in parsed if p.key] == fps
            assert all(p.error is None for p in parsed)
            assert "mallory" not in content.decode() and 'command="id"' not in content.decode()
            if account == env.app:
                (line,) = parsed
                assert line.options[:3] == (
                    "command=\"echo a, b; printf '%s' #x\"",
                    'from="127.0.0.1,!10.*"',
                    "no-pty",
                )
                assert len(line.options) == 4 and line.options[3].startswith("expiry-time=")
    # The real sshd agrees: carol's key works (from 127.0.0.1), mallory's does not.
    assert env.can_login(env.hosts[0], env.deploy, "alice")
    assert not env.can_login(env.hosts[0], env.deploy, "mallory")
    assert env.kw("plan").code == 0


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    keys = real_keys()
    out = []
    for _ in range(draw(st.integers(1, 5))):
        key = keys[draw(st.integers(0, len(keys) - 1))]
        options = draw(option_sets())
        line = DesiredLine(key, options, "alice", "person").render()  # type: ignore[arg-type]
        for _ in range(draw(st.integers(0, 2))):
            pos = draw(st.integers(0, len(line)))
            # No blanks: ssh-keygen -l (unlike sshd) does not skip a run of blanks
            # between the options and the key, so it is no oracle for those.
            evil = draw(st.sampled_from(['"', "\\", ",", "#", "x", "=", '\\"', "'"]))
            line = line[:pos] + evil + line[pos:]
        out.append(line)
    return ("\n".join(out) + "\n").encode()


@settings(RENDER_SETTINGS, max_examples=100)
@given(mutated_files())
def test_parser_agrees_with_openssh_on_mangled_lines(data: bytes) -> None:
    """Differential: after quotes, commas, blanks are spliced in anywhere, keyward's parser
    sees exactly the keys OpenSSH's does (so drift is never missed, nor invented).

    ``ssh-keygen -l`` skips the options field without parsing it, while sshd refuses a line
    whose options are malformed (an unknown option, an open quote); keyward follows sshd
    (tests/test_sshd_parity.py holds it to a real sshd), so such lines are left out of the
    comparison, after checking keyward flags them.
    """
    kept = []
    for raw in data.split(b"\n")[:-1]:
        lines = parse_authorized_keys(raw + b"\n")
        if (
            lines
            and lines[0].key is None
            and lines[0].error is not None
            and (
                lines[0].error == "invalid key option string"
                or lines[0].error.startswith("bad key options: ")
            )
        ):
            continue
        kept.append(raw + b"\n")
    clean = b"".join(kept)
    parsed = [p.key.fingerprint for p in parse_authorized_keys(clean) if p.key is not None]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "authorized_keys"
        path.write_bytes(clean)
        assert parsed == keygen_fingerprints(path), clean.decode()
