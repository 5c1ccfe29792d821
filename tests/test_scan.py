"""``keyward hosts scan``: a changed host key is shown as CHANGED and never pinned beside the old.

Real sshd hosts: a host "re-installed" gets a new host key file and is restarted, so the
scan sees exactly what an impostor (or a legitimate re-install) would present.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from keyward.testing.fleet import FleetHost
from tests.agent_env import AgentEnv


def new_host_key(env: AgentEnv, host: FleetHost, kind: str = "ed25519") -> str:
    """Give ``host`` a fresh host key of ``kind`` (restarting its sshd); return its fingerprint."""
    env.fleet.stop_host(host.name)
    key = host.dir / "ssh_host_ed25519_key"  # the path the fleet's sshd_config names
    key.unlink()
    Path(f"{key}.pub").unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(key)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    env.fleet.start_host(host.name)
    return fingerprint(Path(f"{key}.pub"))


def fingerprint(pub: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return out.split()[1]


def test_changed_host_key_is_refused_unless_the_checked_key_replaces_the_pin(
    env: AgentEnv,
) -> None:
    known = env.inventory / "known_hosts"
    host, other = env.hosts[0], env.hosts[1]
    old = fingerprint(host.dir / "ssh_host_ed25519_key.pub")
    new = new_host_key(env, host)
    before = known.read_text()

    shown = env.kw.ok("hosts", "scan", host.name).out
    assert f"# {host.name}: {new} CHANGED (pinned {old})" in shown
    assert "(new)" not in shown and "ssh-ed25519" not in shown  # no line offered to paste

    refused = env.kw.fails("hosts", "scan", "--write", host.name)
    assert f"{host.name}: host key CHANGED (pinned {old}, presented {new})" in refused.err
    assert f"--replace --fingerprint {new}" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    assert known.read_text() == before  # nothing pinned, least of all next to the old key

    # The operator checked some other key (or the host changed again since): refused.
    wrong = env.kw.fails("hosts", "scan", "--write", "--replace", "--fingerprint", old, host.name)
    assert f"presented {new}, which no --fingerprint names" in wrong.err
    assert (
        "needs --fingerprint"
        in env.kw.fails("hosts", "scan", "--write", "--replace", host.name).err
    )
    assert known.read_text() == before
    assert "does not match the pinned key" in env.kw("plan", "--host", host.name).out

    done = env.kw.ok(
        "hosts", "scan", "--write", "--replace", "--fingerprint", new, host.name, other.name
    )
    assert f"replaced the pinned host key of {host.name} ({old} -> {new})" in done.out
    lines = known.read_text().splitlines()
    mine = [ln for ln in lines if ln.startswith(f"[{host.address}]:{host.port} ")]
    assert (
        len(mine) == 1 and mine[0].split()[2] in (host.dir / "ssh_host_ed25519_key.pub").read_text()
    )
    assert other.known_hosts_line() in lines  # the other host's pin is untouched
    assert "(pinned)" in env.kw.ok("hosts", "scan", host.name).out
    assert env.kw("plan", "--host", host.name).code in (0, 3)
    events = env.kw.ok("audit", "log", "--json", "--action", "host.key-replace").json()
    assert [(e["subject_kind"], e["subject"]) for e in events] == [("host", host.name)]
    assert events[0]["details"]["old_fingerprints"] == [old]
    assert events[0]["details"]["fingerprint"] == new


def test_first_contact_pins_only_the_key_shown_and_checked(env: AgentEnv) -> None:
    known = env.inventory / "known_hosts"
    known.write_text("")
    a, b = env.hosts[0], env.hosts[1]
    fp_a = fingerprint(a.dir / "ssh_host_ed25519_key.pub")
    # b also has an ECDSA host key: first contact asks for ed25519 only, so one key is shown.
    ecdsa = b.dir / "ssh_host_ecdsa_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-C", "", "-f", str(ecdsa)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    env.fleet.stop_host(b.name)
    env.fleet.extra_config = f"HostKey {ecdsa}"
    env.fleet.start_host(b.name)

    refused = env.kw.fails("hosts", "scan", "--write", "--fingerprint", fp_a, a.name, b.name)
    assert f"{b.name}: presented " in refused.err and "which no --fingerprint names" in refused.err
    assert known.read_text() == ""
    bogus = "SHA256:" + "A" * 43
    none = env.kw.fails("hosts", "scan", "--write", "--fingerprint", bogus, a.name)
    assert "no --fingerprint names" in none.err and known.read_text() == ""
    assert (
        "not a SHA256" in env.kw.fails("hosts", "scan", "--write", "--fingerprint", "x", a.name).err
    )

    out = env.kw.ok("hosts", "scan", "--write", a.name, b.name).out
    shown = [ln for ln in out.splitlines() if not ln.startswith(("#", "added"))]
    assert sorted(known.read_text().splitlines()) == sorted(shown)
    assert sorted(shown) == sorted([a.known_hosts_line(), b.known_hosts_line()])
    assert "ecdsa" not in known.read_text()


def test_a_host_pinned_with_another_key_type_is_compared_with_that_type(env: AgentEnv) -> None:
    """The scan asks for the pinned key's type, as the agent does; a dropped type is CHANGED."""
    known = env.inventory / "known_hosts"
    host = env.hosts[0]
    endpoint = f"[{host.address}]:{host.port}"
    new = new_host_key(env, host, kind="ecdsa")  # the host now offers only ECDSA
    pub = (host.dir / "ssh_host_ed25519_key.pub").read_text().split()
    others = [ln for ln in known.read_text().splitlines() if not ln.startswith(endpoint)]
    known.write_text("\n".join([*others, f"{endpoint} {pub[0]} {pub[1]}"]) + "\n")
    assert f"# {host.name}: {new} (pinned)" in env.kw.ok("hosts", "scan", host.name).out

    # Re-installed with only ed25519: the ECDSA pin does not match whatever type is shown.
    fresh = new_host_key(env, host, kind="ed25519")
    assert (
        f"# {host.name}: {fresh} CHANGED (pinned {new})"
        in env.kw.ok("hosts", "scan", host.name).out
    )
