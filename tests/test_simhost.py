"""The simulated hosts the scale benchmark uses answer the real agent as a host would.

``keyward.testing.simhost`` serves the helper's protocol from memory behind a real SSH
endpoint, so a benchmark of 10,000 of them measures the daemon's real code. These tests
prove it: the agent's own ``Credentials`` connect (pinned host keys, public-key login), a
round reads and writes through ``HostConnection``, and the simulated files then hold
exactly what a round against a real host writes; a wrong pinned key and a login file
without the agent's key are refused as real hosts refuse them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncssh

from keyward.agent.connection import Credentials
from keyward.agent.reconcile import HostResult, RunContext, reconcile_fleet
from keyward.inventory.model import Host
from keyward.keys import parse_public_key
from keyward.testing.keypairs import make_ed25519
from keyward.testing.simhost import SimHost, Simulator, build_host
from tests.test_fakehost import AK, KEYS, NOW, Events, desired_for, fingerprints, snapshot

T = TypeVar("T")


def with_simulator(
    tmp_path: Path, count: int, body: Callable[[Simulator, Credentials, list[Host]], Awaitable[T]]
) -> T:
    """Start ``count`` simulated hosts on 127.0.0.1 (kernel-chosen ports), run ``body``."""
    identity = make_ed25519(tmp_path / "agent")
    agent_line = Path(f"{identity}.pub").read_text()

    async def main() -> T:
        hosts = [build_host(f"s{i}", "127.0.0.1", 0, agent_line, ("deploy",)) for i in range(count)]
        sim = Simulator(hosts)
        await sim.start()
        try:
            text = "".join(h.known_hosts_line() + "\n" for h in hosts)
            creds = Credentials(
                asyncssh.read_private_key(str(identity)),
                asyncssh.import_known_hosts(text),
                text,
                connect_timeout=10,
            )
            inventory = [
                Host(h.name, "sim", h.address, h.port, "root", (AK,), "exclusive", (), ("deploy",))
                for h in hosts
            ]
            return await body(sim, creds, inventory)
        finally:
            await sim.stop()

    return asyncio.run(main())


def context(
    creds: Credentials,
    hosts: list[Host],
    root: tuple[str, ...],
    deploy: tuple[str, ...],
    revoked: tuple[str, ...] = (),
) -> RunContext:
    return RunContext(
        snapshot=snapshot(revoked),
        desired=desired_for(hosts, root, deploy),
        connector=creds,
        now=NOW,
        agent_fingerprint=creds.agent_fingerprint,
        run_id="sim1",
        clock=lambda: NOW,
        log=Events(),
    )


def test_a_round_against_simulated_hosts_writes_what_it_would_write_on_real_ones(
    tmp_path: Path,
) -> None:
    async def body(sim: Simulator, creds: Credentials, hosts: list[Host]) -> list[HostResult]:
        # The desired state keeps the agent's real key on root (desired_for's KEYS["agent"]
        # is another one): put it in, as the one-shot and the daemon do.
        KEYS["agent"] = parse_public_key(creds.client_key.export_public_key("openssh").decode())
        first = await reconcile_fleet(hosts, context(creds, hosts, ("alice",), ("alice", "bob")), 2)
        assert all(r.ok for r in first), [r.problems for r in first]
        for host in hosts:
            fake = sim.hosts[host.name].fake
            alice, bob, agent = (KEYS[k].fingerprint for k in ("alice", "bob", "agent"))
            assert fingerprints(fake, "deploy") == {alice, bob}
            assert fingerprints(fake, "root") == {agent, alice}
            deploy = fake.entries[fake.path_of("deploy")]
            assert (deploy.uid, deploy.mode) == (1000, 0o600)
        # bob's key is revoked: removed everywhere, and a round in sync writes nothing.
        second = await reconcile_fleet(
            hosts, context(creds, hosts, ("alice",), ("alice",), revoked=("bob",)), 2
        )
        assert all(r.ok for r in second)
        assert sum(r.changes for r in second) == len(hosts)
        third = await reconcile_fleet(
            hosts, context(creds, hosts, ("alice",), ("alice",), revoked=("bob",)), 2
        )
        assert all(r.ok and r.changes == 0 for r in third)
        return second

    saved = KEYS["agent"]
    try:
        results = with_simulator(tmp_path, 3, body)
    finally:
        KEYS["agent"] = saved
    assert [r.host.name for r in results] == ["s0", "s1", "s2"]


def test_a_simulated_host_is_pinned_and_admits_only_the_agent(tmp_path: Path) -> None:
    async def body(sim: Simulator, creds: Credentials, hosts: list[Host]) -> list[str]:
        impostor: SimHost = sim.hosts["s0"]
        impostor.host_key = asyncssh.generate_private_key("ssh-ed25519")  # not the pinned one
        assert impostor.acceptor is not None
        impostor.acceptor.close()
        await impostor.acceptor.wait_closed()
        await sim.listen(impostor)  # same address and port, another key
        locked = sim.hosts["s1"].fake
        locked.edit(locked.path_of("root"), b"")  # the agent's key is gone from root's file
        errors = []
        for host in hosts:
            try:
                conn = await creds.open(host)
            except Exception as exc:
                errors.append(str(exc))
            else:
                errors.append("connected")
                await conn.close()
        return errors

    errors = with_simulator(tmp_path, 3, body)
    assert "does not match the pinned key" in errors[0]
    assert "the agent's key was refused" in errors[1]
    assert errors[2] == "connected"


def _answer(sim: Simulator, host: SimHost, **req: object) -> dict[str, object]:
    reply, _ = sim.answer(host, json.dumps({"id": 1, **req}).encode())
    return reply


def test_a_content_decoded_once_is_still_checked_and_written_whole_on_every_host() -> None:
    """The simulator decodes each distinct content once per process; every request is still
    checked field by field, and every host holds the full content afterwards."""
    hosts = [
        build_host(f"s{i}", "127.0.0.1", 0, "ssh-ed25519 AAAA agent", ("deploy",)) for i in range(2)
    ]
    sim = Simulator(hosts)
    content = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBench one@example\n"
    text = base64.b64encode(content).decode()

    def entry(**over: object) -> dict[str, object]:
        return {
            "account": "deploy",
            "pattern": "%h/.ssh/authorized_keys",
            "content_b64": text,
            "expect_sha256": "*",
            "create_dir": True,
            **over,
        }

    for host in hosts:
        reply = _answer(sim, host, op="write_many", files=[entry()])
        assert reply["ok"] and reply["files"][0]["ok"], reply  # type: ignore[index]
        path = host.fake.path_of("deploy", "%h/.ssh/authorized_keys")
        assert host.fake.entries[path].content == content
    # Known content, another field wrong: refused as remote.py refuses it.
    bad = _answer(sim, hosts[0], op="write_many", files=[entry(expect_sha256="nothex")])
    assert bad["ok"] is False and bad["error"]["code"] == "bad_request"  # type: ignore[index]
    bad = _answer(sim, hosts[0], op="write", **entry(create_dir="yes"))
    assert bad["ok"] is False and bad["error"]["code"] == "bad_request"  # type: ignore[index]
    # Text that is not base64 is never remembered: refused every time.
    for _ in range(2):
        bad = _answer(sim, hosts[1], op="write_many", files=[entry(content_b64="@@not base64@@")])
        assert bad["ok"] is False and bad["error"]["code"] == "bad_request"  # type: ignore[index]
    assert "@@not base64@@" not in sim.contents
    # A single write of the known content, compared against what the host holds: lands whole.
    digest = hashlib.sha256(content).hexdigest()
    single = _answer(sim, hosts[1], op="write", **entry(expect_sha256=digest))
    assert single["ok"] is True and single["sha256"] == digest, single
