"""The client's side: sign API requests with the person's own key, through OpenSSH.

Signing goes through ``ssh-keygen -Y sign``, the tool people already use for SSHSIG
(git commit signing), rather than asyncssh's agent client or our own key loading:

- given a public key file (``KEYWARD_KEY=~/.ssh/id_ed25519.pub``) it signs through the
  person's ssh-agent (``SSH_AUTH_SOCK``), so the private key never enters keyward and a
  FIDO key asks for its touch the usual way;
- given a private key file it signs with that, asking for the passphrase itself;
- it supports every key type OpenSSH does, with no asyncssh import on the CLI's path
  (tests/test_startup.py keeps start-up fast).

One process per signature costs a few milliseconds, which is why ``keyward auth login``
trades one signature for a session token.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from keyward.auth.signing import NAMESPACE, canonical_text, format_timestamp, signature_headers
from keyward.errors import UsageError
from keyward.keys import PublicKey, looks_like_private_key, parse_public_key

SIGN_TIMEOUT = 60.0  # a FIDO key waits for a touch


@dataclass(frozen=True)
class KeySigner:
    """A key file to sign with and the public key the server will find in the registry."""

    key_file: Path
    public: PublicKey

    def sign(self, message: bytes) -> bytes:
        """An armored SSHSIG over ``message`` in the API namespace."""
        try:
            proc = subprocess.run(
                ["ssh-keygen", "-q", "-Y", "sign", "-n", NAMESPACE, "-f", str(self.key_file)],
                input=message,
                capture_output=True,
                timeout=SIGN_TIMEOUT,
                check=False,
            )
        except FileNotFoundError:
            raise UsageError("ssh-keygen (OpenSSH) is needed to sign requests") from None
        except subprocess.TimeoutExpired:
            raise UsageError("ssh-keygen did not sign within 60 s") from None
        if proc.returncode != 0 or b"-----BEGIN SSH SIGNATURE-----" not in proc.stdout:
            detail = " ".join(proc.stderr.decode(errors="replace").split())[:200]
            raise UsageError(f"cannot sign with {self.key_file}: {detail or 'ssh-keygen failed'}")
        return proc.stdout

    def headers(self, method: str, path_query: str, body: bytes, now: datetime) -> dict[str, str]:
        """The authentication headers for one request, with a fresh nonce."""
        timestamp = format_timestamp(now)
        nonce = secrets.token_urlsafe(24)
        fingerprint = self.public.fingerprint
        message = canonical_text(method, path_query, body, timestamp, nonce, fingerprint)
        return signature_headers(fingerprint, timestamp, nonce, self.sign(message))


def load_signer(path_text: str) -> KeySigner:
    """A signer for ``KEYWARD_KEY``: a public key file (agent) or a private key file."""
    path = Path(os.path.expanduser(path_text))
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the signing key {path}: {exc}") from None
    if looks_like_private_key(text):
        pub_path = path.with_name(path.name + ".pub")
        try:
            text = pub_path.read_text()
        except OSError:
            raise UsageError(
                f"{path} is a private key; its public half {pub_path} is needed beside it"
            ) from None
    return KeySigner(path, parse_public_key(text))
