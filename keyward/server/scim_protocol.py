"""What keyward's SCIM service is, in scim2-models' terms, and the identity provider's token.

The schemas, resource types and capabilities the discovery endpoints publish all come
from one ``ScimProvider`` built from scim2-models' own ``User`` (with the enterprise
extension Entra ID and Okta send) and ``Group``, so what is announced and what is
parsed cannot drift apart.  No schema is written by hand here.

The token is compared as a SHA-256 digest in constant time (``hmac.compare_digest``);
the server keeps only the digest.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    EnterpriseUser,
    ETag,
    Filter,
    Group,
    Patch,
    ResourceType,
    ScimProvider,
    ServiceProviderConfig,
    Sort,
    User,
)

from keyward.errors import UsageError
from keyward.registry.scim_store import UserFacts
from keyward.registry.validate import USERNAME_RE

MAX_RESULTS = 200
MIN_TOKEN = 32
UserModel: Any = User[EnterpriseUser]
"""The user resource: the core schema with the enterprise extension (optional)."""
MODELS: dict[str, Any] = {"Users": UserModel, "Groups": Group}
KINDS = {"Users": "User", "Groups": "Group"}


def build_provider() -> ScimProvider:
    """The service: users and groups, PATCH, filters, sorting, ETags; no bulk, no passwords."""
    return ScimProvider(
        models=[User, EnterpriseUser, Group],
        resource_types=[
            ResourceType.from_resource(UserModel),
            ResourceType.from_resource(Group),
        ],
        config=ServiceProviderConfig(
            patch=Patch(supported=True),
            bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
            filter=Filter(supported=True, max_results=MAX_RESULTS),
            change_password=ChangePassword(supported=False),
            sort=Sort(supported=True),
            etag=ETag(supported=True),
            authentication_schemes=[
                AuthenticationScheme(
                    type=AuthenticationScheme.Type.oauthbearertoken,
                    name="Bearer token",
                    description="The token in [scim] token_file of keyward.toml",
                    primary=True,
                )
            ],
        ),
    )


@dataclass(frozen=True)
class ScimToken:
    """The identity provider's bearer token, as its SHA-256 digest."""

    digest: bytes

    @classmethod
    def load(cls, path: Path) -> ScimToken:
        """Read ``path``: the token itself, or ``sha256:<hex>`` of it; owner-only."""
        try:
            info = path.stat()
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"[scim] token_file {path}: cannot read it ({exc})") from None
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(
                f"[scim] token_file {path} is readable by others; chmod 600 it (owner only)"
            )
        if info.st_uid not in (os.geteuid(), 0):
            raise UsageError(f"[scim] token_file {path} must be owned by root or this user")
        if text.startswith("sha256:"):
            try:
                digest = bytes.fromhex(text.removeprefix("sha256:"))
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise UsageError(f"[scim] token_file {path}: sha256: needs 64 hex digits")
            return cls(digest)
        if len(text) < MIN_TOKEN or any(ch.isspace() for ch in text):
            raise UsageError(
                f"[scim] token_file {path}: the token must be at least {MIN_TOKEN} characters "
                "without spaces (e.g. openssl rand -hex 32)"
            )
        return cls(hashlib.sha256(text.encode()).digest())

    def matches(self, presented: str) -> bool:
        """Constant time in the token's content."""
        candidate = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
        return hmac.compare_digest(candidate, self.digest)


def username_of(user_name: str) -> str | None:
    """The keyward username of a SCIM ``userName``: lower-cased, without ``@domain``.

    Okta and Entra ID send the sign-in name (``alice@example.com``); keyward's
    usernames are POSIX login names.  None when the result is not one.
    """
    local = user_name.strip().lower().partition("@")[0]
    return local if USERNAME_RE.fullmatch(local) else None


def facts_of(user: Any) -> UserFacts:
    """The four facts keyward acts on, from a validated SCIM user."""
    name = user.name
    full_name = None
    if name is not None:
        full_name = name.formatted or " ".join(
            part for part in (name.given_name, name.family_name) if part
        )
    full_name = (full_name or user.display_name or "").strip() or None
    emails = list(user.emails or [])
    primary = next((e for e in emails if e.primary), emails[0] if emails else None)
    return UserFacts(
        user_name=user.user_name or "",
        username=username_of(user.user_name or ""),
        full_name=full_name,
        email=str(primary.value) if primary is not None and primary.value else None,
        active=user.active is not False,
    )
