"""keyward key check: inspect real ssh-keygen private keys without their passphrase."""

from __future__ import annotations

import base64
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from keyward.errors import KeyPolicyError
from keyward.keys import DEFAULT_POLICY, WireReader, parse_public_key
from keyward.privkey import OPENSSH_CIPHERS, SK_NOTE, check_private_key, inspect_private_key
from tests.cli_runner import Keyward
from tests.keygen import SSH_KEYGEN, SoftSK, dsa_supported, keygen_fingerprint, make_key

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
    for line in data.decode("latin-1").splitlines():
        if len(line) > 20 and not line.startswith("-----"):
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
        # An EC PARAMETERS block whose OID is empty, and nothing else.
        (
            b"-----BEGIN EC PARAMETERS-----\nBgA=\n-----END EC PARAMETERS-----\n",
            "no private key, only EC PARAMETERS",
        ),
        # Many BEGIN lines and no END: refused at the first, in one pass over the file.
        (b"-----BEGIN A-----\n" * 20_000, "the A block has no -----END A----- line"),
        (b" -----BEGIN RSA PRIVATE KEY-----\n", "malformed -----BEGIN line"),
        (
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY----- junk\n",
            "malformed -----END PRIVATE KEY----- line",
        ),
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


# --- differential: keyward's verdict against OpenSSH's own loader -----------
#
# Every sample is a file that real tools write (ssh-keygen in each format and
# cipher, OpenSSL's variants) or a one-field edit of one.  For each, keyward's
# verdict (protected / clear / refuse) must be the one OpenSSH itself reaches
# with ``ssh-keygen -y``, and the one written in the table.

WRONG = "not-the-passphrase"
OPENSSH_92_CIPHERS = [
    "3des-cbc",
    "aes128-cbc",
    "aes192-cbc",
    "aes256-cbc",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
]

DIFFERENTIAL = {
    **{f"v1-{c}": "protected" for c in OPENSSH_92_CIPHERS},
    "v1-clear": "clear",
    "v1-ecdsa256": "protected",
    "v1-ecdsa384": "protected",
    "v1-ecdsa521": "protected",
    "v1-rsa2048": "protected",
    "v1-dsa": "protected",
    "v1-sk-ed25519": "clear",
    "v1-sk-ecdsa": "clear",
    "pem-rsa": "protected",
    "pkcs8-rsa": "protected",
    "pem-ed25519": "protected",
    "pem-rsa-clear": "clear",
    "pem-ecdsa384": "protected",
    "pem-ecdsa384-clear": "clear",
    "pem-dsa": "protected",
    "pkcs8-ecdsa521": "protected",
    "pkcs8-ecdsa256-clear": "clear",
    "pkcs8-rsa-aes256": "protected",
    "ossl-ecparam-genkey": "clear",
    "ossl-ecparam-then-aes256": "protected",
    "ossl-ec-aes256": "protected",
    "ossl-ec-des3": "protected",
    "ossl-ec-camellia128": "protected",
    "ossl-rsa-aes256": "protected",
    "ossl-genpkey-ec": "clear",
    "ossl-pkcs8-aes256": "protected",
    "ossl-pkcs8-scrypt": "protected",
    "ossl-pkcs8-des3": "protected",
    "ossl-pkcs8-sha512-prf": "protected",
    "ossl-pkcs8-pbe-sha1-3des": "protected",
    "ossl-cert-then-key": "protected",
    "ossl-encrypted-then-clear": "refuse",
    "ossl-clear-then-encrypted": "refuse",
    "ossl-space-before-encrypted-then-clear": "refuse",
    "ossl-clear-begin-trailing-space-then-encrypted": "refuse",
    "ossl-pkcs8-extra-alg-element-then-clear": "refuse",
    "ossl-proc-type-spaced-then-clear": "refuse",
    "v1-sk-nul-comment-then-clear-pem": "refuse",
    "ossl-ed25519": "refuse",
    "ossl-ed25519-aes256": "refuse",
    "ossl-ed448": "refuse",
    "ossl-secp256k1": "refuse",
    "ossl-secp256k1-params-then-aes256": "refuse",
    "ossl-params-only": "refuse",
    "v1-leading-newline": "refuse",
    "v1-crlf": "refuse",
    "v1-no-final-newline": "refuse",
    "v1-trailing-text": "protected",
    "v1-gcm-without-tag": "refuse",
    "v1-chacha-short-tag": "refuse",
    "v1-ctr-with-tag": "refuse",
    "v1-unknown-cipher": "refuse",
    "v1-unknown-kdf": "refuse",
    "v1-cipher-without-kdf": "refuse",
    "v1-two-keys": "refuse",
    "v1-partial-block": "refuse",
    "v1-kdf-options-extra": "protected",
    "v1-clear-but-bcrypt": "clear",
    "v1-sk-bad-padding": "refuse",
    "v1-sk-checkint-mismatch": "refuse",
    "v1-sk-other-public-key": "refuse",
}

# Documented refusals that fail closed: files OpenSSH loads (with the verdict given here)
# but keyward refuses, because OpenSSL would skip a block it cannot read and load another
# key from the same file. Which blocks it skips is intricate (a BEGIN line that does not
# start a line, DER it cannot parse, a Proc-Type header with a space), and a file that
# holds more than one key is never what a person means: keyward wants one key per file.
FAIL_CLOSED = {
    "ossl-encrypted-then-clear": "protected",
    "ossl-clear-then-encrypted": "clear",
    "ossl-space-before-encrypted-then-clear": "clear",
    "ossl-clear-begin-trailing-space-then-encrypted": "clear",
    "ossl-pkcs8-extra-alg-element-then-clear": "clear",
    "ossl-proc-type-spaced-then-clear": "clear",
    "v1-sk-nul-comment-then-clear-pem": "clear",
}


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, stdin=subprocess.DEVNULL)


def _armor_v1(raw: bytes) -> bytes:
    body = base64.b64encode(raw).decode()
    lines = "\n".join(body[i : i + 70] for i in range(0, len(body), 70))
    begin, end = "-----BEGIN OPENSSH PRIVATE KEY-----", "-----END OPENSSH PRIVATE KEY-----"
    return f"{begin}\n{lines}\n{end}\n".encode()


def _s(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


@dataclass(frozen=True)
class V1:
    """The envelope fields of an openssh-key-v1 file (PROTOCOL.key), to edit one."""

    cipher: bytes
    kdf: bytes
    kdfopts: bytes
    count: int
    pub: bytes
    enclen: int
    section: bytes

    @classmethod
    def parse(cls, data: bytes) -> V1:
        raw = base64.b64decode("".join(data.decode().splitlines()[1:-1]))
        assert raw.startswith(b"openssh-key-v1\0")
        r = WireReader(raw[15:])
        head = (r.string(), r.string(), r.string(), r.uint32(), r.string(), r.uint32())
        return cls(*head, section=r.raw(r.remaining))

    def build(self, **changes: bytes | int) -> bytes:
        f = replace(self, **changes)  # type: ignore[arg-type]
        return _armor_v1(
            b"openssh-key-v1\0"
            + _s(f.cipher)
            + _s(f.kdf)
            + _s(f.kdfopts)
            + struct.pack(">I", f.count)
            + _s(f.pub) * f.count
            + struct.pack(">I", f.enclen)
            + f.section
        )


def _sk_file(kind: str, section_edit: Callable[[bytes], bytes] | None = None) -> bytes:
    data = SoftSK(kind).private_key_file()
    if section_edit is None:
        return data
    fields = V1.parse(data)
    section = section_edit(fields.section)
    return fields.build(section=section, enclen=len(section))


def _sk_comment(section: bytes, comment: bytes) -> bytes:
    """An ``sk-ssh-ed25519`` private section with another comment, padded again."""
    r = WireReader(section)
    head = r.raw(8) + b"".join(_s(r.string()) for _ in range(3)) + r.raw(1)
    head += _s(r.string()) + _s(r.string())  # key handle, reserved
    body = head + _s(comment)
    return body + bytes(range(1, 1 + (-len(body)) % 8))


def _der_tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    size = (
        bytes([n])
        if n < 128
        else bytes([0x80 | ((n.bit_length() + 7) // 8)])
        + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + size + value


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    items, at = [], 0
    while at < len(data):
        tag, n = data[at], data[at + 1]
        at += 2
        if n & 0x80:
            width = n & 0x7F
            n = int.from_bytes(data[at : at + width], "big")
            at += width
        items.append((tag, data[at : at + n]))
        at += n
    return items


def _extra_alg_element(pem: bytes) -> bytes:
    """An ``ENCRYPTED PRIVATE KEY`` block whose AlgorithmIdentifier has a third element:
    OpenSSL cannot parse it, so it skips the block."""
    lines = pem.decode().strip().splitlines()
    ((_, outer),) = _der_items(base64.b64decode("".join(lines[1:-1])))
    (_, alg), (_, octets) = _der_items(outer)
    alg += _der_tlv(0x05, b"")
    der = _der_tlv(0x30, _der_tlv(0x30, alg) + _der_tlv(0x04, octets))
    body = base64.b64encode(der).decode()
    wrapped = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"{lines[0]}\n{wrapped}\n{lines[-1]}\n".encode()


def _build_corpus(d: Path) -> dict[str, Path]:
    """Write every DIFFERENTIAL sample into ``d`` with ssh-keygen, openssl and edits."""
    out: dict[str, Path] = {}

    def keygen(name: str, *args: str, pw: str = PASS) -> Path:
        _run(SSH_KEYGEN, "-q", "-C", "", "-N", pw, "-f", str(d / name), *args)
        out[name] = d / name
        return d / name

    def openssl(name: str, *args: str) -> Path:
        _run("openssl", *args, "-out", str(d / name))
        out[name] = d / name
        return d / name

    def write(name: str, data: bytes) -> None:
        (d / name).write_bytes(data)
        out[name] = d / name

    # One bcrypt round keeps this fast; the verdict does not depend on the count.
    fast = ("-a", "1")
    for cipher in OPENSSH_92_CIPHERS:
        # key check itself wants 16+ rounds: keep them on the two AEAD ciphers it is run on.
        aead = cipher in ("aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com")
        rounds = () if aead else fast
        keygen(f"v1-{cipher}", "-t", "ed25519", "-Z", cipher, *rounds)
    clear = keygen("v1-clear", "-t", "ed25519", pw="")
    for bits in (256, 384, 521):
        keygen(f"v1-ecdsa{bits}", "-t", "ecdsa", "-b", str(bits), *fast)

    def convert(source: Path, name: str, *fmt: str) -> None:
        """Rewrite a copy with ssh-keygen -p (openssh-key-v1 unless -m is given)."""
        (d / name).write_bytes(source.read_bytes())
        (d / name).chmod(0o600)
        _run(SSH_KEYGEN, "-q", "-p", "-P", PASS, "-N", PASS, *fast, *fmt, "-f", str(d / name))
        out[name] = d / name

    try:
        dsa = keygen("pem-dsa", "-t", "dsa", "-m", "PEM")
    except subprocess.CalledProcessError:
        pass  # OpenSSH 10 no longer generates DSA keys; those two samples are skipped
    else:
        convert(dsa, "v1-dsa")
    write("v1-sk-ed25519", _sk_file("sk-ssh-ed25519@openssh.com"))
    write("v1-sk-ecdsa", _sk_file("sk-ecdsa-sha2-nistp256@openssh.com"))
    rsa_pem = keygen("pem-rsa", "-t", "rsa", "-b", "2048", "-m", "PEM")
    convert(rsa_pem, "v1-rsa2048")
    convert(rsa_pem, "pkcs8-rsa", "-m", "PKCS8")
    # ssh-keygen has no PEM form for Ed25519: -m PEM still writes openssh-key-v1.
    keygen("pem-ed25519", "-t", "ed25519", "-m", "PEM", *fast)
    inrsa = ("-in", str(rsa_pem), "-passin", f"pass:{PASS}")
    openssl("pem-rsa-clear", "rsa", *inrsa, "-traditional")
    topk8_rsa = ("pkcs8", "-topk8", *inrsa, "-v2", "aes-256-cbc", "-passout", f"pass:{PASS}")
    openssl("pkcs8-rsa-aes256", *topk8_rsa)
    openssl("ossl-rsa-aes256", "rsa", *inrsa, "-traditional", "-aes256", "-passout", f"pass:{PASS}")
    keygen("pem-ecdsa384", "-t", "ecdsa", "-b", "384", "-m", "PEM")
    keygen("pem-ecdsa384-clear", "-t", "ecdsa", "-b", "384", "-m", "PEM", pw="")
    keygen("pkcs8-ecdsa521", "-t", "ecdsa", "-b", "521", "-m", "PKCS8")
    keygen("pkcs8-ecdsa256-clear", "-t", "ecdsa", "-b", "256", "-m", "PKCS8", pw="")

    genkey = openssl("ossl-ecparam-genkey", "ecparam", "-name", "prime256v1", "-genkey")
    enc = ("-passout", f"pass:{PASS}")
    legacy = openssl("ossl-ec-aes256", "ec", "-in", str(genkey), "-aes256", *enc)
    openssl("ossl-ec-des3", "ec", "-in", str(genkey), "-des3", *enc)
    openssl("ossl-ec-camellia128", "ec", "-in", str(genkey), "-camellia128", *enc)
    params = openssl("ossl-params-only", "ecparam", "-name", "prime256v1")
    write("ossl-ecparam-then-aes256", params.read_bytes() + legacy.read_bytes())
    p256 = ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
    p8 = openssl("ossl-genpkey-ec", "genpkey", *p256)
    topk8 = ("pkcs8", "-topk8", "-in", str(p8), *enc)
    p8enc = openssl("ossl-pkcs8-aes256", *topk8, "-v2", "aes-256-cbc")
    openssl("ossl-pkcs8-scrypt", *topk8, "-v2", "aes-256-cbc", "-scrypt")
    openssl("ossl-pkcs8-des3", *topk8, "-v2", "des3")
    openssl("ossl-pkcs8-sha512-prf", *topk8, "-v2", "aes-256-cbc", "-v2prf", "hmacWithSHA512")
    openssl("ossl-pkcs8-pbe-sha1-3des", *topk8, "-v1", "PBE-SHA1-3DES")
    cert = openssl("cert", "req", "-x509", "-key", str(p8), "-subj", "/CN=keyward-test")
    write("ossl-cert-then-key", cert.read_bytes() + p8enc.read_bytes())
    write("ossl-encrypted-then-clear", p8enc.read_bytes() + p8.read_bytes())
    write("ossl-clear-then-encrypted", p8.read_bytes() + p8enc.read_bytes())
    # Blocks OpenSSL skips, each followed by a clear key that OpenSSH then loads.
    rsa_clear = out["pem-rsa-clear"].read_bytes()
    legacy_rsa = out["ossl-rsa-aes256"].read_bytes()
    write("ossl-space-before-encrypted-then-clear", b" " + legacy_rsa + rsa_clear)
    first_line = rsa_clear.index(b"\n")
    spaced = rsa_clear[:first_line] + b" " + rsa_clear[first_line:]
    write("ossl-clear-begin-trailing-space-then-encrypted", spaced + legacy_rsa)
    write(
        "ossl-pkcs8-extra-alg-element-then-clear",
        _extra_alg_element(p8enc.read_bytes()) + p8.read_bytes(),
    )
    proc_type = legacy_rsa.replace(b"Proc-Type: 4,ENCRYPTED", b"Proc-Type: 4 , ENCRYPTED")
    write("ossl-proc-type-spaced-then-clear", proc_type + rsa_clear)
    nul_comment = _sk_file("sk-ssh-ed25519@openssh.com", lambda sec: _sk_comment(sec, b"a\0b"))
    write("v1-sk-nul-comment-then-clear-pem", nul_comment + rsa_clear)
    ed = openssl("ossl-ed25519", "genpkey", "-algorithm", "ed25519")
    openssl("ossl-ed25519-aes256", "pkcs8", "-topk8", "-in", str(ed), *enc, "-v2", "aes-256-cbc")
    openssl("ossl-ed448", "genpkey", "-algorithm", "ed448")
    k1 = openssl("ossl-secp256k1", "ecparam", "-name", "secp256k1", "-genkey")
    k1enc = openssl("k1-aes256", "ec", "-in", str(k1), "-aes256", *enc)
    k1params = openssl("k1-params", "ecparam", "-name", "secp256k1")
    write("ossl-secp256k1-params-then-aes256", k1params.read_bytes() + k1enc.read_bytes())

    ctr = out["v1-aes256-ctr"].read_bytes()
    write("v1-leading-newline", b"\n" + ctr)
    write("v1-crlf", ctr.replace(b"\n", b"\r\n"))
    write("v1-no-final-newline", ctr.rstrip(b"\n"))
    write("v1-trailing-text", ctr + b"this file was copied from a wiki page\n")
    gcm = V1.parse(out["v1-aes256-gcm@openssh.com"].read_bytes())
    chacha = V1.parse(out["v1-chacha20-poly1305@openssh.com"].read_bytes())
    v1 = V1.parse(ctr)
    write("v1-gcm-without-tag", gcm.build(section=gcm.section[:-16]))
    write("v1-chacha-short-tag", chacha.build(section=chacha.section[:-1]))
    write("v1-ctr-with-tag", v1.build(section=v1.section + bytes(16)))
    write("v1-unknown-cipher", v1.build(cipher=b"aes256-xts"))
    write("v1-unknown-kdf", v1.build(kdf=b"argon2"))
    write("v1-cipher-without-kdf", v1.build(kdf=b"none", kdfopts=b""))
    write("v1-two-keys", v1.build(count=2))
    write("v1-partial-block", v1.build(section=v1.section[:-8], enclen=v1.enclen - 8))
    write("v1-kdf-options-extra", v1.build(kdfopts=v1.kdfopts + bytes(4)))
    bcrypt = _s(bytes(range(16))) + struct.pack(">I", 16)
    write("v1-clear-but-bcrypt", V1.parse(clear.read_bytes()).build(kdf=b"bcrypt", kdfopts=bcrypt))
    kind = "sk-ssh-ed25519@openssh.com"
    write("v1-sk-bad-padding", _sk_file(kind, lambda s: s[:-1] + b"\x09"))
    write("v1-sk-checkint-mismatch", _sk_file(kind, lambda s: s[:4] + bytes(4) + s[8:]))
    other = SoftSK(kind).blob
    write("v1-sk-other-public-key", _sk_file(kind, lambda s: s[:8] + other + s[8 + len(other) :]))
    for path in out.values():
        path.chmod(0o600)  # ssh-keygen refuses a private key others can read
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _build_corpus(tmp_path_factory.mktemp("differential"))


def _loads(path: Path, passphrase: str) -> bool:
    cmd = [SSH_KEYGEN, "-y", "-P", passphrase, "-f", str(path)]
    return subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL).returncode == 0


def _openssh_verdict(path: Path) -> str:
    """clear: loads without the passphrase (or with any); protected: only with it."""
    if _loads(path, ""):
        return "clear"
    if _loads(path, PASS):
        return "clear" if _loads(path, WRONG) else "protected"
    return "refuse"


def _keyward_verdict(data: bytes) -> str:
    try:
        report = inspect_private_key(data)
    except KeyPolicyError as exc:
        _assert_no_secret(str(exc), data)
        return "refuse"
    return "protected" if report.encrypted else "clear"


@pytest.mark.parametrize(("name", "expected"), DIFFERENTIAL.items())
def test_verdict_agrees_with_openssh(corpus: dict[str, Path], name: str, expected: str) -> None:
    if name not in corpus:
        pytest.skip("local ssh-keygen no longer generates DSA keys")
    path = corpus[name]
    openssh = FAIL_CLOSED.get(name, expected)
    assert _openssh_verdict(path) == openssh, f"OpenSSH itself disagrees about {name}"
    assert _keyward_verdict(path.read_bytes()) == expected


def test_cipher_table_covers_local_openssh() -> None:
    listed = subprocess.run(["ssh", "-Q", "cipher"], capture_output=True, text=True, check=True)
    assert set(listed.stdout.split()) <= set(OPENSSH_CIPHERS)
    assert set(OPENSSH_92_CIPHERS) <= set(OPENSSH_CIPHERS)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("v1-gcm-without-tag", "aes256-gcm@openssh.com needs .* and a 16-byte tag"),
        ("v1-unknown-cipher", "unknown cipher 'aes256-xts'"),
        ("v1-leading-newline", "must start with -----BEGIN OPENSSH PRIVATE KEY-----"),
        ("ossl-ed25519", "cannot load Ed25519 keys in PKCS#8"),
        ("ossl-ed25519-aes256", "too short for an RSA, ECDSA or DSA key"),
        ("ossl-secp256k1", "curve secp256k1"),
        ("v1-sk-bad-padding", "malformed OpenSSH private key: bad padding"),
    ],
)
def test_refusal_reasons(corpus: dict[str, Path], name: str, reason: str) -> None:
    with pytest.raises(KeyPolicyError, match=reason):
        inspect_private_key(corpus[name].read_bytes())


@pytest.mark.parametrize(
    ("name", "cipher", "kdf"),
    [
        ("v1-aes256-gcm@openssh.com", "aes256-gcm@openssh.com", "bcrypt"),
        ("v1-chacha20-poly1305@openssh.com", "chacha20-poly1305@openssh.com", "bcrypt"),
        ("ossl-ecparam-then-aes256", "AES-256-CBC", "md5"),
        ("ossl-pkcs8-scrypt", "aes-256-cbc", "scrypt"),
        ("ossl-pkcs8-pbe-sha1-3des", "des-ede3-cbc", "pkcs12-sha1"),
    ],
)
def test_check_reports_cipher(corpus: dict[str, Path], name: str, cipher: str, kdf: str) -> None:
    report = check_private_key(corpus[name].read_bytes(), DEFAULT_POLICY)
    assert (report.encrypted, report.cipher, report.kdf) == (True, cipher, kdf)


def test_ecparam_genkey_refused_as_clear_not_unsupported(corpus: dict[str, Path]) -> None:
    with pytest.raises(KeyPolicyError, match="not protected by a passphrase"):
        check_private_key(corpus["ossl-ecparam-genkey"].read_bytes(), DEFAULT_POLICY)


def test_pem_with_ed25519_pub_refused(corpus: dict[str, Path]) -> None:
    hint = parse_public_key((corpus["v1-clear"].with_name("v1-clear.pub")).read_text())
    with pytest.raises(KeyPolicyError, match="cannot load ssh-ed25519 keys from a PKCS8 file"):
        check_private_key(corpus["ossl-pkcs8-aes256"].read_bytes(), DEFAULT_POLICY, hint)


def test_key_check_cli_accepts_gcm(corpus: dict[str, Path], tmp_path: Path) -> None:
    kw = Keyward(f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "no-inventory"))
    kw.ok("init")
    report = kw.ok("key", "check", str(corpus["v1-aes256-gcm@openssh.com"]), "--json").json()
    assert (report["encrypted"], report["cipher"]) == (True, "aes256-gcm@openssh.com")
    refused = kw.fails("key", "check", str(corpus["v1-gcm-without-tag"]))
    assert "16-byte tag" in refused.err
