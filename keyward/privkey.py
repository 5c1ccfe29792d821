"""Inspect a private key file without its passphrase (``keyward key check``).

The registry cannot see whether a private key is protected, so before a user
proves possession of a key, ``keyward key check`` looks at the file on the
user's own machine and refuses one that is stored in clear.  Every container
OpenSSH writes records its protection in clear headers, so nothing here
needs the passphrase, decrypts anything, or touches secret bytes: we read
only the cipher, KDF and (for OpenSSH's own format) the public key.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

from keyward.errors import KeyPolicyError
from keyward.keys import (
    DSA,
    KeyPolicy,
    PublicKey,
    WireError,
    WireReader,
    check_policy,
    decode_key,
)

OPENSSH_MAGIC = b"openssh-key-v1\0"
MIN_BCRYPT_ROUNDS = 16
_MAX_FILE = 1024 * 1024
SK_NOTE = "hardware-backed: the secret never leaves the security key"

_ARMOR = re.compile(
    r"-----BEGIN (?P<label>[A-Z0-9 ]+)-----\r?\n(?P<body>.*?)-----END (?P=label)-----",
    re.DOTALL,
)

# OIDs met in PKCS#8 EncryptedPrivateKeyInfo (RFC 8018, RFC 7914).
_OIDS = {
    "1.2.840.113549.1.5.13": "pbes2",
    "1.2.840.113549.1.5.12": "pbkdf2",
    "1.3.6.1.4.1.11591.4.11": "scrypt",
    "2.16.840.1.101.3.4.1.2": "aes-128-cbc",
    "2.16.840.1.101.3.4.1.22": "aes-192-cbc",
    "2.16.840.1.101.3.4.1.42": "aes-256-cbc",
    "1.2.840.113549.3.7": "des-ede3-cbc",
    "1.2.840.113549.1.5.3": "pbeWithMD5AndDES-CBC",
    "1.2.840.113549.1.12.1.3": "pbeWithSHAAnd3-KeyTripleDES-CBC",
}

_PEM_TYPES = {"RSA PRIVATE KEY": "rsa", "EC PRIVATE KEY": "ecdsa", "DSA PRIVATE KEY": "dsa"}


@dataclass(frozen=True)
class PrivateKeyReport:
    """What a private key file reveals about its protection without the passphrase."""

    container: str  # "openssh-key-v1" | "pem" | "pkcs8"
    encrypted: bool
    cipher: str | None
    kdf: str | None
    kdf_rounds: int | None
    public_key: PublicKey | None
    notes: tuple[str, ...] = ()


def _refuse_unknown(text: str) -> KeyPolicyError:
    """The most helpful refusal for input that is not a supported private key."""
    if "PuTTY-User-Key-File-" in text:
        return KeyPolicyError(
            "PuTTY key files are not supported; export an OpenSSH key with puttygen"
        )
    if re.match(r"\s*(ssh-|ecdsa-|sk-)", text):
        return KeyPolicyError("this is a public key; give the private key file")
    return KeyPolicyError("not a private key file keyward recognises")


def inspect_private_key(data: bytes) -> PrivateKeyReport:
    """Read the container headers of a private key file; never decrypts.

    Raises KeyPolicyError when the data is not a private key in OpenSSH,
    PEM or PKCS#8 form.
    """
    if len(data) > _MAX_FILE:
        raise KeyPolicyError("file is too large to be a private key")
    text = data.decode("latin-1")
    match = _ARMOR.search(text)
    if match is None:
        raise _refuse_unknown(text)
    label = match.group("label")
    body = match.group("body")
    if label == "OPENSSH PRIVATE KEY":
        return _inspect_openssh(_b64(body))
    if label in _PEM_TYPES:
        return _inspect_pem(label, body)
    if label == "ENCRYPTED PRIVATE KEY":
        return _inspect_pkcs8_encrypted(_b64(body))
    if label == "PRIVATE KEY":
        return PrivateKeyReport("pkcs8", False, None, None, None, None, ())
    raise KeyPolicyError("unsupported private key container")


def _b64(body: str) -> bytes:
    cleaned = "".join(body.split())
    try:
        return binascii.a2b_base64(cleaned.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyPolicyError("private key armor contains invalid base64") from None


def _inspect_openssh(raw: bytes) -> PrivateKeyReport:
    """Parse the clear header of an ``openssh-key-v1`` container (PROTOCOL.key)."""
    if not raw.startswith(OPENSSH_MAGIC):
        raise KeyPolicyError("OpenSSH private key does not start with openssh-key-v1")
    reader = WireReader(raw[len(OPENSSH_MAGIC) :])
    notes: list[str] = []
    try:
        cipher = reader.text() if reader.remaining else ""
        kdf = reader.text()
        kdf_options = reader.string()
        count = reader.uint32()
        if count != 1:
            raise KeyPolicyError(f"OpenSSH private key file holds {count} keys; expected 1")
        pub_blob = reader.string()
        reader.string()  # the encrypted section: never looked into
        reader.end()
        rounds: int | None = None
        if kdf == "bcrypt":
            opts = WireReader(kdf_options)
            opts.string()  # salt
            rounds = opts.uint32()
            opts.end()
        elif kdf == "none":
            if kdf_options:
                raise WireError("unexpected KDF options")
        else:
            notes.append("unknown KDF")
        pub_type = WireReader(pub_blob).text()
    except WireError as exc:
        raise KeyPolicyError(f"malformed OpenSSH private key: {exc}") from None
    public_key: PublicKey | None
    try:
        public_key = decode_key(pub_type, pub_blob)
    except KeyPolicyError as exc:
        public_key = None
        notes.append(f"public key not decoded: {exc.message}")
    encrypted = cipher != "none"
    if public_key is not None and public_key.is_sk:
        notes.append(SK_NOTE)
    return PrivateKeyReport(
        container="openssh-key-v1",
        encrypted=encrypted,
        cipher=cipher if encrypted else None,
        kdf=kdf if kdf != "none" else None,
        kdf_rounds=rounds,
        public_key=public_key,
        notes=tuple(notes),
    )


def _inspect_pem(label: str, body: str) -> PrivateKeyReport:
    """Read the RFC 1421 headers of a traditional (``-m PEM``) key."""
    headers: dict[str, str] = {}
    for line in body.splitlines():
        if ":" not in line:
            if not line.strip():
                continue
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    encrypted = headers.get("proc-type", "").replace(" ", "") == "4,ENCRYPTED"
    cipher: str | None = None
    notes = [f"key type: {_PEM_TYPES[label]}"]
    if encrypted:
        cipher = headers.get("dek-info", "").split(",")[0].strip() or None
        notes.append(
            "PEM encryption derives its key with one MD5 round; "
            "convert with ssh-keygen -p -f FILE for bcrypt"
        )
    return PrivateKeyReport(
        container="pem",
        encrypted=encrypted,
        cipher=cipher,
        kdf="md5" if encrypted else None,
        kdf_rounds=1 if encrypted else None,
        public_key=None,
        notes=tuple(notes),
    )


# --- a minimal DER reader, enough for EncryptedPrivateKeyInfo ---------------


def _der(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """Read one DER TLV at ``pos``: (tag, value, next position)."""
    if pos + 2 > len(data):
        raise WireError("truncated DER")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise WireError("bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise WireError("truncated DER")
    return tag, data[pos : pos + length], pos + length


def _der_seq(data: bytes) -> list[tuple[int, bytes]]:
    """The TLVs inside a SEQUENCE's value."""
    items: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        tag, value, pos = _der(data, pos)
        items.append((tag, value))
    return items


def _oid(value: bytes) -> str:
    if not value:
        raise WireError("empty OID")
    parts = [value[0] // 40, value[0] % 40]
    acc = 0
    for b in value[1:]:
        acc = (acc << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(acc)
            acc = 0
    return ".".join(str(p) for p in parts)


def _inspect_pkcs8_encrypted(raw: bytes) -> PrivateKeyReport:
    """Name the PBES2 KDF, its iteration count and the cipher of a PKCS#8 key."""
    cipher: str | None = None
    kdf: str | None = None
    rounds: int | None = None
    notes: list[str] = []
    try:
        _, outer, _ = _der(raw, 0)
        _, alg = _der_seq(outer)[0]
        alg_items = _der_seq(alg)
        scheme = _OIDS.get(_oid(alg_items[0][1]), "unknown")
        if scheme == "pbes2":
            kdf_alg, enc_alg = (v for _, v in _der_seq(alg_items[1][1])[:2])
            kdf_items = _der_seq(kdf_alg)
            kdf = _OIDS.get(_oid(kdf_items[0][1]), "unknown")
            params = _der_seq(kdf_items[1][1])
            # PBKDF2 iterationCount and scrypt cost N both follow the salt.
            if kdf in ("pbkdf2", "scrypt") and len(params) > 1 and params[1][0] == 0x02:
                rounds = int.from_bytes(params[1][1], "big")
            cipher = _OIDS.get(_oid(_der_seq(enc_alg)[0][1]), "unknown")
        else:
            kdf = scheme
            notes.append("legacy PKCS#5 v1 / PKCS#12 encryption")
    except (WireError, IndexError, ValueError):
        notes.append("encryption parameters could not be read")
    return PrivateKeyReport("pkcs8", True, cipher, kdf, rounds, None, tuple(notes))


def check_private_key(
    data: bytes, policy: KeyPolicy, public_key_hint: PublicKey | None = None
) -> PrivateKeyReport:
    """Refuse a private key file that is not passphrase-protected or is too weak.

    ``public_key_hint`` (the ``.pub`` the user registered) lets us check the
    policy for PEM/PKCS#8 files, whose public half is encrypted, and lets us
    catch a user checking one file but registering another.
    """
    report = inspect_private_key(data)
    key = report.public_key
    if key is not None and public_key_hint is not None and key != public_key_hint:
        raise KeyPolicyError(
            f"this private key ({key.fingerprint}) does not match the public key"
            f" {public_key_hint.fingerprint}"
        )
    notes = list(report.notes)
    if report.container == "pem" and "key type: dsa" in notes and DSA not in policy.allowed_types:
        raise KeyPolicyError("DSA keys are refused; use ssh-ed25519")
    if report.container == "openssh-key-v1" and key is None:
        raise KeyPolicyError("the key type in this private key file is not recognised")
    checked = key if key is not None else public_key_hint
    if checked is not None:
        check_policy(checked, policy)
    elif report.container != "openssh-key-v1":
        notes.append("key type and size not checked: give the .pub file to check them")
    # Only the file itself can show it is a FIDO handle; a hint cannot.
    if key is not None and key.is_sk:
        if SK_NOTE not in notes:
            notes.append(SK_NOTE)
        return _with_notes(report, notes)
    if not report.encrypted:
        raise KeyPolicyError("not protected by a passphrase: run ssh-keygen -p -f FILE")
    if report.kdf == "bcrypt" and (report.kdf_rounds or 0) < MIN_BCRYPT_ROUNDS:
        raise KeyPolicyError(
            f"passphrase KDF uses {report.kdf_rounds} bcrypt rounds; at least"
            f" {MIN_BCRYPT_ROUNDS} required: run ssh-keygen -p -a 100 -f FILE"
        )
    return _with_notes(report, notes)


def _with_notes(report: PrivateKeyReport, notes: list[str]) -> PrivateKeyReport:
    return PrivateKeyReport(
        report.container,
        report.encrypted,
        report.cipher,
        report.kdf,
        report.kdf_rounds,
        report.public_key,
        tuple(notes),
    )
