"""keyward key check: inspect real ssh-keygen private keys without their passphrase."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyward.errors import KeyPolicyError
from keyward.keys import DEFAULT_POLICY, parse_public_key
from keyward.privkey import SK_NOTE, check_private_key, inspect_private_key
from tests.keygen import SoftSK, dsa_supported, keygen_fingerprint, make_key

PASS = "passphrase"  # OpenSSL-written formats need 5+ characters

# (ssh-keygen -t, -b, -N, -m, -a, container, encrypted, cipher, kdf, rounds, refusal or None)
CASES = [
    ("ed25519", None, PASS, None, None, "openssh-key-v1", True, "aes256-ctr", "bcrypt", 16, None),
    ("ed25519", None, PASS, None, 100, "openssh-key-v1", True, "aes256-ctr", "bcrypt", 100, None),
    (
        "ed25519",
        None,
        PASS,
        None,
        8,
        "openssh-key-v1",
        True,
        "aes256-ctr",
        "bcrypt",
        8,
        "8 bcrypt rounds",
    ),
    ("ed25519", None, "", None, None, "openssh-key-v1", False, None, None, None, "not protected"),
    ("ecdsa", 256, PASS, None, None, "openssh-key-v1", True, "aes256-ctr", "bcrypt", 16, None),
    ("ecdsa", 384, PASS, None, None, "openssh-key-v1", True, "aes256-ctr", "bcrypt", 16, None),
    ("ecdsa", 521, PASS, None, None, "openssh-key-v1", True, "aes256-ctr", "bcrypt", 16, None),
    ("rsa", 3072, PASS, None, None, "openssh-key-v1", True, "aes256-ctr", "bcrypt", 16, None),
    (
        "rsa",
        2048,
        PASS,
        None,
        None,
        "openssh-key-v1",
        True,
        "aes256-ctr",
        "bcrypt",
        16,
        "2048 bits",
    ),
    ("rsa", 3072, PASS, "PEM", None, "pem", True, "AES-128-CBC", "md5", 1, None),
    ("rsa", 3072, "", "PEM", None, "pem", False, None, None, None, "not protected"),
    ("ecdsa", 256, PASS, "PKCS8", None, "pkcs8", True, "aes-128-cbc", "pbkdf2", 2048, None),
    ("ecdsa", 256, "", "PKCS8", None, "pkcs8", False, None, None, None, "not protected"),
]


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("priv")


@pytest.mark.parametrize(
    (
        "tool",
        "bits",
        "pw",
        "fmt",
        "rounds",
        "container",
        "enc",
        "cipher",
        "kdf",
        "kdf_rounds",
        "refusal",
    ),
    CASES,
)
def test_inspect_and_check(
    keydir: Path,
    tool: str,
    bits: int | None,
    pw: str,
    fmt: str | None,
    rounds: int | None,
    container: str,
    enc: bool,
    cipher: str | None,
    kdf: str | None,
    kdf_rounds: int | None,
    refusal: str | None,
) -> None:
    name = f"{tool}{bits}-{fmt}-{rounds}-{'enc' if pw else 'clear'}"
    priv, pub = make_key(keydir, tool, bits, passphrase=pw, fmt=fmt, rounds=rounds, name=name)
    data = priv.read_bytes()
    report = inspect_private_key(data)
    assert (report.container, report.encrypted, report.cipher) == (container, enc, cipher)
    assert (report.kdf, report.kdf_rounds) == (kdf, kdf_rounds)
    if container == "openssh-key-v1":
        assert report.public_key is not None
        assert report.public_key.fingerprint == keygen_fingerprint(pub)
    else:
        assert report.public_key is None
    hint = parse_public_key(pub.read_text(), type(DEFAULT_POLICY)(min_rsa_bits=1024))
    if refusal is None:
        checked = check_private_key(data, DEFAULT_POLICY, hint)
        assert checked.encrypted
    else:
        with pytest.raises(KeyPolicyError, match=refusal) as info:
            check_private_key(data, DEFAULT_POLICY, hint)
        _assert_no_secret(str(info.value), data)


def _assert_no_secret(message: str, data: bytes) -> None:
    assert "\n" not in message
    for line in data.decode().splitlines()[1:-1]:
        if len(line) > 20:
            assert line[:20] not in message


def test_unencrypted_message(keydir: Path) -> None:
    priv, _ = make_key(keydir, "ed25519", name="clear-msg")
    with pytest.raises(KeyPolicyError) as info:
        check_private_key(priv.read_bytes(), DEFAULT_POLICY)
    assert str(info.value) == "not protected by a passphrase: run ssh-keygen -p -f FILE"


def test_pem_without_hint_notes_unchecked_type(keydir: Path) -> None:
    priv, _ = make_key(keydir, "ecdsa", 256, passphrase=PASS, fmt="PKCS8", name="nohint")
    report = check_private_key(priv.read_bytes(), DEFAULT_POLICY)
    assert any("not checked" in note for note in report.notes)


def test_dsa_refused(keydir: Path) -> None:
    if not dsa_supported(keydir):
        pytest.skip("local ssh-keygen no longer generates DSA keys")
    for fmt in (None, "PEM"):
        priv, _ = make_key(keydir, "dsa", passphrase=PASS, fmt=fmt, name=f"dsa-{fmt}")
        with pytest.raises(KeyPolicyError, match="DSA keys are refused"):
            check_private_key(priv.read_bytes(), DEFAULT_POLICY)


@pytest.mark.parametrize(
    "kind", ["sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"]
)
def test_sk_key_without_passphrase_accepted(kind: str) -> None:
    sk = SoftSK(kind)
    data = sk.private_key_file()
    report = check_private_key(data, DEFAULT_POLICY, parse_public_key(sk.public_line))
    assert not report.encrypted
    assert report.public_key is not None and report.public_key.key_type == kind
    assert SK_NOTE in report.notes


def test_hint_mismatch_refused(keydir: Path) -> None:
    priv, _ = make_key(keydir, "ed25519", passphrase=PASS, name="mine")
    _, other = make_key(keydir, "ed25519", name="other")
    with pytest.raises(KeyPolicyError, match="does not match the public key"):
        check_private_key(priv.read_bytes(), DEFAULT_POLICY, parse_public_key(other.read_text()))


def test_sk_hint_does_not_excuse_clear_pem(keydir: Path) -> None:
    priv, _ = make_key(keydir, "rsa", 3072, fmt="PEM", name="clear-pem-sk-hint")
    with pytest.raises(KeyPolicyError, match="not protected"):
        check_private_key(priv.read_bytes(), DEFAULT_POLICY, parse_public_key(SoftSK().public_line))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a private key"),
        (b"hello world", "not a private key"),
        (b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE x", "this is a public key"),
        (b"PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n", "PuTTY"),
        (
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
            "openssh-key-v1",
        ),
        (
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
            b"-----END OPENSSH PRIVATE KEY-----\n",
            "malformed",
        ),
        (
            b"-----BEGIN OPENSSH PRIVATE KEY-----\n***\n-----END OPENSSH PRIVATE KEY-----\n",
            "base64",
        ),
        (b"-----BEGIN FOO PRIVATE KEY-----\nAAAA\n-----END FOO PRIVATE KEY-----\n", "unsupported"),
    ],
)
def test_not_private_keys(data: bytes, reason: str) -> None:
    with pytest.raises(KeyPolicyError, match=reason):
        inspect_private_key(data)


def test_inspect_never_needs_passphrase_for_any_rounds(keydir: Path) -> None:
    priv, _ = make_key(keydir, "ed25519", passphrase=PASS, rounds=1, name="r1")
    report = inspect_private_key(priv.read_bytes())
    assert report.kdf_rounds == 1
    with pytest.raises(KeyPolicyError, match="1 bcrypt rounds"):
        check_private_key(priv.read_bytes(), DEFAULT_POLICY)
