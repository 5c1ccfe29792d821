"""SSHSIG proofs: interoperate with ssh-keygen -Y in both directions."""

from __future__ import annotations

import base64
import datetime
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from keyward.errors import ProofError
from keyward.keys import KeyPolicy, PublicKey, parse_public_key
from keyward.sshsig import (
    NAMESPACE,
    armor,
    proof_statement,
    sign_sshsig,
    verify_proof,
    verify_sshsig,
)
from tests.keygen import (
    SoftSK,
    make_key,
    ssh_check_novalidate,
    ssh_sign,
    ssh_verify,
)

TODAY = datetime.date(2026, 11, 23)
POLICY = KeyPolicy(min_rsa_bits=2048)

KEY_SPECS = [("ed25519", None), ("ecdsa", 256), ("ecdsa", 384), ("ecdsa", 521), ("rsa", 3072)]


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sig")


@pytest.fixture(scope="module")
def keys(keydir: Path) -> dict[str, tuple[Path, PublicKey]]:
    out: dict[str, tuple[Path, PublicKey]] = {}
    for key_type, bits in KEY_SPECS:
        priv, pub = make_key(keydir, key_type, bits, passphrase="pass", comment="alice@laptop")
        out[f"{key_type}{bits or ''}"] = (priv, parse_public_key(pub.read_text(), POLICY))
    return out


def _s(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def test_statement_is_canonical() -> None:
    text = proof_statement("alice", "SHA256:abc", TODAY)
    assert text == (
        b"keyward proof of possession\nusername: alice\nfingerprint: SHA256:abc\ndate: 2026-11-23\n"
    )


@pytest.mark.parametrize("name", ["ed25519", "ecdsa256", "ecdsa384", "ecdsa521", "rsa3072"])
def test_ssh_keygen_signed_proof_verifies(
    keys: dict[str, tuple[Path, PublicKey]], name: str
) -> None:
    priv, key = keys[name]
    day = TODAY - datetime.timedelta(days=3)
    sig = ssh_sign(priv, proof_statement("alice", key.fingerprint, day), passphrase="pass")
    assert verify_proof(sig, "alice", key, TODAY, 30) == day
    verify_sshsig(sig, proof_statement("alice", key.fingerprint, day), key)
    with pytest.raises(ProofError, match="for bob and this key dated within 30 days"):
        verify_proof(sig, "bob", key, TODAY, 30)


@pytest.mark.parametrize(
    ("offset", "ok"), [(-1, True), (0, True), (30, True), (31, False), (-2, False)]
)
def test_proof_date_window(keys: dict[str, tuple[Path, PublicKey]], offset: int, ok: bool) -> None:
    priv, key = keys["ed25519"]
    day = TODAY - datetime.timedelta(days=offset)
    sig = ssh_sign(priv, proof_statement("alice", key.fingerprint, day), passphrase="pass")
    if ok:
        assert verify_proof(sig, "alice", key, TODAY, 30) == day
    else:
        with pytest.raises(ProofError, match="dated within 30 days"):
            verify_proof(sig, "alice", key, TODAY, 30)


@pytest.mark.parametrize("name", ["ed25519", "ecdsa256", "ecdsa384", "ecdsa521", "rsa3072"])
def test_sign_sshsig_accepted_by_ssh_keygen(
    keys: dict[str, tuple[Path, PublicKey]], keydir: Path, name: str
) -> None:
    priv, key = keys[name]
    message = proof_statement("alice", key.fingerprint, TODAY)
    sig = sign_sshsig(priv.read_bytes(), b"pass", message)
    lines = sig.decode().splitlines()
    assert lines[0] == "-----BEGIN SSH SIGNATURE-----"
    assert lines[-1] == "-----END SSH SIGNATURE-----"
    assert all(len(line) == 70 for line in lines[1:-2])
    assert sig.endswith(b"-----\n")
    ok = ssh_verify(keydir, key.openssh(), sig, message)
    assert ok.returncode == 0, ok.stderr
    assert ssh_check_novalidate(keydir, sig, message).returncode == 0
    assert ssh_verify(keydir, key.openssh(), sig, message + b"x").returncode != 0
    assert ssh_verify(keydir, key.openssh(), sig, message, namespace="git").returncode != 0
    assert verify_proof(sig, "alice", key, TODAY, 30) == TODAY


@pytest.mark.parametrize(
    ("key_type", "bits", "fmt"), [("rsa", 3072, "PEM"), ("ecdsa", 256, "PKCS8")]
)
def test_sign_sshsig_pem_and_pkcs8(keydir: Path, key_type: str, bits: int, fmt: str) -> None:
    # OpenSSL-written PEM/PKCS#8 keys need a passphrase of at least 5 characters.
    priv, pub = make_key(keydir, key_type, bits, passphrase="passphrase", fmt=fmt)
    key = parse_public_key(pub.read_text())
    sig = sign_sshsig(priv.read_bytes(), b"passphrase", b"hello")
    verify_sshsig(sig, b"hello", key)
    assert ssh_verify(keydir, key.openssh(), sig, b"hello").returncode == 0


def test_sign_sshsig_wrong_passphrase(keys: dict[str, tuple[Path, PublicKey]]) -> None:
    priv, _ = keys["ed25519"]
    with pytest.raises(ProofError, match="cannot load the private key") as info:
        sign_sshsig(priv.read_bytes(), b"wrong", b"m")
    assert "wrong" not in str(info.value).replace("wrong passphrase", "")


def _tamper(sig: bytes) -> bytes:
    lines = sig.decode().splitlines()
    blob = bytearray(base64.b64decode("".join(lines[1:-1])))
    blob[-5] ^= 0x01
    return armor(bytes(blob))


REFUSALS = [
    ("tampered", "does not match a keyward statement"),
    ("namespace", "namespace is not 'keyward'"),
    ("wrong_key", "different key"),
    ("other_user", "for mallory and this key"),
    ("not_armored", "not an armored SSH signature"),
    ("bad_base64", "invalid base64"),
    ("bad_magic", "SSHSIG"),
    ("truncated", "malformed SSHSIG"),
]


@pytest.mark.parametrize(("case", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(keys: dict[str, tuple[Path, PublicKey]], case: str, reason: str) -> None:
    priv, key = keys["ed25519"]
    user = "alice"
    message = proof_statement("alice", key.fingerprint, TODAY)
    sig = ssh_sign(priv, message, passphrase="pass")
    if case == "tampered":
        sig = _tamper(sig)
    elif case == "namespace":
        sig = ssh_sign(priv, message, namespace="git", passphrase="pass")
    elif case == "wrong_key":
        key = keys["ecdsa256"][1]
    elif case == "other_user":
        user = "mallory"
    elif case == "not_armored":
        sig = b"hello"
    elif case == "bad_base64":
        sig = b"-----BEGIN SSH SIGNATURE-----\nU1N*IU0lH\n-----END SSH SIGNATURE-----\n"
    elif case == "bad_magic":
        sig = armor(b"SSHSIX" + b"\0" * 20)
    elif case == "truncated":
        sig = armor(b"SSHSIG" + struct.pack(">I", 1) + b"\0\0\0\x40abc")
    with pytest.raises(ProofError, match=reason) as info:
        verify_proof(sig, user, key, TODAY, 30)
    assert "\n" not in str(info.value)


def test_rsa_sha1_signature_refused(keydir: Path) -> None:
    priv_key = rsa.generate_private_key(65537, 3072)
    pub_line = priv_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    key = parse_public_key(pub_line.decode())
    import hashlib

    msg = b"m"
    data = b"SSHSIG" + _s(b"keyward") + _s(b"") + _s(b"sha512") + _s(hashlib.sha512(msg).digest())
    raw = priv_key.sign(data, padding.PKCS1v15(), hashes.SHA1())
    blob = (
        b"SSHSIG"
        + struct.pack(">I", 1)
        + _s(key.blob)
        + _s(b"keyward")
        + _s(b"")
        + _s(b"sha512")
        + _s(_s(b"ssh-rsa") + _s(raw))
    )
    with pytest.raises(ProofError, match="SHA-1"):
        verify_sshsig(armor(blob), msg, key)


@pytest.mark.parametrize(
    "kind", ["sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"]
)
@pytest.mark.parametrize("hash_alg", ["sha256", "sha512"])
def test_sk_signatures(keydir: Path, kind: str, hash_alg: str) -> None:
    sk = SoftSK(kind)
    key = parse_public_key(sk.public_line)
    message = proof_statement("alice", key.fingerprint, TODAY)
    sig = sk.sshsig(message, hash_alg=hash_alg)
    assert verify_proof(sig, "alice", key, TODAY, 30) == TODAY
    # OpenSSH agrees that this is what a security key signature looks like.
    assert ssh_verify(keydir, key.openssh(), sig, message).returncode == 0
    with pytest.raises(ProofError, match="user presence"):
        verify_sshsig(sk.sshsig(message, flags=0), message, key)
    with pytest.raises(ProofError, match="does not verify"):
        verify_sshsig(sig, message + b"x", key)


def test_unsupported_hash_refused() -> None:
    sk = SoftSK()
    key = parse_public_key(sk.public_line)
    with pytest.raises(ProofError, match="sha256 or sha512"):
        verify_sshsig(sk.sshsig(b"m", hash_alg="sha384"), b"m", key)


def test_namespace_default() -> None:
    assert NAMESPACE == "keyward"


def test_webauthn_signature_refused_by_name(keydir: Path) -> None:
    sk = SoftSK("sk-ecdsa-sha2-nistp256@openssh.com")
    key = parse_public_key(sk.public_line)
    message = proof_statement("alice", key.fingerprint, TODAY)
    sig = sk.webauthn_sshsig(message)
    # A genuine WebAuthn signature: OpenSSH itself verifies it.
    assert ssh_verify(keydir, key.openssh(), sig, message).returncode == 0
    expected = (
        "webauthn signatures (webauthn-sk-ecdsa-sha2-nistp256@openssh.com) are not supported;"
        " sign with ssh-keygen -Y sign -n keyward"
    )
    for check in (
        lambda: verify_proof(sig, "alice", key, TODAY, 30),
        lambda: verify_sshsig(sig, message, key),
    ):
        with pytest.raises(ProofError) as info:
            check()
        assert str(info.value) == expected


def _plain_public(key_type: str) -> PublicKey:
    priv = (
        ed25519.Ed25519PrivateKey.generate()
        if key_type == "ssh-ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    line = priv.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return parse_public_key(line.decode())


@pytest.mark.parametrize(
    ("kind", "key_type"),
    [
        ("sk-ssh-ed25519@openssh.com", "ssh-ed25519"),
        ("sk-ecdsa-sha2-nistp256@openssh.com", "ecdsa-sha2-nistp256"),
        ("sk-ssh-ed25519@openssh.com", "ecdsa-sha2-nistp256"),
    ],
)
def test_sk_signature_for_plain_key_named(kind: str, key_type: str) -> None:
    """A security-key signature (flags and counter after it) over a plain key's SSHSIG
    is refused for its algorithm, not as 'trailing bytes'."""
    sk = SoftSK(kind)
    key = _plain_public(key_type)
    sig = sk.sshsig(b"m")
    blob = base64.b64decode("".join(sig.decode().splitlines()[1:-1]))
    # Re-point the SSHSIG at the plain key so only the signature is wrong.
    inner = blob[10 + 4 + len(sk.blob) :]
    forged = armor(b"SSHSIG" + struct.pack(">I", 1) + _s(key.blob) + inner)
    with pytest.raises(ProofError) as info:
        verify_sshsig(forged, b"m", key)
    assert str(info.value) == f"signature algorithm does not match the {key_type} key"
