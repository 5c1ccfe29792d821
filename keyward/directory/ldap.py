"""Reading the directory with ldap3: one bind, one paged subtree search.

ldap3 is a well-kept pure-Python LDAP client (no C library, no system OpenLDAP
client needed). The search is paged (RFC 2696) so a directory of tens of
thousands of people is read in pages of ``page_size``; any page that does not
end in success marks the result incomplete rather than short, so the guard sees
a partial answer for what it is.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from keyward.directory.entries import Values, collect
from keyward.directory.model import DirectoryRead
from keyward.errors import DirectoryError
from keyward.inventory.directory_settings import DirectorySettings

PAGED_RESULTS = "1.2.840.113556.1.4.319"
SUCCESS = 0


def bind_password(settings: DirectorySettings, environ: Mapping[str, str]) -> str | None:
    """The bind password from ``password_file`` or ``password_env``; None for anonymous."""
    if settings.password_file is not None:
        try:
            text = settings.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise DirectoryError(
                f"cannot read the directory password file {settings.password_file}: {exc.strerror}"
            ) from None
        return text.rstrip("\r\n")
    if settings.password_env is not None:
        value = environ.get(settings.password_env)
        if not value:
            raise DirectoryError(
                f"the directory password variable {settings.password_env} is not set"
            )
        return value
    return None


def _attributes(settings: DirectorySettings) -> list[str]:
    mapping = settings.attributes
    names = [mapping.username, mapping.name, mapping.email, mapping.groups]
    if mapping.disabled:
        names.append(mapping.disabled)
    return list(dict.fromkeys(names))


def _seconds(timeout: float) -> int:
    """ldap3 packs its socket timeouts as whole seconds."""
    return max(1, math.ceil(timeout))


def _connection(settings: DirectorySettings, password: str | None) -> Any:
    import ldap3
    from ldap3.core.exceptions import LDAPException

    parts = urlsplit(settings.url)
    secure = parts.scheme.lower() == "ldaps"
    tls = None
    if secure or settings.starttls:
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED,
            version=ssl.PROTOCOL_TLS_CLIENT,
            ca_certs_file=str(settings.ca_file) if settings.ca_file else None,
        )
    server = ldap3.Server(
        parts.hostname or "",
        port=parts.port or (636 if secure else 389),
        use_ssl=secure,
        tls=tls,
        get_info=ldap3.NONE,
        connect_timeout=_seconds(settings.timeout),
    )
    conn = ldap3.Connection(
        server,
        user=settings.bind_dn,
        password=password,
        read_only=True,
        raise_exceptions=False,
        receive_timeout=_seconds(settings.timeout),
        auto_referrals=False,
    )
    try:
        conn.open()
        if settings.starttls and not conn.start_tls():
            raise DirectoryError(f"StartTLS with {settings.url} failed: {conn.result}")
        if not conn.bind():
            description = conn.result.get("description") if conn.result else "no answer"
            raise DirectoryError(
                f"bind to {settings.url} as {settings.bind_dn} refused: {description}"
            )
    except (LDAPException, OSError) as exc:
        raise DirectoryError(f"cannot reach the directory {settings.url}: {exc}") from None
    return conn


def read_directory(settings: DirectorySettings, environ: Mapping[str, str]) -> DirectoryRead:
    """Every entry under ``base_dn`` matching ``filter``.

    A failure before the first entry (unreachable server, refused bind, no such
    base DN) is a ``DirectoryRead`` with ``error``; a failure after it one with
    ``complete=False`` and the entries read so far.
    """
    from ldap3.core.exceptions import LDAPException

    try:
        conn = _connection(settings, bind_password(settings, environ))
    except DirectoryError as exc:
        return DirectoryRead(base_dn=settings.base_dn, error=exc.message)
    found: list[tuple[str, Mapping[str, Values]]] = []
    complete = True
    error: str | None = None
    cookie: bytes | None = None
    try:
        while True:
            conn.search(
                settings.base_dn,
                settings.filter,
                attributes=_attributes(settings),
                paged_size=settings.page_size,
                paged_cookie=cookie,
            )
            result = conn.result or {}
            for item in conn.response or ():
                if item.get("type") == "searchResEntry":
                    found.append((item["dn"], item["raw_attributes"]))
            if result.get("result") != SUCCESS:
                why = f"{result.get('description')} ({result.get('message') or 'no message'})"
                if found:
                    complete = False
                else:
                    error = why
                break
            cookie = (
                result.get("controls", {}).get(PAGED_RESULTS, {}).get("value", {}).get("cookie")
            )
            if not cookie:
                break
    except LDAPException as exc:
        if found:
            complete = False
        else:
            error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.unbind()
    if error is not None:
        return DirectoryRead(base_dn=settings.base_dn, error=error)
    return collect(settings.base_dn, found, settings.attributes, complete=complete)
