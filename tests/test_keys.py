"""keyward.keys against real ssh-keygen keys and hostile input."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyward.errors import KeyPolicyError
from keyward.keys import (
    DEFAULT_POLICY,
    KeyPolicy,
    PublicKey,
    WireError,
    WireReader,
    check_policy,
    decode_key,
    looks_like_private_key,
    parse_public_key,
    read_sshd_key,
    sshd_b64decode,
)
from tests.keygen import SoftSK, dsa_supported, keygen_bits, keygen_fingerprint, make_key

KEY_SPECS = [
    ("ed25519", None, "ssh-ed25519", 256),
    ("ecdsa", 256, "ecdsa-sha2-nistp256", 256),
    ("ecdsa", 384, "ecdsa-sha2-nistp384", 384),
    ("ecdsa", 521, "ecdsa-sha2-nistp521", 521),
    ("rsa", 3072, "ssh-rsa", 3072),
]


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def ed25519_pub(keydir: Path) -> Path:
    return make_key(keydir, "ed25519", comment="alice@laptop")[1]


@pytest.fixture(scope="module")
def rsa2048_pub(keydir: Path) -> Path:
    return make_key(keydir, "rsa", 2048)[1]


def _s(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _line(key_type: str, blob: bytes, comment: str = "") -> str:
    return f"{key_type} {base64.b64encode(blob).decode()} {comment}".rstrip()


def _blob(pub: Path) -> bytes:
    return base64.b64decode(pub.read_text().split()[1])


@pytest.mark.parametrize(("tool_type", "bits", "key_type", "expected_bits"), KEY_SPECS)
def test_real_keys_parse_with_ssh_keygen_fingerprint(
    keydir: Path, tool_type: str, bits: int | None, key_type: str, expected_bits: int
) -> None:
    _, pub = make_key(keydir, tool_type, bits, comment="bob@host two")
    key = parse_public_key(pub.read_text())
    assert key.key_type == key_type
    assert key.fingerprint == keygen_fingerprint(pub)
    assert key.bits == expected_bits == keygen_bits(pub)
    assert key.short_fingerprint == key.fingerprint[7:23]
    assert key.comment == "bob@host two"
    assert key.openssh() == " ".join(pub.read_text().split()[:2])
    assert key.base64 == pub.read_text().split()[1]
    assert not key.is_sk


def test_rsa_2048_refused_and_3072_accepted(rsa2048_pub: Path) -> None:
    with pytest.raises(KeyPolicyError, match="2048 bits; policy requires at least 3072"):
        parse_public_key(rsa2048_pub.read_text())
    key = parse_public_key(rsa2048_pub.read_text(), KeyPolicy(min_rsa_bits=2048))
    assert key.bits == 2048
    # decode_key applies no policy: stored keys always load.
    assert decode_key(key.key_type, key.blob).bits == 2048


def test_dsa_refused_but_decodable(keydir: Path) -> None:
    if not dsa_supported(keydir):
        pytest.skip("local ssh-keygen no longer generates DSA keys")
    _, pub = make_key(keydir, "dsa")
    with pytest.raises(KeyPolicyError, match="DSA keys are refused"):
        parse_public_key(pub.read_text())
    key = decode_key("ssh-dss", _blob(pub))
    assert key.fingerprint == keygen_fingerprint(pub)
    assert key.bits == 1024


@pytest.mark.parametrize(
    "kind", ["sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"]
)
def test_sk_keys_keep_their_type(kind: str) -> None:
    sk = SoftSK(kind)
    key = parse_public_key(sk.public_line + " yubikey\n")
    assert key.key_type == kind
    assert key.is_sk
    assert key.application == "ssh:"
    assert key.bits == 256
    assert key.openssh() == sk.public_line


def test_comment_excluded_from_equality(ed25519_pub: Path) -> None:
    text = ed25519_pub.read_text()
    a = parse_public_key(text)
    b = parse_public_key(" ".join(text.split()[:2]) + " other comment")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert "AAAA" not in repr(a)


def test_whitespace_and_blank_lines_tolerated(ed25519_pub: Path) -> None:
    text = ed25519_pub.read_text().strip()
    for variant in (
        text,
        text + "\n",
        "\n\n  " + text + "  \n\n",
        "\t" + text.replace(" ", "\t", 1),
    ):
        assert parse_public_key(variant).fingerprint == keygen_fingerprint(ed25519_pub)


def test_non_canonical_base64_refused() -> None:
    line = SoftSK().public_line
    assert line.endswith("o=")  # "ssh:" ends the blob: two spare bits before the pad
    parse_public_key(line)
    with pytest.raises(KeyPolicyError, match="not canonical base64"):
        parse_public_key(line[:-2] + "p=")
    with pytest.raises(KeyPolicyError, match="not valid base64"):
        parse_public_key(line + "AAAA")
    with pytest.raises(KeyPolicyError, match="not valid base64"):
        parse_public_key(line[:-1] + "=A=")


def test_policy_allowed_types(ed25519_pub: Path) -> None:
    key = parse_public_key(ed25519_pub.read_text())
    with pytest.raises(KeyPolicyError, match="ssh-ed25519 is not allowed"):
        check_policy(key, KeyPolicy(allowed_types=frozenset({"ssh-rsa"})))
    check_policy(key, DEFAULT_POLICY)


HOSTILE = [
    ("comment_newline", lambda L: L + " a\nb", "more than one line"),
    ("comment_cr", lambda L: L + " a\rb", "carriage return"),
    ("comment_nul", lambda L: L + " a\x00b", "control characters"),
    ("comment_u2028", lambda L: L + " a\u2028b", "control characters"),
    ("comment_u2029", lambda L: L + " a\u2029b", "control characters"),
    ("comment_nel", lambda L: L + " a\x85b", "control characters"),
    ("comment_esc", lambda L: L + " a\x1b[31mred", "control characters"),
    ("comment_bidi", lambda L: L + " a\u202eb", "control characters"),
    ("second_key", lambda L: L + "\n" + L, "more than one line"),
    ("crlf", lambda L: L + "\r\n", "carriage return"),
    ("options_prefix", lambda L: "no-pty " + L, "options are not accepted"),
    ("options_command", lambda L: 'command="echo hi",no-pty ' + L, "options are not accepted"),
    ("empty", lambda L: "  \n\n", "no public key given"),
    ("type_only", lambda L: "ssh-ed25519", "no key data"),
    ("unknown_type", lambda L: "ssh-foo AAAA", "unrecognised key type"),
    ("non_strict_b64", lambda L: L.replace("AAAA", "AA*AA", 1), "not valid base64"),
    ("b64_bad_length", lambda L: L[:-1], "base64"),
    ("b64_appended", lambda L: L + "AAAA", "trailing bytes"),
    ("label_mismatch", lambda L: "ssh-rsa " + L.split()[1], "does not match its stated type"),
    ("label_ecdsa", lambda L: "ecdsa-sha2-nistp256 " + L.split()[1], "does not match"),
    ("rfc4716", lambda L: "---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n", "ssh-keygen -i"),
    ("too_long", lambda L: L + " " + "x" * 20000, "too long"),
]


@pytest.mark.parametrize(("name", "mutate", "reason"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_lines_refused(ed25519_pub: Path, name: str, mutate: object, reason: str) -> None:
    line = " ".join(ed25519_pub.read_text().split()[:2])
    assert callable(mutate)
    with pytest.raises(KeyPolicyError, match=reason) as info:
        parse_public_key(mutate(line))
    message = str(info.value)
    assert "\n" not in message
    assert line.split()[1][:20] not in message


def _blob_cases(ed_blob: bytes) -> list[tuple[str, str, bytes, str]]:
    pk = ed_blob[-32:]
    return [
        ("truncated", "ssh-ed25519", ed_blob[:-5], "truncated"),
        ("trailing", "ssh-ed25519", ed_blob + b"\0", "trailing bytes"),
        ("short_point", "ssh-ed25519", _s(b"ssh-ed25519") + _s(pk[:31]), "32 bytes"),
        (
            "sk_no_app",
            "sk-ssh-ed25519@openssh.com",
            _s(b"sk-ssh-ed25519@openssh.com") + _s(pk),
            "truncated",
        ),
        (
            "ecdsa_bad_curve",
            "ecdsa-sha2-nistp256",
            _s(b"ecdsa-sha2-nistp256") + _s(b"nistp384") + _s(b"\x04" + b"\1" * 64),
            "curve name",
        ),
        (
            "ecdsa_off_curve",
            "ecdsa-sha2-nistp256",
            _s(b"ecdsa-sha2-nistp256") + _s(b"nistp256") + _s(b"\x04" + b"\1" * 64),
            "not on the curve",
        ),
        (
            "ecdsa_compressed",
            "ecdsa-sha2-nistp256",
            _s(b"ecdsa-sha2-nistp256") + _s(b"nistp256") + _s(b"\x02" + b"\1" * 32),
            "uncompressed",
        ),
        (
            "rsa_negative",
            "ssh-rsa",
            _s(b"ssh-rsa") + _s(b"\x01\x00\x01") + _s(b"\xff" * 384),
            "negative",
        ),
        (
            "rsa_even",
            "ssh-rsa",
            _s(b"ssh-rsa") + _s(b"\x01\x00\x01") + _s(b"\x7f" * 383 + b"\x02"),
            "RSA",
        ),
        (
            "rsa_nonminimal",
            "ssh-rsa",
            _s(b"ssh-rsa") + _s(b"\x00\x01\x00\x01") + _s(b"\x7f" * 384),
            "non-minimal",
        ),
        ("cert", "ssh-ed25519-cert-v01@openssh.com", ed_blob, "certificates are not accepted"),
    ]


def test_malformed_blobs_refused(ed25519_pub: Path) -> None:
    for name, key_type, blob, reason in _blob_cases(_blob(ed25519_pub)):
        with pytest.raises(KeyPolicyError, match=reason):
            decode_key(key_type, blob)
        with pytest.raises(KeyPolicyError):
            parse_public_key(_line(key_type, blob, name))


@pytest.mark.parametrize(
    ("tool", "bits", "passphrase", "fmt"),
    [
        ("ed25519", None, "", None),
        ("rsa", 3072, "", "PEM"),
        ("ecdsa", 256, "", "PKCS8"),
        ("ed25519", None, "pass", None),
        ("ecdsa", 384, "passphrase", "PEM"),
    ],
)
def test_private_key_pasted_by_mistake(
    keydir: Path, tool: str, bits: int | None, passphrase: str, fmt: str | None
) -> None:
    name = f"paste-{tool}-{fmt}-{bool(passphrase)}"
    priv, _ = make_key(keydir, tool, bits, passphrase=passphrase, fmt=fmt, name=name)
    text = priv.read_text()
    assert looks_like_private_key(text)
    assert looks_like_private_key(text.encode())
    with pytest.raises(KeyPolicyError, match=r"this is a PRIVATE key; give the \.pub file") as info:
        parse_public_key(text)
    assert text.splitlines()[1][:16] not in str(info.value)


def test_putty_private_key_detected() -> None:
    text = "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: x\n"
    assert looks_like_private_key(text)
    with pytest.raises(KeyPolicyError, match="PRIVATE key"):
        parse_public_key(text)


def test_rfc4716_from_ssh_keygen(keydir: Path, ed25519_pub: Path) -> None:
    import subprocess

    out = subprocess.run(
        ["ssh-keygen", "-e", "-f", str(ed25519_pub)], check=True, capture_output=True, text=True
    ).stdout
    with pytest.raises(KeyPolicyError, match="ssh-keygen -i"):
        parse_public_key(out)
    assert not looks_like_private_key(out)


def test_public_key_constructor_validates(ed25519_pub: Path) -> None:
    blob = _blob(ed25519_pub)
    with pytest.raises(KeyPolicyError, match="does not match"):
        PublicKey("ssh-rsa", blob)
    assert PublicKey("ssh-ed25519", blob).fingerprint == keygen_fingerprint(ed25519_pub)


def test_wire_reader_end() -> None:
    reader = WireReader(_s(b"x"))
    assert reader.string() == b"x"
    reader.end()


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_public_key_never_crashes(text: str) -> None:
    try:
        key = parse_public_key(text)
    except KeyPolicyError:
        return
    assert WireReader(key.blob).text() == key.key_type


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(
        ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "sk-ssh-ed25519@openssh.com"]
    ),
    st.binary(max_size=200),
    st.text(max_size=20),
)
def test_parse_public_key_on_random_blobs(key_type: str, tail: bytes, comment: str) -> None:
    blob = _s(key_type.encode()) + tail
    try:
        key = parse_public_key(_line(key_type, blob, comment))
    except KeyPolicyError:
        return
    assert WireReader(key.blob).text() == key.key_type


# --- reading keys the way sshd does (authorized_keys on hosts) -------------------

B64_CASES = [
    ("", b""),
    ("QUJD", b"ABC"),
    ("QUI=", b"AB"),
    ("QQ==", b"A"),
    ("QQ==\r", b"A"),
    ("Q\vQ=\f=", b"A"),  # b64_pton skips isspace() anywhere
    ("QUI", None),  # padding is required
    ("QQ=", None),
    ("Q===", None),
    ("QUJD=", None),
    ("QQ==QQ==", None),
    ("QR==", None),  # non-zero spare bits: refused by b64_pton, kept by Python
    ("QUJ=", None),
    ("QU*D", None),
]


@pytest.mark.parametrize(("text", "expected"), B64_CASES)
def test_sshd_b64decode(text: str, expected: bytes | None) -> None:
    if expected is None:
        with pytest.raises(WireError):
            sshd_b64decode(text)
    else:
        assert sshd_b64decode(text) == expected


def _rsa_variant(blob: bytes, name: bytes, e_pad: int, n_pad: int, tail: bytes = b"") -> bytes:
    reader = WireReader(blob)
    reader.string()
    e, n = reader.string(), reader.string()
    return _s(name) + _s(b"\0" * e_pad + e) + _s(b"\0" * n_pad + n) + tail


@pytest.mark.parametrize(
    ("line_type", "name", "e_pad", "n_pad", "tail", "error"),
    [
        ("ssh-rsa", b"ssh-rsa", 0, 0, b"", None),
        ("ssh-rsa", b"ssh-rsa", 1, 0, b"", None),  # leading zero bytes: sshd trims them
        ("ssh-rsa", b"ssh-rsa", 2, 3, b"", None),
        ("rsa-sha2-512", b"ssh-rsa", 0, 0, b"", None),
        ("ssh-rsa", b"RSA", 0, 0, b"", None),  # short names, any case, inside the blob
        ("ssh-rsa", b"rsa", 0, 0, b"", None),
        ("ssh-rsa", b"ssh-rsa\0", 0, 0, b"", None),  # one trailing NUL is dropped
        ("ssh-rsa", b"rsa-sha2-256", 0, 0, b"", None),
        ("ssh-rsa", b"ssh-rsa", 0, 0, b"\0", "trailing bytes"),
        ("ssh-rsa", b"ssh\0rsa", 0, 0, b"", "NUL inside"),
        ("ssh-rsa", b"ssh-dss", 0, 0, b"", "does not match"),
        ("ssh-dss", b"ssh-rsa", 0, 0, b"", "does not match"),
        ("ssh-rsa", b"ssh-rsa-cert-v01@openssh.com", 0, 0, b"", "certificate"),
        ("ssh-rsa", b"ssh-rsa", 2049, 0, b"", "too large"),
    ],
)
def test_read_sshd_key_rsa(
    rsa2048_pub: Path,
    line_type: str,
    name: bytes,
    e_pad: int,
    n_pad: int,
    tail: bytes,
    error: str | None,
) -> None:
    blob = _rsa_variant(_blob(rsa2048_pub), name, e_pad, n_pad, tail)
    if error is not None:
        with pytest.raises(WireError, match=error):
            read_sshd_key(line_type, blob)
        return
    key = read_sshd_key(line_type, blob, "c")
    # Reported by the fingerprint sshd logs and ssh-keygen prints: the canonical blob's.
    assert key.key_type == "ssh-rsa"
    assert key.blob == _blob(rsa2048_pub)
    assert key.fingerprint == keygen_fingerprint(rsa2048_pub)
    assert key.bits == 2048 and key.comment == "c"


def test_registration_stays_stricter_than_reading(rsa2048_pub: Path) -> None:
    padded = _rsa_variant(_blob(rsa2048_pub), b"ssh-rsa", 1, 0)
    assert read_sshd_key("ssh-rsa", padded).fingerprint == keygen_fingerprint(rsa2048_pub)
    with pytest.raises(KeyPolicyError, match="non-minimal"):
        parse_public_key(_line("ssh-rsa", padded), KeyPolicy(min_rsa_bits=1024))


def test_read_sshd_key_values_sshd_does_not_check(ed25519_pub: Path) -> None:
    # sshd parses RSA e and n without checking them, and any sk application
    # string: such a key is still a key on the host and must be seen.
    n = (1 << 2047) + 1
    weird_rsa = _s(b"ssh-rsa") + _s(b"\x01") + _s(b"\0" + n.to_bytes(256, "big"))
    assert read_sshd_key("ssh-rsa", weird_rsa).bits == 2048
    with pytest.raises(KeyPolicyError):
        decode_key("ssh-rsa", weird_rsa)
    small = _s(b"ssh-rsa") + _s(b"\x01\x00\x01") + _s(((1 << 1022) + 1).to_bytes(128, "big"))
    with pytest.raises(WireError, match="below 1024"):
        read_sshd_key("ssh-rsa", small)
    point = WireReader(_blob(ed25519_pub))
    point.string()
    sk = _s(b"sk-ssh-ed25519@openssh.com") + _s(point.string()) + _s(b"ssh:\x1b[31m")
    key = read_sshd_key("sk-ssh-ed25519@openssh.com", sk)
    assert key.is_sk and key.application == "ssh:\x1b[31m"
    short = _s(b"ssh-ed25519") + _s(b"\0" * 31)
    with pytest.raises(WireError, match="32 bytes"):
        read_sshd_key("ssh-ed25519", short)


def test_read_sshd_key_ecdsa_points(keydir: Path) -> None:
    _, pub = make_key(keydir, "ecdsa", 256, name="ecdsa-read")
    blob = _blob(pub)
    assert read_sshd_key("ecdsa-sha2-nistp256", blob).fingerprint == keygen_fingerprint(pub)
    reader = WireReader(blob)
    reader.string(), reader.string()
    point = reader.string()
    compressed = bytes([2 + (point[-1] & 1)]) + point[1:33]
    for bad, reason in [
        (_s(b"ecdsa-sha2-nistp256") + _s(b"nistp256") + _s(compressed), "uncompressed"),
        (_s(b"ecdsa-sha2-nistp256") + _s(b"nistp384") + _s(point), "curve name"),
        (_s(b"ECDSA") + _s(b"nistp256") + _s(point), "unknown key type"),
    ]:
        with pytest.raises(WireError, match=reason):
            read_sshd_key("ecdsa-sha2-nistp256", bad)
    with pytest.raises(WireError, match="does not match"):
        read_sshd_key("ecdsa-sha2-nistp384", blob)
