"""A new key as ``key add`` and ``key rotate`` take it in: the key, its expiry, its claim.

The CLI (database path) and ``keyward server`` both go through here, so a key added
either way passes the same policy, gets the same expiry and needs the same proof.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from keyward.errors import UsageError
from keyward.keys import KeyPolicy, PublicKey, from_pub_file, parse_public_key
from keyward.registry.ops import KeyClaim


def parse_new_key(text: str, policy: KeyPolicy) -> PublicKey:
    """The public key of a ``.pub`` file's text, checked against ``policy``."""
    return parse_public_key(from_pub_file(text), policy)


def expiry(now: datetime, policy: KeyPolicy, requested: datetime | None) -> datetime:
    """The policy's longest life, or the earlier end of day asked for (never later)."""
    latest = now + timedelta(days=policy.max_key_age_days)
    if requested is None:
        return latest
    if requested > latest + timedelta(days=1):
        raise UsageError(
            f"--expires is later than the policy allows ({policy.max_key_age_days} days)"
        )
    return min(requested, latest)


def claim(
    username: str,
    public: PublicKey,
    policy: KeyPolicy,
    now: datetime,
    expires_at: datetime,
    proof: bytes | None,
    attest: str | None,
    voucher: str,
) -> KeyClaim:
    """What we can honestly say about a new key: a verified proof, a voucher, or nothing.

    ``voucher`` is who vouches for an ``attest`` claim (the actor).
    """
    from keyward.sshsig import verify_proof

    if proof and attest:
        raise UsageError("give either --proof or --attest, not both")
    if proof:
        signed = verify_proof(proof, username, public, now.date(), policy.proof_max_age_days)
        return KeyClaim("proof", expires_at, proof_date=signed.isoformat())
    if attest:
        if attest not in ("admin", "sk"):
            raise UsageError("attest must be 'admin' or 'sk'")
        return KeyClaim(attest, expires_at, attested_by=voucher)
    return KeyClaim("none", expires_at)
