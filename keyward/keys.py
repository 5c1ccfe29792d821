"""Parse and check one OpenSSH public key line; fingerprints; the key policy.

A public key enters keyward as text a person pasted, so this module is the
gate: it accepts exactly one ``type base64 [comment]`` line, decodes the wire
blob completely (refusing anything it cannot account for byte by byte), and
only then applies the policy.  The blob is kept exactly as submitted and is
never re-serialised through a library, so the fingerprint we record is the
one ``ssh-keygen -lf`` prints and the key written to hosts is the key given.

Error messages name what is wrong but never echo key material or the raw
input: the input may be a private key pasted by mistake.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from keyward.errors import KeyPolicyError
from keyward.memo import computed_once

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

ED25519 = "ssh-ed25519"
SK_ED25519 = "sk-ssh-ed25519@openssh.com"
ECDSA_256 = "ecdsa-sha2-nistp256"
ECDSA_384 = "ecdsa-sha2-nistp384"
ECDSA_521 = "ecdsa-sha2-nistp521"
SK_ECDSA_256 = "sk-ecdsa-sha2-nistp256@openssh.com"
RSA = "ssh-rsa"
DSA = "ssh-dss"

#: Every plain (non-certificate) key type keyward can decode.  DSA is decoded
#: so that a DSA key found on a host can still be fingerprinted and reported.
KNOWN_TYPES: frozenset[str] = frozenset(
    {ED25519, SK_ED25519, ECDSA_256, ECDSA_384, ECDSA_521, SK_ECDSA_256, RSA, DSA}
)

DEFAULT_ALLOWED_TYPES: frozenset[str] = frozenset(
    {ED25519, SK_ED25519, ECDSA_256, ECDSA_384, ECDSA_521, SK_ECDSA_256, RSA}
)

CERT_SUFFIX = "-cert-v01@openssh.com"

# curve identifier inside the blob, bits
_ECDSA_CURVES: dict[str, tuple[str, int]] = {
    ECDSA_256: ("nistp256", 256),
    ECDSA_384: ("nistp384", 384),
    ECDSA_521: ("nistp521", 521),
    SK_ECDSA_256: ("nistp256", 256),
}


def _ec_public_key(bits: int, point: bytes) -> EllipticCurvePublicKey:
    """The point decoded on its NIST curve; ``ValueError`` when it is not on it.

    cryptography is imported here, not with the module: reading a key file's text (what
    ``key check`` and the CLI's start-up do) must not pay for OpenSSL's bindings.
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    curve: ec.EllipticCurve = (
        ec.SECP256R1() if bits == 256 else ec.SECP384R1() if bits == 384 else ec.SECP521R1()
    )
    return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)


# OpenSSH refuses bignums above 16384 bits (SSHBUF_MAX_BIGNUM).
_MAX_RSA_BITS = 16384
# A 16384-bit RSA key is ~2.8 KB of base64; anything far larger is not a key.
_MAX_INPUT_CHARS = 16384
_MAX_COMMENT_CHARS = 1024

# Characters that can hide or fake structure in a terminal or a log line.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")

_PRIVATE_MARKERS = (
    re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"),
    re.compile(r"PuTTY-User-Key-File-\d+:"),
    re.compile(r"SSH PRIVATE KEY FILE FORMAT 1\.1"),  # SSH1 private keys
)
_RFC4716_MARKER = "---- BEGIN SSH2 PUBLIC KEY ----"


class WireError(ValueError):
    """A malformed SSH wire encoding; callers turn it into a KeywardError."""


class WireReader:
    """Reads the SSH wire types (RFC 4251 section 5) from a byte string.

    Every read checks the remaining length, so truncated input raises
    ``WireError`` instead of returning a short value.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        """Bytes not yet consumed."""
        return len(self._data) - self._pos

    def raw(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""
        if n < 0 or n > self.remaining:
            raise WireError("truncated")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def byte(self) -> int:
        """One unsigned byte."""
        return self.raw(1)[0]

    def uint32(self) -> int:
        """A big-endian unsigned 32-bit integer."""
        value: int = struct.unpack(">I", self.raw(4))[0]
        return value

    def string(self) -> bytes:
        """A uint32-length-prefixed byte string."""
        return self.raw(self.uint32())

    def text(self) -> str:
        """A string that must be printable ASCII (type names, namespaces)."""
        value = self.string()
        if not all(0x20 < b < 0x7F for b in value):
            raise WireError("non-ASCII name")
        return value.decode("ascii")

    def mpint(self) -> int:
        """A non-negative multiple-precision integer in its minimal encoding.

        A leading zero byte is only allowed to keep the sign bit clear, so each
        key has exactly one blob (no two registry rows for the same key).
        """
        value = self.string()
        if not value:
            return 0
        if value[0] & 0x80:
            raise WireError("negative integer")
        if value[0] == 0 and (len(value) == 1 or not value[1] & 0x80):
            raise WireError("non-minimal integer")
        return int.from_bytes(value, "big")

    def end(self) -> None:
        """Insist nothing is left over: trailing bytes could smuggle data."""
        if self.remaining:
            raise WireError("trailing bytes")


def encode_string(value: bytes) -> bytes:
    """Encode an SSH ``string`` (uint32 length prefix)."""
    return struct.pack(">I", len(value)) + value


def encode_mpint(value: int) -> bytes:
    """Encode a non-negative SSH ``mpint`` in its minimal form."""
    if value < 0:
        raise ValueError("negative mpint")
    if value == 0:
        return encode_string(b"")
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big")
    return encode_string(raw)


@dataclass(frozen=True)
class KeyPolicy:
    """What keyward accepts as a user key, and how long keys and proofs stay valid."""

    allowed_types: frozenset[str] = DEFAULT_ALLOWED_TYPES
    min_rsa_bits: int = 3072
    max_key_age_days: int = 365
    proof_max_age_days: int = 30

    def __post_init__(self) -> None:
        if self.min_rsa_bits < 1024 or self.max_key_age_days < 1 or self.proof_max_age_days < 0:
            raise ValueError("key policy limits out of range")


DEFAULT_POLICY = KeyPolicy()


@dataclass(frozen=True)
class _KeyInfo:
    bits: int
    application: str | None


@dataclass(frozen=True, repr=False)
class PublicKey:
    """A structurally valid public key: its type and the exact wire blob.

    Construction decodes the blob, so every instance is a key whose blob
    names ``key_type`` and decodes fully; ``comment`` is for display only and
    takes no part in equality.
    """

    key_type: str
    blob: bytes
    comment: str = field(default="", compare=False)
    _info: _KeyInfo = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_info", _decode_blob(self.key_type, self.blob))

    @classmethod
    def _from_sshd(cls, key_type: str, blob: bytes, comment: str, info: _KeyInfo) -> PublicKey:
        """A key decoded by ``read_sshd_key``: sshd's rules, not keyward's stricter ones.

        Bypasses ``__post_init__`` on purpose: a key sshd honours must be
        reported even when keyward would never register it (e=1, odd sk
        application), so it cannot be forced through the registry's checks.
        """
        key = object.__new__(cls)
        object.__setattr__(key, "key_type", key_type)
        object.__setattr__(key, "blob", blob)
        object.__setattr__(key, "comment", comment)
        object.__setattr__(key, "_info", info)
        return key

    def __repr__(self) -> str:
        return f"PublicKey({self.key_type} {self.fingerprint})"

    @computed_once
    def fingerprint(self) -> str:
        """``SHA256:`` + unpadded base64 of the blob's SHA-256, as ``ssh-keygen -lf`` prints.

        Computed once per key object: desired-state sorting asks for it very often.
        """
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")

    @property
    def short_fingerprint(self) -> str:
        """The first 16 characters after ``SHA256:``, for tables and messages."""
        return self.fingerprint[len("SHA256:") :][:16]

    @computed_once
    def base64(self) -> str:
        """Standard (padded) base64 of the blob, the middle field of a key line."""
        return base64.b64encode(self.blob).decode("ascii")

    @property
    def bits(self) -> int:
        """RSA/DSA modulus bits, ECDSA curve size, 256 for Ed25519."""
        return self._info.bits

    @property
    def is_sk(self) -> bool:
        """True for FIDO security-key types (``sk-*@openssh.com``)."""
        return self.key_type.startswith("sk-")

    @property
    def application(self) -> str | None:
        """The FIDO application string (usually ``ssh:``) for sk keys, else None."""
        return self._info.application

    def openssh(self) -> str:
        """``type base64``, without the comment: the form written to hosts."""
        return f"{self.key_type} {self.base64}"


def _decode_blob(key_type: str, blob: bytes) -> _KeyInfo:
    """Decode ``blob`` completely for ``key_type``, raising KeyPolicyError."""
    if key_type.endswith(CERT_SUFFIX):
        raise KeyPolicyError("certificates are not accepted as user keys")
    if key_type not in KNOWN_TYPES:
        raise KeyPolicyError(f"unsupported key type {_safe_type(key_type)}")
    reader = WireReader(blob)
    try:
        inner = reader.string()
        if inner != key_type.encode("ascii"):
            raise KeyPolicyError(
                f"key blob does not match its stated type {key_type}"
                f" (it is {_safe_type(inner.decode('ascii', 'replace'))})"
            )
        info = _decode_body(key_type, reader)
        reader.end()
    except WireError as exc:
        raise KeyPolicyError(f"malformed {key_type} key blob: {exc}") from None
    return info


def _decode_body(key_type: str, reader: WireReader) -> _KeyInfo:
    """Decode the type-specific part of a key blob after the type string."""
    application: str | None = None
    if key_type in (ED25519, SK_ED25519):
        point = reader.string()
        if len(point) != 32:
            raise WireError("Ed25519 key must be 32 bytes")
        from cryptography.hazmat.primitives.asymmetric import ed25519

        ed25519.Ed25519PublicKey.from_public_bytes(point)
        bits = 256
    elif key_type in _ECDSA_CURVES:
        name, bits = _ECDSA_CURVES[key_type]
        if reader.string() != name.encode("ascii"):
            raise WireError("curve name does not match the key type")
        point = reader.string()
        coord = (bits + 7) // 8
        # OpenSSH only accepts uncompressed points.
        if len(point) != 1 + 2 * coord or point[0] != 4:
            raise WireError("ECDSA point is not an uncompressed point")
        try:
            _ec_public_key(bits, point)
        except ValueError:
            raise WireError("ECDSA point is not on the curve") from None
    elif key_type == RSA:
        e = reader.mpint()
        n = reader.mpint()
        bits = n.bit_length()
        if bits > _MAX_RSA_BITS:
            raise WireError("RSA modulus too large")
        # OpenSSH refuses moduli under 1024 bits outright (SSH_RSA_MINIMUM_MODULUS_SIZE).
        if bits < 1024:
            raise WireError("RSA modulus below 1024 bits")
        if not (n & 1 and e & 1 and 3 <= e < n):
            raise WireError("invalid RSA public numbers")
        from cryptography.hazmat.primitives.asymmetric import rsa

        try:
            rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError:
            raise WireError("invalid RSA public numbers") from None
    elif key_type == DSA:
        p, q, g, y = (reader.mpint() for _ in range(4))
        if not (p and q and g and y):
            raise WireError("invalid DSA public numbers")
        bits = p.bit_length()
    else:  # pragma: no cover - guarded by KNOWN_TYPES
        raise WireError("unsupported key type")
    if key_type.startswith("sk-"):
        raw_app = reader.string()
        try:
            application = raw_app.decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("security key application is not UTF-8") from None
        if not application or _has_control(application):
            raise WireError("invalid security key application")
    return _KeyInfo(bits=bits, application=application)


def _safe_type(name: str) -> str:
    """A key type name fit for a message: echo only names we know, never raw input."""
    if name in KNOWN_TYPES or (
        name.endswith(CERT_SUFFIX) and name[: -len(CERT_SUFFIX)] in KNOWN_TYPES
    ):
        return name
    return "(unrecognised)"


def _has_control(text: str) -> bool:
    """True if ``text`` holds a control, format (bidi override, zero-width, BOM) or
    line/paragraph separator character: the same set the registry and options refuse."""
    for ch in text:
        if ch == "\t":
            continue
        if ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            return True
    return False


def decode_key(key_type: str, blob: bytes, comment: str = "") -> PublicKey:
    """Rebuild a key from stored parts, with structural checks only.

    Used for registry rows and host files: a key stored yesterday must still
    load even if today's policy would refuse it, so no policy applies here.
    """
    return PublicKey(key_type=key_type, blob=blob, comment=comment)


# --- Reading keys exactly as sshd does -----------------------------------------
#
# An authorized_keys file on a host is not input keyward chose to accept: it
# is what sshd will honour.  Reading it must therefore follow OpenSSH 9.x
# (``sshkey_read`` and ``sshkey_from_blob`` in sshkey.c, ``sshbuf_b64tod``,
# ``sshbuf_get_bignum2``), lenient exactly where sshd is lenient, so that no
# key sshd would accept escapes an offboarding sweep.  Keys are reported by
# the fingerprint of their canonical blob, as sshd and ``ssh-keygen -l`` print
# it, so a padded encoding of a registered key still matches its record.

#: Names sshd accepts as the first field of a key line (``peek_type_nid``:
#: exact, case-sensitive), mapped to the plain type keyward reports.
SSHD_LINE_TYPES: dict[str, str] = {name: name for name in KNOWN_TYPES} | {
    "rsa-sha2-256": RSA,
    "rsa-sha2-512": RSA,
    "webauthn-sk-ecdsa-sha2-nistp256@openssh.com": SK_ECDSA_256,
}

# ``sshkey_type_from_name`` in OpenSSH 9.2-9.8 also accepts a plain type's
# short name, in any case, as the type string inside a blob (9.9 stopped).
# They are kept: against a newer sshd keyward then sees a key sshd skips,
# which errs on the safe side for offboarding, never the other way.  The
# ECDSA short names resolve too but then fail (the curve is taken from the
# full name), so they are absent.  Likewise DSA keys are still read although
# OpenSSH 10 no longer knows them.
_SSHD_SHORT_NAMES: dict[str, str] = {
    "rsa": RSA,
    "dsa": DSA,
    "ed25519": ED25519,
    "ed25519-sk": SK_ED25519,
}

_SSHBUF_MAX_BIGNUM = 16384 // 8
_SSHBUF_MAX_ECPOINT = (528 * 2 // 8) + 1

# Group orders of the NIST curves (``openssl ecparam -param_enc explicit``),
# for the checks of ``sshkey_ec_validate_public``.
_EC_ORDERS: dict[int, int] = {
    256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    384: int(
        "ffffffffffffffffffffffffffffffffffffffffffffffff"
        "c7634d81f4372ddf581a0db248b0a77aecec196accc52973",
        16,
    ),
    521: int(
        "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
        "a51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409",
        16,
    ),
}

_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUES = {ch: i for i, ch in enumerate(_B64_ALPHABET)}
# C isspace() in the "C" locale.
_C_SPACE = frozenset(" \t\n\v\f\r")
_C_SPACE_DELETE = str.maketrans("", "", " \t\n\v\f\r")


def sshd_b64decode(token: str) -> bytes:
    """Decode like OpenSSH's ``b64_pton``, raising ``WireError`` where it fails.

    Whitespace is skipped anywhere; padding is required to complete the last
    group; nothing but whitespace may follow it; the unused bits before the
    padding must be zero (OpenSSH refuses them as a "subliminal channel", and
    Python's decoder would not).
    """
    # Fast path: once the skipped whitespace is gone, a canonical encoding
    # (which b64_pton always accepts, with the same bytes) needs no loop.
    cleaned = token.translate(_C_SPACE_DELETE)
    if cleaned.isascii():
        try:
            fast = binascii.a2b_base64(cleaned, strict_mode=True)
        except binascii.Error:
            pass
        else:
            if base64.b64encode(fast).decode("ascii") == cleaned:
                return fast
    out = bytearray()
    state = 0
    acc = 0
    i = 0
    n = len(token)
    while i < n:
        ch = token[i]
        i += 1
        if ch in _C_SPACE:
            continue
        if ch == "=":
            break
        value = _B64_VALUES.get(ch)
        if value is None:
            raise WireError("not base64")
        acc = (acc << 6) | value
        state += 1
        if state == 4:
            out += acc.to_bytes(3, "big")
            acc = 0
            state = 0
    else:
        if state:
            raise WireError("base64 is not padded")
        return bytes(out)
    # A pad character at index i - 1.
    rest = token[i:]
    if state in (0, 1):
        raise WireError("misplaced base64 padding")
    if state == 2:
        stripped = rest.lstrip("".join(_C_SPACE))
        if not stripped.startswith("="):
            raise WireError("base64 padding incomplete")
        rest = stripped[1:]
    if any(ch not in _C_SPACE for ch in rest):
        raise WireError("data after base64 padding")
    spare_bits = 4 if state == 2 else 2
    if acc & ((1 << spare_bits) - 1):
        raise WireError("base64 has non-zero spare bits")
    acc >>= spare_bits
    out += acc.to_bytes(state - 1, "big")
    return bytes(out)


def _sshd_cstring(reader: WireReader) -> bytes:
    """``sshbuf_get_cstring``: no NUL inside, one trailing NUL is dropped."""
    value = reader.string()
    nul = value.find(b"\0")
    if nul >= 0:
        if nul != len(value) - 1:
            raise WireError("NUL inside a string")
        value = value[:-1]
    return value


def _sshd_bignum(reader: WireReader) -> int:
    """``sshbuf_get_bignum2``: non-negative; leading zero bytes are allowed."""
    value = reader.string()
    if value and value[0] & 0x80:
        raise WireError("negative integer")
    if len(value) > _SSHBUF_MAX_BIGNUM + 1 or (
        len(value) == _SSHBUF_MAX_BIGNUM + 1 and value[0] != 0
    ):
        raise WireError("integer too large")
    return int.from_bytes(value, "big")


def _sshd_blob_type(name: bytes) -> str:
    """``sshkey_type_from_name`` for the type string inside a blob."""
    text = name.decode("latin-1")
    if text.endswith(CERT_SUFFIX):
        raise WireError("certificate")
    if text in SSHD_LINE_TYPES:
        return SSHD_LINE_TYPES[text]
    short = _SSHD_SHORT_NAMES.get(name.lower().decode("latin-1"))  # bytes: ASCII folding
    if short is None:
        raise WireError("unknown key type in blob")
    return short


def _sshd_ec_point(key_type: str, point: bytes) -> None:
    """``sshbuf_get_eckey`` and ``sshkey_ec_validate_public`` for one point."""
    _name, bits = _ECDSA_CURVES[key_type]
    if not point or len(point) > _SSHBUF_MAX_ECPOINT:
        raise WireError("ECDSA point size")
    if point[0] != 4 or len(point) != 1 + 2 * ((bits + 7) // 8):
        raise WireError("ECDSA point is not an uncompressed point")
    try:
        numbers = _ec_public_key(bits, point).public_numbers()
    except ValueError:
        raise WireError("ECDSA point is not on the curve") from None
    order = _EC_ORDERS[bits]
    half = order.bit_length() // 2
    for coord in (numbers.x, numbers.y):
        if coord.bit_length() <= half or coord >= order - 1:
            raise WireError("ECDSA point fails sshd's public value checks")


def read_sshd_key(line_type: str, blob: bytes, comment: str = "") -> PublicKey:
    """The key sshd reads from ``line_type`` and ``blob``, or ``WireError``.

    ``line_type`` is the first field of the line (one of ``SSHD_LINE_TYPES``).
    The returned key has the plain type and the canonical blob (minimal
    integers, full type name), so its fingerprint is the one sshd logs.
    No key policy and none of keyward's registration checks apply.
    """
    plain = SSHD_LINE_TYPES.get(line_type)
    if plain is None:
        raise WireError("unknown key type")
    reader = WireReader(blob)
    blob_type = _sshd_blob_type(_sshd_cstring(reader))
    if blob_type != plain:
        raise WireError("key blob does not match its stated type")
    parts: list[bytes] = []
    application: str | None = None
    if plain in (ED25519, SK_ED25519):
        point = reader.string()
        if len(point) != 32:
            raise WireError("Ed25519 key must be 32 bytes")
        parts.append(encode_string(point))
        bits = 256
    elif plain in _ECDSA_CURVES:
        name, bits = _ECDSA_CURVES[plain]
        if _sshd_cstring(reader) != name.encode("ascii"):
            raise WireError("curve name does not match the key type")
        point = reader.string()
        _sshd_ec_point(plain, point)
        parts += [encode_string(name.encode("ascii")), encode_string(point)]
    elif plain == RSA:
        e = _sshd_bignum(reader)
        n = _sshd_bignum(reader)
        bits = n.bit_length()
        if bits < 1024:  # SSH_RSA_MINIMUM_MODULUS_SIZE
            raise WireError("RSA modulus below 1024 bits")
        parts += [encode_mpint(e), encode_mpint(n)]
    else:  # DSA
        numbers = [_sshd_bignum(reader) for _ in range(4)]
        bits = numbers[0].bit_length()
        parts += [encode_mpint(v) for v in numbers]
    if plain.startswith("sk-"):
        app = _sshd_cstring(reader)
        parts.append(encode_string(app))
        application = app.decode("utf-8", errors="replace")
    reader.end()
    canonical = encode_string(plain.encode("ascii")) + b"".join(parts)
    return PublicKey._from_sshd(plain, canonical, comment, _KeyInfo(bits, application))


def check_policy(key: PublicKey, policy: KeyPolicy) -> None:
    """Refuse ``key`` if ``policy`` does not allow its type or size."""
    if key.key_type not in policy.allowed_types:
        if key.key_type == DSA:
            raise KeyPolicyError("DSA keys are refused; use ssh-ed25519")
        raise KeyPolicyError(f"key type {key.key_type} is not allowed by policy")
    if key.key_type == RSA and key.bits < policy.min_rsa_bits:
        raise KeyPolicyError(
            f"RSA key is {key.bits} bits; policy requires at least {policy.min_rsa_bits}"
        )


def looks_like_private_key(text: str | bytes) -> bool:
    """True if ``text`` contains a private key armor (PEM, OpenSSH, PuTTY, SSH1)."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return any(marker.search(text) for marker in _PRIVATE_MARKERS)


def _decode_b64(token: str) -> bytes:
    """Strict, canonical base64: one encoding per blob, nothing ignored."""
    try:
        blob = binascii.a2b_base64(token.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyPolicyError("key data is not valid base64") from None
    if base64.b64encode(blob).decode("ascii") != token:
        raise KeyPolicyError("key data is not canonical base64")
    if not blob:
        raise KeyPolicyError("key data is empty")
    return blob


def from_pub_file(text: str) -> str:
    """A ``.pub`` file's text with Windows line endings (CRLF) made plain LF.

    An editor on Windows saves ``type base64 comment\r\n``: the same key, which
    ``key add`` accepts.  Only CR directly before LF goes; a lone CR anywhere else
    (inside a comment, say) is kept, so ``parse_public_key`` still refuses it.
    """
    return text.replace("\r\n", "\n")


def parse_public_key(text: str, policy: KeyPolicy = DEFAULT_POLICY) -> PublicKey:
    """Parse exactly one ``type base64 [comment]`` line and apply ``policy``.

    Anything that is not plainly one public key is refused with a reason a
    person can act on, because the most common mistakes (a private key, an
    authorized_keys line with options, a PuTTY export) all look almost right.
    """
    if looks_like_private_key(text):
        raise KeyPolicyError("this is a PRIVATE key; give the .pub file")
    if _RFC4716_MARKER in text:
        raise KeyPolicyError(
            "this is an RFC 4716 (PuTTY/SSH2) public key; convert it with ssh-keygen -i -f FILE"
        )
    if len(text) > _MAX_INPUT_CHARS:
        raise KeyPolicyError("input is too long to be one public key")
    if "\r" in text:
        raise KeyPolicyError("input contains a carriage return (CR); give one plain line")
    lines = [line for line in text.split("\n") if line.strip(" \t")]
    if not lines:
        raise KeyPolicyError("no public key given")
    if len(lines) > 1:
        raise KeyPolicyError("more than one line given; give exactly one public key")
    line = lines[0]
    if _has_control(line):
        raise KeyPolicyError("public key line contains control characters")
    tokens = re.split(r"[ \t]+", line.strip(" \t"), maxsplit=2)
    key_type = tokens[0]
    if key_type.endswith(CERT_SUFFIX):
        raise KeyPolicyError("certificates are not accepted as user keys")
    if key_type not in KNOWN_TYPES:
        rest = re.split(r"[ \t]+", line.strip(" \t"))[1:]
        if any(tok in KNOWN_TYPES or tok.endswith(CERT_SUFFIX) for tok in rest):
            raise KeyPolicyError(
                "authorized_keys options are not accepted here; give only 'type base64 [comment]'"
            )
        raise KeyPolicyError(
            "unrecognised key type; expected a line like 'ssh-ed25519 AAAA... comment'"
        )
    if len(tokens) < 2:
        raise KeyPolicyError(f"{key_type} line has no key data")
    blob = _decode_b64(tokens[1])
    comment = tokens[2] if len(tokens) > 2 else ""
    if len(comment) > _MAX_COMMENT_CHARS:
        raise KeyPolicyError("key comment is too long")
    key = decode_key(key_type, blob, comment)
    check_policy(key, policy)
    return key
