"""keyward.authorized_keys follows sshd's reading of authorized_keys files."""

from __future__ import annotations

import base64
import re
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyward.authorized_keys import AuthorizedLine, parse_authorized_keys, split_options
from tests.keygen import SoftSK, dsa_supported, keygen_fingerprint, make_key


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ak")


@pytest.fixture(scope="module")
def ed(keydir: Path) -> str:
    return make_key(keydir, "ed25519", comment="alice@laptop")[1].read_text().strip()


@pytest.fixture(scope="module")
def ecdsa(keydir: Path) -> str:
    return make_key(keydir, "ecdsa", 384, comment="bob")[1].read_text().strip()


def _bare(line: str) -> str:
    return " ".join(line.split()[:2])


def _one(data: str | bytes) -> AuthorizedLine:
    raw = data.encode() if isinstance(data, str) else data
    lines = parse_authorized_keys(raw)
    assert len(lines) == 1
    return lines[0]


OPTION_CASES = [
    ("", ()),
    ("no-pty ", ("no-pty",)),
    ('from="10.0.0.0/8",no-pty ', ('from="10.0.0.0/8"', "no-pty")),
    (
        'command="echo \\"hi there\\", bye",restrict ',
        ('command="echo \\"hi there\\", bye"', "restrict"),
    ),
    ('environment="A=b c",no-agent-forwarding\t', ('environment="A=b c"', "no-agent-forwarding")),
    ('  from="a,b"  ', ('from="a,b"',)),
]


@pytest.mark.parametrize(("prefix", "options"), OPTION_CASES)
def test_options_and_key(ed: str, prefix: str, options: tuple[str, ...]) -> None:
    line = _one(prefix + ed + "\n")
    assert line.error is None
    assert line.options == options
    assert line.key is not None
    assert line.key.openssh() == _bare(ed)
    assert line.comment == "alice@laptop"


SPLIT_CASES = [
    ("no-pty", ("no-pty",)),
    ('from="x,y",pty', ('from="x,y"', "pty")),
    ('command="say \\"a,b\\""', ('command="say \\"a,b\\""',)),
    ("restrict,pty", ("restrict", "pty")),
    # sshd passes over empty options: they are not refused, and not reported.
    ("restrict,", ("restrict",)),
    (",", ()),
    ("no-pty,,restrict", ("no-pty", "restrict")),
    ("NO-PTY,Restrict", ("NO-PTY", "Restrict")),
]


@pytest.mark.parametrize(("text", "expected"), SPLIT_CASES)
def test_split_options(text: str, expected: tuple[str, ...]) -> None:
    assert split_options(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('command="x', "invalid key option string"),
        ("a,,b", "unknown key option"),
        ("BLAH", "unknown key option"),
        ("ptyx", "unknown key option"),
        ("pty=1", "unknown key option"),
        ("no-cert-authority", "unknown key option"),
        ("command=oops", "missing start quote"),
        ('command="a",command="b"', 'multiple "command" clauses'),
        ('from="a",FROM="b"', 'multiple "from" clauses'),
        ('principals="a",principals="b"', 'multiple "principals" clauses'),
        ('expiry-time="2025"', "invalid expires time"),
        ('environment="=x"', "invalid environment string"),
        ('environment="A-B=x"', "invalid environment string"),
        ('permitopen="host"', "invalid permission port"),
        ('permitopen="host:0"', "invalid permission port"),
        ('permitopen="[::1:22"', "invalid permission hostname"),
        ('permitlisten="70000"', "invalid permission port"),
        ('tunnel="blah"', "invalid tun device"),
    ],
)
def test_split_options_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        split_options(text)


BAD_LINES = [
    ("unterminated_quote", lambda k: 'command="oops ' + k, "invalid key option string"),
    ("no_key", lambda k: "no-pty", "no key found"),
    ("garbage", lambda k: "hello world", "no key found"),
    ("bad_b64", lambda k: k.split()[0] + " AA*A", "base64"),
    ("label_mismatch", lambda k: "ssh-rsa " + k.split()[1], "does not match"),
    ("truncated", lambda k: k.split()[0] + " " + k.split()[1][:-8], "base64|truncated"),
    ("options_bad_b64", lambda k: "no-pty ssh-ed25519 AA*A", "base64"),
]


@pytest.mark.parametrize(("name", "make", "reason"), BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_bad_lines_reported(ed: str, name: str, make: object, reason: str) -> None:
    assert callable(make)
    line = _one(make(ed))
    assert line.key is None
    assert line.error is not None
    assert re.search(reason, line.error)
    assert ed.split()[1][:12] not in line.error


def test_whole_file_matches_ssh_keygen(keydir: Path, ed: str, ecdsa: str) -> None:
    rsa = make_key(keydir, "rsa", 2048, comment="old rsa")[1].read_text().strip()
    sk = SoftSK().public_line + " token"
    content = (
        "# managed by hand\n"
        "\n"
        f"{ed}\n"
        f'from="10.0.0.0/8",command="/bin/echo \\"x y\\"" {ecdsa}\n'
        "   \t\n"
        f"no-pty,restrict {rsa}\n"
        "this line is garbage\n"
        f"{sk}\r\n"
        f"rsa-sha2-512 {rsa.split()[1]} alias type\n"
    )
    path = keydir / "authorized_keys"
    path.write_text(content)
    lines = parse_authorized_keys(content.encode())
    assert [ln.lineno for ln in lines] == [3, 4, 6, 7, 8, 9]
    keys = [ln.key for ln in lines if ln.key is not None]
    assert [ln.error is None for ln in lines] == [True, True, True, False, True, True]
    assert lines[3].error == "no key found"
    assert lines[4].comment == "token"
    assert lines[5].key is not None and lines[5].key.key_type == "ssh-rsa"
    # ssh-keygen -l reads authorized_keys files (options included) like sshd.
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True
    ).stdout
    expected = re.findall(r"SHA256:[A-Za-z0-9+/]+", out)
    assert [k.fingerprint for k in keys] == expected


def test_dsa_recognised_without_policy(keydir: Path) -> None:
    if not dsa_supported(keydir):
        pytest.skip("local ssh-keygen no longer generates DSA keys")
    pub = make_key(keydir, "dsa", comment="legacy")[1]
    line = _one(pub.read_bytes())
    assert line.key is not None
    assert line.key.key_type == "ssh-dss"
    assert line.key.fingerprint == keygen_fingerprint(pub)


def test_invalid_utf8_and_nul(ed: str) -> None:
    line = _one(ed.encode() + b" caf\xe9")
    assert line.key is not None
    assert line.error == "line is not valid UTF-8"
    line = _one(b"\xff\xfe garbage")
    assert line.key is None
    assert line.error is not None and line.error.startswith("line is not valid UTF-8")
    # A NUL ends the line for sshd; the key before it still counts.
    line = _one(ed.encode() + b"\0ssh-ed25519 AAAA")
    assert line.key is not None and line.error is None
    assert line.comment == "alice@laptop"


def test_comments_and_blank_lines_skipped() -> None:
    assert parse_authorized_keys(b"") == []
    assert parse_authorized_keys(b"\n\n  # c\n\t#x\n  \n") == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_never_raises_on_bytes(data: bytes) -> None:
    for line in parse_authorized_keys(data):
        if line.key is None:
            assert line.error
        else:
            assert line.key.fingerprint.startswith("SHA256:")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["no-pty", '"', "\\", ",", " ", "\t", "ssh-ed25519", "AAAA", "#", "\n", "x="]
        ),
        max_size=20,
    )
)
def test_never_raises_on_option_soup(parts: list[str]) -> None:
    parse_authorized_keys("".join(parts).encode())


# Lines as sshd reads them (auth2-pubkeyfile.c, auth-options.c): the options
# keyward reports, or the reason sshd skips the line.  tests/test_sshd_parity.py
# holds these rules to a real sshd.
SSHD_LINES = [
    # empty options are passed over, the key is honoured
    ("restrict, {k}", ("restrict",), None),
    (", {k}", (), None),
    ("no-pty,,restrict {k}", ("no-pty", "restrict"), None),
    ("no-pty,\t{k}", ("no-pty",), None),
    ('expiry-time="20200101" {k}', ('expiry-time="20200101"',), None),  # past: still a key
    ('from="10.0.0.0/33" {k}', ('from="10.0.0.0/33"',), None),  # never matches; still a key
    ("cert-authority {k}", ("cert-authority",), None),
    ('environment="A=b c",tunnel="any" {k}', ('environment="A=b c"', 'tunnel="any"'), None),
    # options sshd refuses: the whole line is skipped
    ("BLAH {k}", None, "unknown key option"),
    ("ptyx {k}", None, "unknown key option"),
    ("command=oops {k}", None, "missing start quote"),
    ("from=10.0.0.1 {k}", None, "missing start quote"),
    ('command="a",command="b" {k}', None, 'multiple "command" clauses'),
    ('expiry-time="2025" {k}', None, "invalid expires time"),
    ('expiry-time="20251301" {k}', None, "invalid expires time"),
    ('permitopen="h:0" {k}', None, "invalid permission port"),
    ("ssh-ed25519 {k}", None, "unknown key option"),
]


@pytest.mark.parametrize(("template", "options", "error"), SSHD_LINES)
def test_lines_as_sshd_reads_them(
    ed: str, template: str, options: tuple[str, ...] | None, error: str | None
) -> None:
    line = _one(template.format(k=ed))
    if options is None:
        assert line.key is None
        assert line.error == f"bad key options: {error}"
        assert line.options == ()
    else:
        assert line.error is None
        assert line.options == options
        assert line.key is not None and line.key.openssh() == _bare(ed)


def test_padded_rsa_integers_are_the_same_key(keydir: Path) -> None:
    pub = make_key(keydir, "rsa", 2048, name="rsa-padded")[1]
    _, b64 = pub.read_text().split()[:2]
    blob = base64.b64decode(b64)
    e_len = int.from_bytes(blob[11:15], "big")
    e, n = blob[15 : 15 + e_len], blob[19 + e_len :]
    padded = blob[:11] + len(e + b"\0").to_bytes(4, "big") + b"\0" + e + blob[15 + e_len :]
    assert n and padded != blob
    line = _one(f"restrict, ssh-rsa {base64.b64encode(padded).decode()} padded")
    # Reported as sshd sees it: by the fingerprint of the canonical key.
    assert line.key is not None and line.key.fingerprint == keygen_fingerprint(pub)
    assert line.options == ("restrict",)


def test_base64_spare_bits_and_padding(ecdsa: str) -> None:
    kind, b64 = ecdsa.split()[:2]
    data = b64.rstrip("=")
    assert data != b64  # the blob length leaves spare bits before the padding
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    assert alphabet.index(data[-1]) & 1 == 0
    spare = data[:-1] + alphabet[alphabet.index(data[-1]) | 1] + b64[len(data) :]
    for text in (f"{kind} {spare}", f"{kind} {b64.rstrip('=')}"):
        line = _one(text)
        assert line.key is None and line.error == "key data is not valid base64"
    assert _one(f"{kind} {b64[:30]}\v{b64[30:]}").key is not None


def test_offboarding_removes_every_shape_sshd_honours(keydir: Path, ed: str) -> None:
    """A hand-copied line sshd honours leaves the file when its owner is offboarded."""
    from keyward.desired import DesiredFile, FileTarget
    from keyward.plan import render

    pub = make_key(keydir, "rsa", 2048, name="rsa-offboard")[1]
    blob = base64.b64decode(pub.read_text().split()[1])
    e_len = int.from_bytes(blob[11:15], "big")
    padded = blob[:11] + (e_len + 1).to_bytes(4, "big") + b"\0" + blob[15:]
    gone = _one(ed).key
    assert gone is not None
    shapes = [f"restrict, {ed}", f", {ed}", f"no-pty,,restrict {ed}", f"no-pty,\t{ed}"]
    rsa_line = f"restrict, ssh-rsa {base64.b64encode(padded).decode()} hand-copied"
    purge = frozenset({gone.fingerprint, keygen_fingerprint(pub)})
    target = FileTarget("web-1", "deploy", "%h/.ssh/authorized_keys")
    managed = DesiredFile(target, "managed-block", (), is_login=False)
    current = ("\n".join([*shapes, rsa_line, "# kept"]) + "\n").encode()
    after = render(managed, current, purge)
    assert ed.split()[1].encode() not in after
    assert b"hand-copied" not in after
    assert b"# kept" in after


def test_hostile_option_fields_parse_in_linear_time(ed: str) -> None:
    """A host file is attacker-writable: a huge options field must not stall the agent."""
    started = time.monotonic()
    for field in ("," * 200_000, "no-pty," * 30_000, 'command="' + "x" * 200_000):
        lines = parse_authorized_keys(f"{field} {ed}\n".encode())
        assert len(lines) == 1
    assert time.monotonic() - started < 10
