"""Signed API requests, replay protection and session tokens (keyward.auth), table by table.

Keys and signatures come from the real ``ssh-keygen``; each refusal below is a check the
server relies on, and each row fails if that check is removed.
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyward.auth import nonces, signing, tokens
from keyward.auth.signer import load_signer
from keyward.errors import UsageError
from keyward.keys import parse_public_key
from tests.keygen import make_key, ssh_sign

NOW = datetime(2026, 12, 4, 10, 0, 0, tzinfo=UTC)
STAMP = "2026-12-04T10:00:00Z"
NONCE = "n" * 32


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("keys")
    alice, _ = make_key(directory, "ed25519", name="alice")
    bob, _ = make_key(directory, "ecdsa", name="bob")
    return {"alice": alice, "bob": bob}


def pub(path: Path) -> str:
    return path.with_name(path.name + ".pub").read_text()


def signed(
    key: Path, method: str = "POST", path: str = "/api/v1/x?a=1", body: bytes = b"{}"
) -> signing.SignedRequest:
    fingerprint = parse_public_key(pub(key)).fingerprint
    text = signing.canonical_text(method, path, body, STAMP, NONCE, fingerprint)
    armored = ssh_sign(key, text, namespace=signing.NAMESPACE)
    parsed = signing.parse_headers(signing.signature_headers(fingerprint, STAMP, NONCE, armored))
    assert parsed is not None
    return parsed


def test_a_genuine_request_verifies(keys: dict[str, Path]) -> None:
    request = signed(keys["alice"])
    signing.verify_request(
        request, parse_public_key(pub(keys["alice"])), "POST", "/api/v1/x?a=1", b"{}"
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/x?a=1", b"{}"),  # method changed
        ("POST", "/api/v1/y?a=1", b"{}"),  # path changed
        ("POST", "/api/v1/x?a=2", b"{}"),  # query changed
        ("POST", "/api/v1/x", b"{}"),  # query dropped
        ("POST", "/api/v1/x?a=1", b'{"role":"admin"}'),  # body changed
        ("POST", "/api/v1/x?a=1", b""),  # body dropped
    ],
)
def test_any_tampering_fails(keys: dict[str, Path], method: str, path: str, body: bytes) -> None:
    request = signed(keys["alice"])
    with pytest.raises(signing.AuthError, match="does not verify"):
        signing.verify_request(request, parse_public_key(pub(keys["alice"])), method, path, body)


def test_another_key_cannot_claim_the_signature(keys: dict[str, Path]) -> None:
    request = signed(keys["alice"])
    with pytest.raises(signing.AuthError, match="not the key named"):
        signing.verify_request(
            request, parse_public_key(pub(keys["bob"])), "POST", "/api/v1/x?a=1", b"{}"
        )


def test_a_signature_in_another_namespace_is_refused(keys: dict[str, Path]) -> None:
    key = parse_public_key(pub(keys["alice"]))
    text = signing.canonical_text("POST", "/p", b"", STAMP, NONCE, key.fingerprint)
    armored = ssh_sign(keys["alice"], text, namespace="git")  # e.g. a commit signature
    request = signing.SignedRequest(key.fingerprint, STAMP, NONCE, armored)
    with pytest.raises(signing.AuthError):
        signing.verify_request(request, key, "POST", "/p", b"")


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"x-keyward-key": "SHA256:" + "a" * 43}, "incomplete"),
        (
            {
                "x-keyward-key": "md5:aa",
                "x-keyward-timestamp": STAMP,
                "x-keyward-nonce": NONCE,
                "x-keyward-signature": "AA==",
            },
            "fingerprint",
        ),
        (
            {
                "x-keyward-key": "SHA256:" + "a" * 43,
                "x-keyward-timestamp": "2026-12-04 10:00:00",
                "x-keyward-nonce": NONCE,
                "x-keyward-signature": "AA==",
            },
            "timestamp",
        ),
        (
            {
                "x-keyward-key": "SHA256:" + "a" * 43,
                "x-keyward-timestamp": STAMP,
                "x-keyward-nonce": "short",
                "x-keyward-signature": "AA==",
            },
            "nonce",
        ),
        (
            {
                "x-keyward-key": "SHA256:" + "a" * 43,
                "x-keyward-timestamp": STAMP,
                "x-keyward-nonce": NONCE,
                "x-keyward-signature": "not base64!",
            },
            "base64",
        ),
    ],
)
def test_malformed_headers_are_refused(headers: dict[str, str], message: str) -> None:
    with pytest.raises(signing.AuthError, match=message):
        signing.parse_headers(headers)


def test_no_headers_is_anonymous() -> None:
    assert signing.parse_headers({"accept": "*/*"}) is None


@pytest.mark.parametrize(
    ("offset", "ok"),
    [(0, True), (300, True), (-300, True), (301, False), (-301, False), (86400, False)],
)
def test_timestamp_window(offset: int, ok: bool) -> None:
    stamp = signing.format_timestamp(NOW + timedelta(seconds=offset))
    if ok:
        signing.check_timestamp(stamp, NOW)
    else:
        with pytest.raises(signing.AuthError, match="300 s"):
            signing.check_timestamp(stamp, NOW)


def test_canonical_text_names_every_field() -> None:
    text = signing.canonical_text("POST", "/a?b=c", b"x", STAMP, NONCE, "SHA256:k").decode()
    assert text.splitlines() == [
        "keyward-api-v1",
        "method: POST",
        "path: /a?b=c",
        "body-sha256: 2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
        f"timestamp: {STAMP}",
        f"nonce: {NONCE}",
        "key: SHA256:k",
    ]


# -- nonces -------------------------------------------------------------------


def test_a_nonce_is_accepted_once() -> None:
    store = nonces.NonceStore()
    store.use("SHA256:a", NONCE, NOW)
    with pytest.raises(signing.AuthError, match="replayed"):
        store.use("SHA256:a", NONCE, NOW + timedelta(seconds=599))
    store.use("SHA256:b", NONCE, NOW)  # per key


def test_nonces_are_forgotten_only_after_the_timestamp_window() -> None:
    store = nonces.NonceStore()
    store.use("SHA256:a", NONCE, NOW)
    store.use("SHA256:a", "m" * 32, NOW + timedelta(seconds=601))
    assert len(store) == 1  # the first one expired: by now its timestamp refuses a replay


def test_a_full_store_refuses_rather_than_forgets() -> None:
    store = nonces.NonceStore(max_entries=1)
    store.use("SHA256:a", NONCE, NOW)
    with pytest.raises(signing.AuthError, match="too many"):
        store.use("SHA256:a", "m" * 32, NOW)
    with pytest.raises(signing.AuthError, match="replayed"):
        store.use("SHA256:a", NONCE, NOW)


# -- tokens -------------------------------------------------------------------

SECRET = b"s" * 32


def test_a_token_round_trips() -> None:
    token = tokens.issue(SECRET, "alice", "SHA256:k", NOW, timedelta(hours=8))
    session = tokens.verify(SECRET, token, NOW + timedelta(hours=7, minutes=59))
    assert (session.username, session.fingerprint) == ("alice", "SHA256:k")
    assert session.expires_at == NOW + timedelta(hours=8)


def test_an_expired_token_is_refused() -> None:
    token = tokens.issue(SECRET, "alice", "SHA256:k", NOW, timedelta(hours=8))
    with pytest.raises(signing.AuthError, match="expired"):
        tokens.verify(SECRET, token, NOW + timedelta(hours=8))


def test_a_token_from_another_secret_is_refused() -> None:
    token = tokens.issue(b"o" * 32, "alice", "SHA256:k", NOW, timedelta(hours=8))
    with pytest.raises(signing.AuthError, match="not valid"):
        tokens.verify(SECRET, token, NOW)


def test_an_edited_token_is_refused() -> None:
    import base64
    import json

    token = tokens.issue(SECRET, "alice", "SHA256:k", NOW, timedelta(hours=8))
    payload, mac = token[len(tokens.PREFIX) :].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "root"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    with pytest.raises(signing.AuthError, match="not valid"):
        tokens.verify(SECRET, f"{tokens.PREFIX}{forged}.{mac}", NOW)


@pytest.mark.parametrize("bad", ["", "Bearer x", "kws1.", "kws1.abc", "kws1." + "a" * 2000])
def test_garbage_tokens_are_refused(bad: str) -> None:
    with pytest.raises(signing.AuthError):
        tokens.verify(SECRET, bad, NOW)


def test_lifetime_is_bounded() -> None:
    with pytest.raises(UsageError):
        tokens.issue(SECRET, "alice", "SHA256:k", NOW, timedelta(hours=25))


def test_the_secret_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "server.secret"
    first = tokens.load_or_create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tokens.load_or_create_secret(path) == first
    assert len(first) == tokens.SECRET_BYTES


def test_a_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "server.secret"
    path.write_bytes(os.urandom(32))
    path.chmod(0o644)
    with pytest.raises(UsageError, match="readable by others"):
        tokens.load_or_create_secret(path)


# -- the client's signer --------------------------------------------------------


def test_the_signer_signs_what_the_server_verifies(keys: dict[str, Path]) -> None:
    signer = load_signer(str(keys["alice"]))  # a private key file, its .pub beside it
    headers = signer.headers("POST", "/api/v1/x", b"{}", NOW)
    request = signing.parse_headers(headers)
    assert request is not None
    signing.verify_request(request, signer.public, "POST", "/api/v1/x", b"{}")
    again = signing.parse_headers(signer.headers("POST", "/api/v1/x", b"{}", NOW))
    assert again is not None and again.nonce != request.nonce  # a fresh nonce every time


# -- [server] in keyward.toml -------------------------------------------------------


def _server_settings(text: str) -> tuple[object, list[str]]:
    import tomllib

    from keyward.inventory.reader import Problem, Reader
    from keyward.inventory.server import read_server_settings

    problems: list[Problem] = []
    settings = read_server_settings(tomllib.loads(text), Reader("keyward.toml", problems))
    return settings, [str(p) for p in problems]


def test_server_settings_defaults() -> None:
    from keyward.inventory.server import ServerSettings

    settings, problems = _server_settings("")
    assert problems == [] and settings == ServerSettings()


def test_server_settings_read() -> None:
    settings, problems = _server_settings(
        '[server]\nadmin_role = "ops-admin"\nmin_attestation = "proof"\nsession_hours = 2\n'
        '[server.approvers]\ndevops = ["role:security", "person:alice"]\n'
    )
    assert problems == []
    assert settings == type(settings)(
        admin_role="ops-admin",
        min_attestation="proof",
        session_hours=2,
        approvers={"devops": ("role:security", "person:alice")},
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[server]\nadmin_rol = "x"\n', "unknown field 'admin_rol'"),
        ('[server]\nmin_attestation = "strong"\n', "must be one of"),
        ("[server]\nsession_hours = 48\n", "1-24"),
        ('[server.approvers]\ndevops = ["security"]\n', "not role:NAME or person:USERNAME"),
        ('[server.approvers]\ndevops = "role:security"\n', "must be an array"),
    ],
)
def test_server_settings_mistakes_are_reported(text: str, problem: str) -> None:
    _, problems = _server_settings(text)
    assert any(problem in p for p in problems), problems


def test_inventory_check_reads_the_server_table(tmp_path: Path) -> None:
    from keyward.inventory.settings import read_settings

    (tmp_path / "keyward.toml").write_text('[server]\nauditor_rol = "x"\n')
    problems: list[object] = []
    read_settings(tmp_path, problems)  # type: ignore[arg-type]
    assert any("auditor_rol" in str(p) for p in problems)
