"""Real keys for tests, made with the local OpenSSH ``ssh-keygen``.

Tests check keyward against what OpenSSH itself produces and accepts, so keys,
fingerprints and signatures come from ``ssh-keygen`` wherever it can make
them.  FIDO (sk) keys need a hardware token, so ``SoftSK`` builds sk-format
public keys and signatures from a software key, byte for byte as a token
would, which lets the sk code paths be tested without one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

SSH_KEYGEN = "ssh-keygen"


def _s(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _mpint(value: int) -> bytes:
    return _s(value.to_bytes((value.bit_length() + 8) // 8, "big") if value else b"")


def make_key(
    directory: Path,
    key_type: str,
    bits: int | None = None,
    passphrase: str = "",
    fmt: str | None = None,
    comment: str = "",
    rounds: int | None = None,
    name: str | None = None,
) -> tuple[Path, Path]:
    """Generate a key with ssh-keygen; returns (private_path, public_path).

    ``key_type`` is ssh-keygen's ``-t`` (ed25519, ecdsa, rsa, dsa), ``fmt``
    its ``-m`` (PEM, PKCS8, RFC4716) and ``rounds`` its ``-a``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    stem = name or f"{key_type}{bits or ''}{'-' + fmt if fmt else ''}{'-enc' if passphrase else ''}"
    path = directory / stem
    for p in (path, path.with_name(stem + ".pub")):
        if p.exists():
            p.unlink()
    cmd = [SSH_KEYGEN, "-q", "-t", key_type, "-N", passphrase, "-C", comment, "-f", str(path)]
    if bits is not None:
        cmd += ["-b", str(bits)]
    if fmt is not None:
        cmd += ["-m", fmt]
    if rounds is not None:
        cmd += ["-a", str(rounds)]
    done = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    if done.returncode:
        # Keep ssh-keygen's reason (e.g. PEM needs a passphrase of 5+ characters).
        raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
    return path, path.with_name(stem + ".pub")


def dsa_supported(directory: Path) -> bool:
    """True if the local ssh-keygen still generates DSA keys."""
    try:
        make_key(directory, "dsa", name="dsa-probe")
    except subprocess.CalledProcessError:
        return False
    return True


def keygen_fingerprint(public_path: Path) -> str:
    """The ``SHA256:...`` fingerprint ``ssh-keygen -lf`` prints for a key file."""
    out = subprocess.run(
        [SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(public_path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[1]


def keygen_bits(public_path: Path) -> int:
    """The key size ``ssh-keygen -lf`` prints."""
    out = subprocess.run(
        [SSH_KEYGEN, "-l", "-f", str(public_path)], check=True, capture_output=True, text=True
    ).stdout
    return int(out.split()[0])


def ssh_sign(
    key_path: Path, message: bytes, namespace: str = "keyward", passphrase: str = ""
) -> bytes:
    """Sign ``message`` with ``ssh-keygen -Y sign``; returns the armored signature."""
    msg_path = key_path.with_name(key_path.name + ".msg")
    msg_path.write_bytes(message)
    sig_path = msg_path.with_name(msg_path.name + ".sig")
    if sig_path.exists():
        sig_path.unlink()
    cmd = [SSH_KEYGEN, "-Y", "sign", "-n", namespace, "-f", str(key_path)]
    if passphrase:
        cmd += ["-P", passphrase]
    subprocess.run([*cmd, str(msg_path)], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return sig_path.read_bytes()


def ssh_verify(
    directory: Path,
    public_line: str,
    signature: bytes,
    message: bytes,
    namespace: str = "keyward",
    identity: str = "alice@example.com",
) -> subprocess.CompletedProcess[bytes]:
    """Run ``ssh-keygen -Y verify`` with a one-entry allowed_signers file."""
    allowed = directory / "allowed_signers"
    allowed.write_text(f"{identity} {public_line}\n")
    sig = directory / "verify.sig"
    sig.write_bytes(signature)
    cmd = [SSH_KEYGEN, "-Y", "verify", "-f", str(allowed), "-I", identity, "-n", namespace]
    return subprocess.run(
        [*cmd, "-s", str(sig)],
        input=message,
        capture_output=True,
        check=False,
    )


def ssh_check_novalidate(
    directory: Path, signature: bytes, message: bytes, namespace: str = "keyward"
) -> subprocess.CompletedProcess[bytes]:
    """Run ``ssh-keygen -Y check-novalidate`` (signature valid, signer not checked)."""
    sig = directory / "novalidate.sig"
    sig.write_bytes(signature)
    return subprocess.run(
        [SSH_KEYGEN, "-Y", "check-novalidate", "-n", namespace, "-s", str(sig)],
        input=message,
        capture_output=True,
        check=False,
    )


@dataclass
class SoftSK:
    """A software stand-in for a FIDO security key, in OpenSSH's sk formats.

    ``kind`` is ``sk-ssh-ed25519@openssh.com`` or
    ``sk-ecdsa-sha2-nistp256@openssh.com``.
    """

    kind: str = "sk-ssh-ed25519@openssh.com"
    application: str = "ssh:"

    def __post_init__(self) -> None:
        self._ed: ed25519.Ed25519PrivateKey | None = None
        self._ec: ec.EllipticCurvePrivateKey | None = None
        if self.kind == "sk-ssh-ed25519@openssh.com":
            self._ed = ed25519.Ed25519PrivateKey.generate()
            pub = self._ed.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            self.blob = _s(self.kind.encode()) + _s(pub) + _s(self.application.encode())
        else:
            self._ec = ec.generate_private_key(ec.SECP256R1())
            point = self._ec.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            self.blob = (
                _s(self.kind.encode()) + _s(b"nistp256") + _s(point) + _s(self.application.encode())
            )

    @property
    def public_line(self) -> str:
        """``type base64`` as ssh-keygen would write the .pub file."""
        return f"{self.kind} {base64.b64encode(self.blob).decode()}"

    def sign(self, data: bytes, flags: int = 0x01, counter: int = 7) -> bytes:
        """An SSH signature blob over ``data`` in the sk format a token returns."""
        signed = (
            hashlib.sha256(self.application.encode()).digest()
            + struct.pack(">BI", flags, counter)
            + hashlib.sha256(data).digest()
        )
        if self._ed is not None:
            raw = self._ed.sign(signed)
        else:
            assert self._ec is not None
            r, s = decode_dss_signature(self._ec.sign(signed, ec.ECDSA(hashes.SHA256())))
            raw = _mpint(r) + _mpint(s)
        return _s(self.kind.encode()) + _s(raw) + struct.pack(">BI", flags, counter)

    def sshsig(
        self,
        message: bytes,
        namespace: str = "keyward",
        flags: int = 0x01,
        hash_alg: str = "sha512",
    ) -> bytes:
        """An armored SSHSIG signature over ``message`` by this key."""
        digest = hashlib.new(hash_alg, message).digest()
        to_sign = b"SSHSIG" + _s(namespace.encode()) + _s(b"") + _s(hash_alg.encode()) + _s(digest)
        blob = (
            b"SSHSIG"
            + struct.pack(">I", 1)
            + _s(self.blob)
            + _s(namespace.encode())
            + _s(b"")
            + _s(hash_alg.encode())
            + _s(self.sign(to_sign, flags=flags))
        )
        body = base64.b64encode(blob).decode()
        lines = [body[i : i + 70] for i in range(0, len(body), 70)]
        text = "-----BEGIN SSH SIGNATURE-----\n" + "\n".join(lines)
        return (text + "\n-----END SSH SIGNATURE-----\n").encode()

    def webauthn_sshsig(
        self, message: bytes, origin: str = "https://keyward.example", namespace: str = "keyward"
    ) -> bytes:
        """An armored SSHSIG whose signature is in the WebAuthn form a browser produces.

        ``webauthn-sk-ecdsa-sha2-nistp256@openssh.com``: after flags and
        counter come the origin, the clientData JSON (whose challenge is the
        signed data) and the extensions; the token signs
        H(application) || flags || counter || extensions || H(clientData)
        (ssh-ecdsa-sk.c).  Only sk-ecdsa keys sign this way.
        """
        assert self._ec is not None, "webauthn signatures are ECDSA only"
        hash_alg = "sha512"
        digest = hashlib.new(hash_alg, message).digest()
        data = b"SSHSIG" + _s(namespace.encode()) + _s(b"") + _s(hash_alg.encode()) + _s(digest)
        challenge = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        client_data = (
            f'{{"type":"webauthn.get","challenge":"{challenge}","origin":"{origin}"}}'
        ).encode()
        flags, counter = 0x01, 9
        signed = (
            hashlib.sha256(self.application.encode()).digest()
            + struct.pack(">BI", flags, counter)
            + hashlib.sha256(client_data).digest()
        )
        r, s = decode_dss_signature(self._ec.sign(signed, ec.ECDSA(hashes.SHA256())))
        sig = (
            _s(b"webauthn-sk-ecdsa-sha2-nistp256@openssh.com")
            + _s(_mpint(r) + _mpint(s))
            + struct.pack(">BI", flags, counter)
            + _s(origin.encode())
            + _s(client_data)
            + _s(b"")  # extensions
        )
        blob = (
            b"SSHSIG"
            + struct.pack(">I", 1)
            + _s(self.blob)
            + _s(namespace.encode())
            + _s(b"")
            + _s(hash_alg.encode())
            + _s(sig)
        )
        body = base64.b64encode(blob).decode()
        lines = [body[i : i + 70] for i in range(0, len(body), 70)]
        text = "-----BEGIN SSH SIGNATURE-----\n" + "\n".join(lines)
        return (text + "\n-----END SSH SIGNATURE-----\n").encode()

    def private_key_file(self, comment: str = "sk test") -> bytes:
        """An unencrypted openssh-key-v1 file as ssh-keygen -t ed25519-sk writes it.

        The private section holds a random "key handle", as on a real token:
        the secret itself would stay on the hardware.
        """
        checkint = os.urandom(4)
        private = checkint + checkint + self.blob + bytes([0x01])  # flags: user presence
        private += _s(os.urandom(32)) + _s(b"") + _s(comment.encode())
        pad = 1
        while len(private) % 8:
            private += bytes([pad])
            pad += 1
        raw = (
            b"openssh-key-v1\0"
            + _s(b"none")
            + _s(b"none")
            + _s(b"")
            + struct.pack(">I", 1)
            + _s(self.blob)
            + _s(private)
        )
        body = base64.b64encode(raw).decode()
        lines = [body[i : i + 70] for i in range(0, len(body), 70)]
        text = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(lines)
        return (text + "\n-----END OPENSSH PRIVATE KEY-----\n").encode()
