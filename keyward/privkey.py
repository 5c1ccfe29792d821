"""Inspect a private key file without its passphrase (``keyward key check``).

The registry cannot see whether a private key is protected, so before a user
proves possession of a key, ``keyward key check`` looks at the file on the
user's own machine and refuses one that is stored in clear.  Every container
OpenSSH loads records its protection in clear headers, so nothing here
needs the passphrase, decrypts anything, or touches secret bytes: we read
only the cipher, KDF and (for OpenSSH's own format) the public key.

The verdict must agree with OpenSSH 9.x itself (``sshkey_parse_private2`` and
``sshkey_parse_private_pem_fileblob`` in sshkey.c): a file OpenSSH loads is
classified as protected or not, and a file OpenSSH would refuse is refused
here too, with a one-line reason, rather than waved through as "protected".
The header checks below therefore mirror the ones OpenSSH makes before (and,
where they are visible without the key, after) asking for the passphrase.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass

from keyward.errors import KeyPolicyError
from keyward.keys import (
    DSA,
    ECDSA_256,
    ECDSA_384,
    ECDSA_521,
    RSA,
    SK_ECDSA_256,
    SK_ED25519,
    KeyPolicy,
    PublicKey,
    WireError,
    WireReader,
    check_policy,
    decode_key,
)

OPENSSH_MAGIC = b"openssh-key-v1\0"
# sshkey.c MARK_BEGIN / MARK_END: OpenSSH insists the file starts with the
# BEGIN line and that the END line follows a newline and ends with one.
OPENSSH_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----\n"
OPENSSH_END = b"-----END OPENSSH PRIVATE KEY-----\n"
MIN_BCRYPT_ROUNDS = 16
_MAX_FILE = 1024 * 1024
SK_NOTE = "hardware-backed: the secret never leaves the security key"

# OpenSSH 9.2 cipher.c: name -> (block size, AEAD tag length).  The tag of
# the chacha20-poly1305 and AES-GCM ciphers follows the encrypted section.
OPENSSH_CIPHERS: dict[str, tuple[int, int]] = {
    "3des-cbc": (8, 0),
    "aes128-cbc": (16, 0),
    "aes192-cbc": (16, 0),
    "aes256-cbc": (16, 0),
    "aes128-ctr": (16, 0),
    "aes192-ctr": (16, 0),
    "aes256-ctr": (16, 0),
    "aes128-gcm@openssh.com": (16, 16),
    "aes256-gcm@openssh.com": (16, 16),
    "chacha20-poly1305@openssh.com": (8, 16),
    "none": (8, 0),
}
_SK_TYPES = (SK_ED25519, SK_ECDSA_256)

_BEGIN_LINE = re.compile(r"-----BEGIN (?P<label>[A-Z0-9 ]+)-----\r?\n")

# OIDs met in PKCS#8 (RFC 5208/5958, RFC 8018, RFC 7914).  Only the schemes
# OpenSSL 3's default provider decrypts are named: anything else (PBES1 with
# DES or RC2, RC2/RC4 PKCS#12 PBEs) fails to load in OpenSSH, so it is refused.
_PBES2 = "1.2.840.113549.1.5.13"
_PBKDF2 = "1.2.840.113549.1.5.12"
_SCRYPT = "1.3.6.1.4.1.11591.4.11"
_PKCS12_3DES = "1.2.840.113549.1.12.1.3"
_HMAC_SHA1 = "1.2.840.113549.2.7"
_PRFS = {
    _HMAC_SHA1: "hmacWithSHA1",
    "1.2.840.113549.2.8": "hmacWithSHA224",
    "1.2.840.113549.2.9": "hmacWithSHA256",
    "1.2.840.113549.2.10": "hmacWithSHA384",
    "1.2.840.113549.2.11": "hmacWithSHA512",
}
# cipher OID -> (name, IV length)
_PBES2_CIPHERS = {
    "2.16.840.1.101.3.4.1.2": ("aes-128-cbc", 16),
    "2.16.840.1.101.3.4.1.22": ("aes-192-cbc", 16),
    "2.16.840.1.101.3.4.1.42": ("aes-256-cbc", 16),
    "1.2.840.113549.3.7": ("des-ede3-cbc", 8),
    "1.2.392.200011.61.1.1.1.2": ("camellia-128-cbc", 16),
    "1.2.392.200011.61.1.1.1.3": ("camellia-192-cbc", 16),
    "1.2.392.200011.61.1.1.1.4": ("camellia-256-cbc", 16),
    "1.2.410.200046.1.1.2": ("aria-128-cbc", 16),
    "1.2.410.200046.1.1.7": ("aria-192-cbc", 16),
    "1.2.410.200046.1.1.12": ("aria-256-cbc", 16),
}
# Legacy ``Proc-Type: 4,ENCRYPTED`` PEM: DEK-Info cipher -> IV length.
_PEM_CIPHERS = {
    "AES-128-CBC": 16,
    "AES-192-CBC": 16,
    "AES-256-CBC": 16,
    "DES-EDE3-CBC": 8,
    "CAMELLIA-128-CBC": 16,
    "CAMELLIA-192-CBC": 16,
    "CAMELLIA-256-CBC": 16,
    "ARIA-128-CBC": 16,
    "ARIA-192-CBC": 16,
    "ARIA-256-CBC": 16,
}
# PKCS#8 key algorithms: OpenSSH 9.x keeps only RSA, DSA and ECDSA keys that
# OpenSSL decodes (Ed25519 from PKCS#8 arrived in OpenSSH 10.0).
_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_KEY_ALGORITHMS = {
    "1.2.840.113549.1.1.1": "rsa",
    "1.2.840.10040.4.1": "dsa",
    _EC_PUBLIC_KEY: "ecdsa",
    "1.3.101.112": "Ed25519",
    "1.3.101.113": "Ed448",
    "1.3.101.110": "X25519",
    "1.3.101.111": "X448",
    "1.2.840.113549.1.1.10": "RSA-PSS",
}
_OPENSSH_CURVES = {
    "1.2.840.10045.3.1.7": "nistp256",
    "1.3.132.0.34": "nistp384",
    "1.3.132.0.35": "nistp521",
}
_CURVE_NAMES = {"1.3.132.0.10": "secp256k1", "1.2.840.10045.3.1.1": "prime192v1"}
# The smallest PrivateKeyInfo OpenSSH 9.x can load (ECDSA P-256 without its
# optional public key) is 67 bytes, and encryption never shrinks data; a
# shorter ciphertext is an Ed25519/X25519 key (48 bytes in clear) or junk.
_MIN_PKCS8_KEY = 67

_PEM_TYPES = {"RSA PRIVATE KEY": "rsa", "EC PRIVATE KEY": "ecdsa", "DSA PRIVATE KEY": "dsa"}
_FAMILY = {
    RSA: "rsa",
    DSA: "dsa",
    ECDSA_256: "ecdsa",
    ECDSA_384: "ecdsa",
    ECDSA_521: "ecdsa",
}


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
    # "rsa" | "ecdsa" | "dsa" when a PEM/PKCS#8 container names it in clear
    key_family: str | None = None


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

    Follows OpenSSH's own order: a file that begins with the
    ``openssh-key-v1`` armor is read as such, anything else goes to the PEM
    reader (OpenSSL's), which skips blocks that are not private keys (an
    ``EC PARAMETERS`` block, a certificate) and decides on the first one that
    is.  Raises KeyPolicyError when OpenSSH would not load the file.
    """
    if len(data) > _MAX_FILE:
        raise KeyPolicyError("file is too large to be a private key")
    if data.startswith(OPENSSH_BEGIN):
        return _inspect_openssh(_openssh_body(data))
    text = data.decode("latin-1")
    curve: str | None = None
    saw_openssh = False
    others: list[str] = []
    for label, body, rest in _armor_blocks(text):
        if label == "OPENSSH PRIVATE KEY":
            saw_openssh = True
        elif label == "EC PARAMETERS":
            curve = _ec_parameters_curve(body)
            others.append(label)
        elif label.endswith("PRIVATE KEY"):
            if rest.strip():
                # OpenSSL skips a block it cannot read and loads the next one; which
                # blocks it skips is intricate, so one file holds one private key.
                raise KeyPolicyError(
                    "more than one private key block, or text after the private key:"
                    " keep one key per file"
                )
            if label in _PEM_TYPES:
                return _inspect_pem(label, body, curve)
            if label == "ENCRYPTED PRIVATE KEY":
                return _inspect_pkcs8_encrypted(_b64(body))
            if label == "PRIVATE KEY":
                return _inspect_pkcs8_clear(_b64(body))
            raise KeyPolicyError(f"unsupported private key container: {label}")
        else:
            others.append(label)
    if saw_openssh:
        raise KeyPolicyError(
            "OpenSSH will not load this key: the file must start with"
            " -----BEGIN OPENSSH PRIVATE KEY----- and use LF line ends"
        )
    if others:
        raise KeyPolicyError(
            f"unsupported private key container: no private key, only {', '.join(others)}"
        )
    raise _refuse_unknown(text)


def _armor_blocks(text: str) -> Iterator[tuple[str, str, str]]:
    """Each PEM block of ``text`` as (label, body, everything after its END line), in order.

    Strict where OpenSSL is lenient, so that keyward never judges a block OpenSSL skips:
    every ``-----BEGIN`` in the file must start a line of exactly ``-----BEGIN LABEL-----``
    and be closed by its own ``-----END LABEL-----`` line before the next one begins;
    anything else is refused.  Linear in the size of the file.
    """
    at = 0
    while (start := text.find("-----BEGIN", at)) >= 0:
        line = _BEGIN_LINE.match(text, start)
        if line is None or (start > 0 and text[start - 1] != "\n"):
            raise KeyPolicyError("malformed -----BEGIN line in the private key file")
        label = line.group("label")
        end_marker = f"-----END {label}-----"
        end = text.find(end_marker, line.end())
        following = text.find("-----BEGIN", line.end())
        if end < 0 or (0 <= following < end) or text[end - 1] != "\n":
            raise KeyPolicyError(f"the {label} block has no -----END {label}----- line")
        after = end + len(end_marker)
        if not (after == len(text) or text.startswith(("\n", "\r\n"), after)):
            raise KeyPolicyError(f"malformed -----END {label}----- line in the private key file")
        yield label, text[line.end() : end], text[after:]
        at = after


def _b64(body: str, canonical: bool = False) -> bytes:
    """Decode base64 strictly; ``canonical`` also refuses stray bits, as b64_pton does."""
    cleaned = "".join(body.split())
    try:
        raw = binascii.a2b_base64(cleaned.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyPolicyError("private key armor contains invalid base64") from None
    if canonical and binascii.b2a_base64(raw, newline=False).decode("ascii") != cleaned:
        raise KeyPolicyError("private key armor contains invalid base64")
    return raw


def _openssh_body(data: bytes) -> bytes:
    """The base64 between OpenSSH's markers, found exactly as private2_uudecode does."""
    end = data.find(b"\n" + OPENSSH_END, len(OPENSSH_BEGIN) - 1)
    if end < 0:
        raise KeyPolicyError(
            "OpenSSH private key has no -----END OPENSSH PRIVATE KEY----- line ending in a newline"
        )
    if b"-----BEGIN" in data[end:]:
        # OpenSSH falls back to its PEM reader when the first key does not parse; a
        # second key block would then be the one it loads.
        raise KeyPolicyError(
            "more than one private key block, or text after the private key: keep one key per file"
        )
    return _b64(data[len(OPENSSH_BEGIN) : end + 1].decode("latin-1"), canonical=True)


def _cstring(reader: WireReader) -> str:
    """A string OpenSSH reads with sshbuf_get_cstring: no NUL, here ASCII names."""
    try:
        return reader.text()
    except WireError:
        raise WireError("bad cipher or KDF name") from None


def _inspect_openssh(raw: bytes) -> PrivateKeyReport:
    """Check an ``openssh-key-v1`` container as private2_decrypt does (PROTOCOL.key).

    Everything OpenSSH checks before decrypting is checked here too: a known
    cipher and KDF, one key, a parseable public key, an encrypted section
    whose length is a multiple of the cipher's block size and that is
    followed by exactly the cipher's AEAD tag (16 bytes for
    chacha20-poly1305 and AES-GCM, none otherwise).  A section in clear is
    checked fully, since nothing secret needs decrypting to do so.
    """
    if not raw.startswith(OPENSSH_MAGIC):
        raise KeyPolicyError("OpenSSH private key does not start with openssh-key-v1")
    reader = WireReader(raw[len(OPENSSH_MAGIC) :])
    notes: list[str] = []
    try:
        cipher = _cstring(reader)
        kdf = _cstring(reader)
        kdf_options = reader.string()
        count = reader.uint32()
        if count != 1:
            raise KeyPolicyError(f"OpenSSH private key file holds {count} keys; expected 1")
        pub_blob = reader.string()
        encrypted_len = reader.uint32()
        section = reader.raw(reader.remaining)
        if cipher not in OPENSSH_CIPHERS:
            raise KeyPolicyError(f"OpenSSH private key uses unknown cipher {cipher!r}")
        if kdf not in ("none", "bcrypt"):
            raise KeyPolicyError(f"OpenSSH private key uses unknown KDF {kdf!r}")
        if kdf == "none" and cipher != "none":
            raise KeyPolicyError(f"OpenSSH private key names cipher {cipher} but no KDF")
        block, authlen = OPENSSH_CIPHERS[cipher]
        if encrypted_len < block or encrypted_len % block:
            raise WireError(f"private section is not a whole number of {cipher} blocks")
        rounds: int | None = None
        if kdf == "bcrypt":
            opts = WireReader(kdf_options)
            salt = opts.string()
            rounds = opts.uint32()
            if not salt or len(salt) > 1 << 20 or rounds < 1:
                raise WireError("bad bcrypt salt or rounds")
        if len(section) != encrypted_len + authlen:
            expected = f"{encrypted_len} bytes" + (f" and a {authlen}-byte tag" if authlen else "")
            raise WireError(f"private section is {len(section)} bytes; {cipher} needs {expected}")
        pub_type = WireReader(pub_blob).text()
        if cipher == "none":
            _check_clear_section(section, pub_blob, pub_type)
    except WireError as exc:
        raise KeyPolicyError(f"malformed OpenSSH private key: {exc}") from None
    public_key: PublicKey | None
    try:
        public_key = decode_key(pub_type, pub_blob)
    except KeyPolicyError as exc:
        public_key = None
        notes.append(f"public key not decoded: {exc.message}")
    encrypted = cipher != "none"
    if kdf == "bcrypt" and not encrypted:
        notes.append("a passphrase is asked for but the key is stored in clear (cipher none)")
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


def _check_clear_section(section: bytes, pub_blob: bytes, pub_type: str) -> None:
    """Check an unencrypted private section the way sshkey_parse_private2 does.

    Only security-key (sk) handles are accepted in clear, so only they are
    parsed in full: check integers, the same public key as the envelope, the
    FIDO fields, a comment and the 1, 2, 3... padding.  Other key types in
    clear are refused as unprotected anyway; their secret is not read.
    """
    reader = WireReader(section)
    if reader.uint32() != reader.uint32():
        raise WireError("check integers of the private section differ")
    if pub_type not in _SK_TYPES:
        return
    if reader.raw(len(pub_blob)) != pub_blob:
        raise WireError("private section does not match the public key")
    reader.byte()  # flags
    reader.string()  # key handle
    reader.string()  # reserved
    if b"\0" in reader.string():  # sshbuf_get_cstring refuses a NUL in the comment
        raise WireError("NUL byte in the comment")
    for i, pad in enumerate(reader.raw(reader.remaining), start=1):
        if pad != i & 0xFF:
            raise WireError("bad padding")


def _ec_parameters_curve(body: str) -> str | None:
    """The curve an ``EC PARAMETERS`` block names, or None if not a named curve."""
    try:
        tag, value, _ = _der(_b64(body), 0)
        return _oid(value) if tag == 0x06 else None
    except (WireError, KeyPolicyError):
        return None


def _refuse_curve(oid: str) -> None:
    if oid not in _OPENSSH_CURVES:
        name = _CURVE_NAMES.get(oid, oid)
        raise KeyPolicyError(
            f"OpenSSH cannot load ECDSA keys on curve {name}; use nistp256, nistp384 or nistp521"
        )


def _inspect_pem(label: str, body: str, curve: str | None) -> PrivateKeyReport:
    """Read the RFC 1421 headers of a traditional (``-m PEM``) key as OpenSSL does."""
    lines = body.splitlines()
    headers: dict[str, str] = {}
    if lines and ":" in lines[0]:
        while lines and lines[0].strip():
            name, sep, value = lines.pop(0).partition(":")
            if not sep:
                raise KeyPolicyError("PEM private key has a malformed header")
            headers[name.strip().lower()] = value.strip()
    family = _PEM_TYPES[label]
    if family == "ecdsa" and curve is not None:
        _refuse_curve(curve)
    der = _b64("\n".join(lines))
    proc_type = headers.get("proc-type")
    notes = [f"key type: {family}"]
    if proc_type is None:
        return PrivateKeyReport("pem", False, None, None, None, None, tuple(notes), family)
    if proc_type.replace(" ", "") != "4,ENCRYPTED":
        raise KeyPolicyError(f"PEM private key has unsupported Proc-Type {proc_type!r}")
    cipher, _, iv = headers.get("dek-info", "").partition(",")
    cipher = cipher.strip().upper()
    iv = iv.strip()
    if cipher not in _PEM_CIPHERS:
        raise KeyPolicyError(
            f"PEM private key is encrypted with {cipher or 'no named cipher'},"
            " which OpenSSH cannot decrypt; convert with ssh-keygen -p -f FILE"
        )
    block = _PEM_CIPHERS[cipher]
    if not re.fullmatch(f"[0-9A-Fa-f]{{{2 * block}}}", iv):
        raise KeyPolicyError(f"PEM private key has a malformed {cipher} IV in DEK-Info")
    if not der or len(der) % block:
        raise KeyPolicyError(f"PEM private key is not a whole number of {cipher} blocks")
    notes.append(
        "PEM encryption derives its key with one MD5 round; "
        "convert with ssh-keygen -p -f FILE for bcrypt"
    )
    return PrivateKeyReport("pem", True, cipher, "md5", 1, None, tuple(notes), family)


# --- a minimal DER reader, enough for PrivateKeyInfo headers ----------------


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


def _der_one(data: bytes, tag: int) -> bytes:
    """The value of a whole DER encoding that must be one TLV with ``tag``."""
    got, value, end = _der(data, 0)
    if got != tag or end != len(data):
        raise WireError("unexpected DER structure")
    return value


def _want(item: tuple[int, bytes], tag: int) -> bytes:
    if item[0] != tag:
        raise WireError("unexpected DER tag")
    return item[1]


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


def _der_int(item: tuple[int, bytes]) -> int:
    return int.from_bytes(_want(item, 0x02), "big")


def _inspect_pkcs8_clear(raw: bytes) -> PrivateKeyReport:
    """Name the key algorithm of an unencrypted PKCS#8 key (refused either way)."""
    try:
        items = _der_seq(_der_one(raw, 0x30))
        alg = _der_seq(_want(items[1], 0x30))
        oid = _oid(_want(alg[0], 0x06))
        family = _KEY_ALGORITHMS.get(oid)
        if family == "ecdsa":
            _refuse_curve(_oid(_want(alg[1], 0x06)))
    except (WireError, IndexError):
        raise KeyPolicyError("malformed PKCS#8 private key") from None
    if family not in ("rsa", "dsa", "ecdsa"):
        raise KeyPolicyError(
            f"OpenSSH 9 cannot load {family or oid} keys in PKCS#8 form;"
            " generate the key with ssh-keygen"
        )
    notes = (f"key type: {family}",)
    return PrivateKeyReport("pkcs8", False, None, None, None, None, notes, family)


def _inspect_pkcs8_encrypted(raw: bytes) -> PrivateKeyReport:
    """Check an EncryptedPrivateKeyInfo names a scheme OpenSSH's OpenSSL can decrypt.

    Reads the PBES2 KDF (PBKDF2 with an HMAC-SHA PRF, or scrypt), its cost
    and the cipher, or the PKCS#12 3DES scheme; refuses anything else, since
    OpenSSH would fail to load it even with the right passphrase.
    """
    notes: list[str] = []
    try:
        outer = _der_seq(_der_one(raw, 0x30))
        if len(outer) != 2:
            raise WireError("EncryptedPrivateKeyInfo has extra fields")
        alg = _der_seq(_want(outer[0], 0x30))
        encrypted = _want(outer[1], 0x04)
        scheme = _oid(_want(alg[0], 0x06))
        if scheme == _PKCS12_3DES:
            params = _der_seq(_want(alg[1], 0x30))
            _want(params[0], 0x04)
            rounds = _der_int(params[1])
            kdf, cipher, block = "pkcs12-sha1", "des-ede3-cbc", 8
            notes.append("legacy PKCS#12 encryption (SHA-1, 3DES)")
        elif scheme == _PBES2:
            kdf_alg, enc_alg = (_want(i, 0x30) for i in _der_seq(_want(alg[1], 0x30)))
            kdf_items = _der_seq(kdf_alg)
            kdf_oid = _oid(_want(kdf_items[0], 0x06))
            params = _der_seq(_want(kdf_items[1], 0x30))
            _want(params[0], 0x04)  # salt
            rounds = _der_int(params[1])
            if kdf_oid == _PBKDF2:
                kdf = "pbkdf2"
                prf = [i for i in params[2:] if i[0] == 0x30]
                prf_oid = _oid(_want(_der_seq(prf[0][1])[0], 0x06)) if prf else _HMAC_SHA1
                if prf_oid not in _PRFS:
                    raise KeyPolicyError(f"PKCS#8 key uses unsupported PBKDF2 PRF {prf_oid}")
            elif kdf_oid == _SCRYPT:
                kdf = "scrypt"
            else:
                raise KeyPolicyError(f"PKCS#8 key uses unsupported KDF {kdf_oid}")
            enc_items = _der_seq(enc_alg)
            cipher_oid = _oid(_want(enc_items[0], 0x06))
            if cipher_oid not in _PBES2_CIPHERS:
                raise KeyPolicyError(f"PKCS#8 key uses unsupported cipher {cipher_oid}")
            cipher, block = _PBES2_CIPHERS[cipher_oid]
            if len(_want(enc_items[1], 0x04)) != block:
                raise WireError(f"bad {cipher} IV")
        else:
            raise KeyPolicyError(
                f"PKCS#8 key uses encryption scheme {scheme}, which OpenSSH cannot decrypt;"
                " convert with openssl pkcs8 -topk8 -v2 aes-256-cbc"
            )
    except (WireError, IndexError, ValueError):
        raise KeyPolicyError("malformed encrypted PKCS#8 private key") from None
    if len(encrypted) % block:
        raise KeyPolicyError(f"encrypted PKCS#8 key is not a whole number of {cipher} blocks")
    if len(encrypted) < _MIN_PKCS8_KEY:
        raise KeyPolicyError(
            "encrypted PKCS#8 key is too short for an RSA, ECDSA or DSA key (Ed25519?);"
            " OpenSSH 9 cannot load Ed25519 keys in PKCS#8 form"
        )
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
    if report.key_family == "dsa" and DSA not in policy.allowed_types:
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
    if report.container != "openssh-key-v1" and public_key_hint is not None:
        _check_hint_family(report, public_key_hint)
    if report.kdf == "bcrypt" and (report.kdf_rounds or 0) < MIN_BCRYPT_ROUNDS:
        raise KeyPolicyError(
            f"passphrase KDF uses {report.kdf_rounds} bcrypt rounds; at least"
            f" {MIN_BCRYPT_ROUNDS} required: run ssh-keygen -p -a 100 -f FILE"
        )
    return _with_notes(report, notes)


def _check_hint_family(report: PrivateKeyReport, hint: PublicKey) -> None:
    """Refuse a PEM/PKCS#8 file that cannot hold the .pub's key.

    OpenSSH 9 reads only RSA, ECDSA and DSA keys from these containers, so an
    Ed25519 or security-key .pub next to one means the pair cannot work.
    """
    family = _FAMILY.get(hint.key_type)
    if family is None:
        raise KeyPolicyError(
            f"OpenSSH 9 cannot load {hint.key_type} keys from a {report.container.upper()}"
            " file; generate the key with ssh-keygen"
        )
    if report.key_family is not None and report.key_family != family:
        raise KeyPolicyError(
            f"this private key ({report.key_family}) does not match the public key"
            f" {hint.fingerprint} ({hint.key_type})"
        )


def _with_notes(report: PrivateKeyReport, notes: list[str]) -> PrivateKeyReport:
    return PrivateKeyReport(
        report.container,
        report.encrypted,
        report.cipher,
        report.kdf,
        report.kdf_rounds,
        report.public_key,
        tuple(notes),
        report.key_family,
    )
