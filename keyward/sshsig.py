"""Proof of possession: a keyward statement signed in OpenSSH's SSHSIG format.

The registry only ever sees public keys.  To raise a key's attestation to
``proof`` its owner signs a short, dated statement naming their username and
the key's fingerprint with ``ssh-keygen -Y sign -n keyward``; this module
builds that statement and verifies the signature (format: OpenSSH
``PROTOCOL.sshsig``).  Verification is done here with ``cryptography`` rather
than by shelling out, so the pure core needs no ``ssh-keygen`` at run time.

The namespace ``keyward`` keeps a proof from being replayed as, say, a git
commit signature and vice versa; the date bounds how long a proof is
accepted.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from keyward.errors import ProofError
from keyward.keys import (
    ECDSA_256,
    ECDSA_384,
    ECDSA_521,
    ED25519,
    RSA,
    SK_ECDSA_256,
    SK_ED25519,
    PublicKey,
    WireError,
    WireReader,
    encode_mpint,
    encode_string,
)

NAMESPACE = "keyward"
MAGIC = b"SSHSIG"
VERSION = 1
_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_END = "-----END SSH SIGNATURE-----"
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_MAX_ARMOR = 64 * 1024
_USERNAME_SAFE = re.compile(r"[A-Za-z0-9._@+-]{1,64}")

_ECDSA_HASH: dict[str, hashes.HashAlgorithm] = {
    ECDSA_256: hashes.SHA256(),
    ECDSA_384: hashes.SHA384(),
    ECDSA_521: hashes.SHA512(),
}
_ECDSA_CURVE: dict[str, ec.EllipticCurve] = {
    ECDSA_256: ec.SECP256R1(),
    ECDSA_384: ec.SECP384R1(),
    ECDSA_521: ec.SECP521R1(),
    SK_ECDSA_256: ec.SECP256R1(),
}
_RSA_HASH: dict[str, hashes.HashAlgorithm] = {
    "rsa-sha2-256": hashes.SHA256(),
    "rsa-sha2-512": hashes.SHA512(),
}
# sk signatures without the user-presence flag were made without a touch.
_SK_USER_PRESENT = 0x01
# The signature type a FIDO key used through a browser's WebAuthn API makes.
WEBAUTHN_SK_ECDSA = "webauthn-sk-ecdsa-sha2-nistp256@openssh.com"


@dataclass(frozen=True)
class _Signature:
    """The decoded fields of an SSHSIG blob."""

    public_key: bytes
    namespace: bytes
    reserved: bytes
    hash_algorithm: str
    signature: bytes


def proof_statement(username: str, fingerprint: str, day: datetime.date) -> bytes:
    """The exact bytes a user signs to prove they hold ``fingerprint``'s private key.

    Canonical and line-based so a person can read what they are signing, and
    it names the user, the key and the day so a proof cannot be moved to
    another account, another key, or reused indefinitely.
    """
    return (
        "keyward proof of possession\n"
        f"username: {username}\n"
        f"fingerprint: {fingerprint}\n"
        f"date: {day.isoformat()}\n"
    ).encode()


def _dearmor(armored: bytes) -> bytes:
    """Strip the ``SSH SIGNATURE`` armor and decode the base64 body."""
    if len(armored) > _MAX_ARMOR:
        raise ProofError("signature is too large")
    try:
        text = armored.decode("ascii")
    except UnicodeDecodeError:
        raise ProofError("signature is not an armored SSH signature") from None
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 3 or lines[0] != _BEGIN or lines[-1] != _END:
        raise ProofError(
            "signature is not an armored SSH signature (-----BEGIN SSH SIGNATURE-----)"
        )
    body = "".join(lines[1:-1])
    try:
        return binascii.a2b_base64(body.encode("ascii"), strict_mode=True)
    except binascii.Error:
        raise ProofError("signature armor contains invalid base64") from None


def _parse(armored: bytes) -> _Signature:
    """Decode an armored SSHSIG into its fields, checking magic and version."""
    blob = _dearmor(armored)
    reader = WireReader(blob)
    try:
        if reader.raw(len(MAGIC)) != MAGIC:
            raise ProofError("signature does not start with SSHSIG")
        version = reader.uint32()
        if version != VERSION:
            raise ProofError(f"unsupported SSHSIG version {version}")
        public_key = reader.string()
        namespace = reader.string()
        reserved = reader.string()
        hash_algorithm = reader.string()
        signature = reader.string()
        reader.end()
    except WireError as exc:
        raise ProofError(f"malformed SSHSIG signature: {exc}") from None
    return _Signature(
        public_key=public_key,
        namespace=namespace,
        reserved=reserved,
        hash_algorithm=hash_algorithm.decode("ascii", "replace"),
        signature=signature,
    )


def _check_header(sig: _Signature, key: PublicKey, namespace: str) -> None:
    """Refuse a signature made by another key, for another namespace or hash."""
    if sig.public_key != key.blob:
        raise ProofError(f"signature was made by a different key than {key.fingerprint}")
    if sig.namespace != namespace.encode():
        raise ProofError(
            f"signature namespace is not {namespace!r} (use ssh-keygen -Y sign -n {namespace})"
        )
    if sig.hash_algorithm not in _HASHES:
        raise ProofError("signature hash algorithm must be sha256 or sha512")


def _signed_data(sig: _Signature, message: bytes) -> bytes:
    """The blob SSHSIG actually signs: magic, namespace, reserved, hash, H(message)."""
    digest = _HASHES[sig.hash_algorithm](message).digest()
    return (
        MAGIC
        + encode_string(sig.namespace)
        + encode_string(sig.reserved)
        + encode_string(sig.hash_algorithm.encode("ascii"))
        + encode_string(digest)
    )


def _ecdsa_der(sig_bytes: bytes) -> bytes:
    """Convert the SSH ``mpint r, mpint s`` ECDSA encoding to DER."""
    inner = WireReader(sig_bytes)
    r = inner.mpint()
    s = inner.mpint()
    inner.end()
    return encode_dss_signature(r, s)


def _check_sig_type(key: PublicKey, sig_type: str) -> None:
    """Refuse a signature algorithm keyward does not verify for ``key``, by name.

    Checked before the rest of the blob is parsed, so an unsupported kind of
    signature gets its own message instead of a confusing parse error.
    """
    if sig_type == WEBAUTHN_SK_ECDSA:
        # Browsers' WebAuthn signatures add origin, clientData and extensions
        # fields; ssh-keygen -Y sign never makes them for a proof.
        raise ProofError(
            f"webauthn signatures ({WEBAUTHN_SK_ECDSA}) are not supported;"
            f" sign with ssh-keygen -Y sign -n {NAMESPACE}"
        )
    if key.key_type == RSA:
        if sig_type == "ssh-rsa":
            raise ProofError("RSA signatures with SHA-1 (ssh-rsa) are refused; use rsa-sha2-512")
        if sig_type not in _RSA_HASH:
            raise ProofError("signature algorithm does not match the RSA key")
    elif sig_type != key.key_type:
        raise ProofError(f"signature algorithm does not match the {key.key_type} key")


def _verify_raw(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """Verify an SSH signature blob by ``key`` over ``data``; False if it does not match.

    Raises ProofError for signatures keyward refuses outright (SHA-1 RSA,
    webauthn, wrong algorithm for the key, malformed).  A security key's
    signature carries a flags byte and a counter after the signature and
    covers them (PROTOCOL.u2f).
    """
    try:
        reader = WireReader(signature)
        sig_type = reader.text()
        _check_sig_type(key, sig_type)
        sig_bytes = reader.string()
        flags = counter = 0
        if key.is_sk:
            flags = reader.byte()
            counter = reader.uint32()
        reader.end()
    except WireError as exc:
        raise ProofError(f"malformed signature blob: {exc}") from None
    kt = key.key_type
    try:
        if kt == RSA:
            rsa_hash = _RSA_HASH[sig_type]
            pub = serialization.load_ssh_public_key(key.openssh().encode())
            if not isinstance(pub, rsa.RSAPublicKey):  # pragma: no cover - decoded as RSA
                raise ProofError("RSA key did not load as RSA")
            modlen = (pub.key_size + 7) // 8
            if len(sig_bytes) > modlen:
                return False
            pub.verify(sig_bytes.rjust(modlen, b"\0"), data, padding.PKCS1v15(), rsa_hash)
            return True
        if key.is_sk:
            if not flags & _SK_USER_PRESENT:
                raise ProofError("security key signature was made without user presence (touch)")
            app = (key.application or "").encode()
            data = (
                hashlib.sha256(app).digest()
                + struct.pack(">BI", flags, counter)
                + hashlib.sha256(data).digest()
            )
        point = _point(key)
        if kt in (ED25519, SK_ED25519):
            ed25519.Ed25519PublicKey.from_public_bytes(point).verify(sig_bytes, data)
            return True
        curve = _ECDSA_CURVE[kt]
        ec_pub = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        ec_hash = _ECDSA_HASH.get(kt, hashes.SHA256())
        ec_pub.verify(_ecdsa_der(sig_bytes), data, ec.ECDSA(ec_hash))
        return True
    except InvalidSignature:
        return False
    except WireError as exc:
        raise ProofError(f"malformed signature blob: {exc}") from None


def _point(key: PublicKey) -> bytes:
    """The raw public point of an Ed25519/ECDSA (sk or not) key blob."""
    reader = WireReader(key.blob)
    reader.string()  # type
    if key.key_type not in (ED25519, SK_ED25519):
        reader.string()  # curve name
    return reader.string()


def _supported(key: PublicKey) -> None:
    if key.key_type not in (ED25519, SK_ED25519, RSA) and key.key_type not in _ECDSA_CURVE:
        raise ProofError(f"proofs are not supported for {key.key_type} keys")


def verify_sshsig(
    armored: bytes, message: bytes, key: PublicKey, namespace: str = NAMESPACE
) -> None:
    """Verify an armored SSHSIG over ``message`` by ``key``; raise ProofError if not valid."""
    _supported(key)
    sig = _parse(armored)
    _check_header(sig, key, namespace)
    if not _verify_raw(key, sig.signature, _signed_data(sig, message)):
        raise ProofError(f"signature does not verify for key {key.fingerprint}")


def _safe_username(username: str) -> str:
    return username if _USERNAME_SAFE.fullmatch(username) else "this user"


def verify_proof(
    armored: bytes,
    username: str,
    key: PublicKey,
    today: datetime.date,
    max_age_days: int,
) -> datetime.date:
    """Find the statement date the proof signs, from tomorrow back ``max_age_days``.

    Tomorrow is included so a user ahead of the server's time zone is not
    refused.  Returns the signed date; raises ProofError when no statement in
    the window verifies.
    """
    _supported(key)
    sig = _parse(armored)
    _check_header(sig, key, NAMESPACE)
    for offset in range(-1, max_age_days + 1):
        day = today - datetime.timedelta(days=offset)
        message = proof_statement(username, key.fingerprint, day)
        if _verify_raw(key, sig.signature, _signed_data(sig, message)):
            return day
    raise ProofError(
        f"signature does not match a keyward statement for {_safe_username(username)}"
        f" and this key dated within {max_age_days} days"
    )


def armor(blob: bytes) -> bytes:
    """Armor an SSHSIG blob exactly as ``ssh-keygen -Y sign`` does (70-column base64)."""
    body = base64.b64encode(blob).decode("ascii")
    lines = [body[i : i + 70] for i in range(0, len(body), 70)]
    return (_BEGIN + "\n" + "\n".join(lines) + "\n" + _END + "\n").encode("ascii")


_SigningKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _load_private(data: bytes, passphrase: bytes | None) -> _SigningKey:
    """Load an OpenSSH, PEM or PKCS#8 private key; refuse other key kinds."""
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            priv: object = serialization.load_ssh_private_key(data, passphrase)
        else:
            priv = serialization.load_pem_private_key(data, passphrase)
    except (ValueError, TypeError):
        raise ProofError(
            "cannot load the private key (wrong passphrase or unknown format)"
        ) from None
    if not isinstance(
        priv, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ):
        raise ProofError("only Ed25519, ECDSA and RSA keys can sign proofs here")
    return priv


def sign_sshsig(
    private_key_pem: bytes,
    passphrase: bytes | None,
    message: bytes,
    namespace: str = NAMESPACE,
) -> bytes:
    """Sign ``message`` in SSHSIG format with an OpenSSH private key file's contents.

    Ed25519, ECDSA and RSA (as rsa-sha2-512) keys; SHA-512 message hash, as
    ``ssh-keygen`` uses.  Used by tests and by the CLI when a user lets
    keyward sign for them; the private key never leaves this function.
    """
    priv = _load_private(private_key_pem, passphrase)
    pub_line = priv.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    pub_blob = base64.b64decode(pub_line.split()[1])
    hash_algorithm = "sha512"
    digest = hashlib.sha512(message).digest()
    data = (
        MAGIC
        + encode_string(namespace.encode())
        + encode_string(b"")
        + encode_string(hash_algorithm.encode())
        + encode_string(digest)
    )
    if isinstance(priv, ed25519.Ed25519PrivateKey):
        sig_blob = encode_string(ED25519.encode()) + encode_string(priv.sign(data))
    elif isinstance(priv, ec.EllipticCurvePrivateKey):
        kt = {256: ECDSA_256, 384: ECDSA_384, 521: ECDSA_521}[priv.curve.key_size]
        der = priv.sign(data, ec.ECDSA(_ECDSA_HASH[kt]))
        r, s = decode_dss_signature(der)
        sig_blob = encode_string(kt.encode()) + encode_string(encode_mpint(r) + encode_mpint(s))
    elif isinstance(priv, rsa.RSAPrivateKey):
        raw = priv.sign(data, padding.PKCS1v15(), hashes.SHA512())
        sig_blob = encode_string(b"rsa-sha2-512") + encode_string(raw)
    else:  # pragma: no cover - _load_private admits only the three kinds
        raise ProofError("only Ed25519, ECDSA and RSA keys can sign proofs here")
    blob = (
        MAGIC
        + struct.pack(">I", VERSION)
        + encode_string(pub_blob)
        + encode_string(namespace.encode())
        + encode_string(b"")
        + encode_string(hash_algorithm.encode())
        + encode_string(sig_blob)
    )
    return armor(blob)
