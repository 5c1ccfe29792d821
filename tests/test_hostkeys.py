"""The one host-key check: which known_hosts lines pin a host, for the agent and test clients."""

from __future__ import annotations

from dataclasses import dataclass

import asyncssh
import pytest

from keyward.agent.hostkeys import host_key_options, known_hosts_name, pinned_keys


@dataclass(frozen=True)
class At:
    address: str
    port: int


KEY_A = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
KEY_B = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
HERE = At("127.0.0.9", 2222)

# (known_hosts text, the keys it pins for 127.0.0.9 port 2222)
CASES = [
    pytest.param(f"[127.0.0.9]:2222 {KEY_A}\n", [KEY_A], id="bracketed-exact"),
    pytest.param(
        f"[127.0.0.9]:2222 {KEY_A}\n[127.0.0.9]:2222 {KEY_B}\n", [KEY_A, KEY_B], id="two-pins"
    ),
    pytest.param(f"other,[127.0.0.9]:2222 {KEY_A}\n", [KEY_A], id="name-list"),
    pytest.param(f"127.0.0.9 {KEY_A}\n", [], id="port-22-pin-is-not-this-port"),
    pytest.param(f"[127.0.0.9]:2223 {KEY_A}\n", [], id="other-port"),
    pytest.param(f"[127.0.0.*]:2222 {KEY_A}\n", [], id="no-wildcards"),
    pytest.param(f"@cert-authority [127.0.0.9]:2222 {KEY_A}\n", [], id="no-cert-authority"),
    pytest.param(f"@revoked [127.0.0.9]:2222 {KEY_A}\n", [], id="no-revoked-line"),
    pytest.param(f"|1|c2FsdA==|aGFzaA== {KEY_A}\n", [], id="no-hashed-names"),
    pytest.param(f"# [127.0.0.9]:2222 {KEY_A}\n", [], id="comment"),
    pytest.param(
        f"[127.0.0.9]:2222 ssh-ed25519 notbase64\n[127.0.0.9]:2222 {KEY_B}\n",
        [KEY_B],
        id="unreadable-key-skipped",
    ),
    pytest.param("[127.0.0.9]:2222\n\n", [], id="no-key"),
    pytest.param("", [], id="empty"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_which_lines_pin_a_host(text: str, expected: list[str]) -> None:
    keys = pinned_keys(text, HERE)
    assert [k.export_public_key().decode().strip() for k in keys] == expected
    options = host_key_options(text, HERE)
    if not expected:
        assert options is None
    else:
        assert options is not None
        trusted, ca_keys, revoked = options["known_hosts"]
        assert (trusted, ca_keys, revoked) == (keys, [], [])
        assert options["x509_trusted_certs"] is None
        assert options["x509_trusted_cert_paths"] == []


def test_port_22_is_named_without_brackets() -> None:
    assert known_hosts_name(At("127.0.0.9", 22)) == "127.0.0.9"
    assert known_hosts_name(HERE) == "[127.0.0.9]:2222"
    assert [
        k.export_public_key().decode().strip()
        for k in pinned_keys(f"127.0.0.9 {KEY_A}", At("127.0.0.9", 22))
    ] == [KEY_A]


def test_the_agent_and_the_test_clients_share_the_check() -> None:
    from keyward.agent import connection, hostkeys, scan
    from keyward.testing import asyncssh_client

    assert connection.host_key_options is hostkeys.host_key_options
    assert asyncssh_client.host_key_options is hostkeys.host_key_options
    assert scan.pinned_keys is hostkeys.pinned_keys
    assert scan.known_hosts_name is hostkeys.known_hosts_name
