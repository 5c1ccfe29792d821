"""The README's first command: ``keyward demo`` on an embedded default."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from keyward.testing.sshd import find_sshd


def _demo_dirs() -> set[str]:
    base = Path("/srv")  # where safe_base_dir() puts fleets when running as root
    return {p.name for p in base.iterdir() if p.name.startswith("keyward-demo-")}


def _run_demo(backend: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_")}
    if backend is not None:
        env["KEYWARD_DEMO_BACKEND"] = backend
    before = _demo_dirs()
    proc = subprocess.run(
        ["keyward", "demo"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # alice logs in on every host, bob never; after revocation alice is refused everywhere.
    assert out.count(": logged in") == 3
    assert out.count(": refused") == 6
    assert "audit chain ok" in out
    assert "demo finished" in out
    assert _demo_dirs() == before
    return out


@pytest.mark.fleet  # real sshd and ssh, started by the demo process (out of the guard's sight)
def test_demo_runs_end_to_end_and_leaves_nothing_behind() -> None:
    out = _run_demo(None)
    expected = "OpenSSH sshd" if find_sshd() is not None else "embedded asyncssh"
    assert f"backend: {expected}" in out


@pytest.mark.fleet  # three embedded SSH servers and real accounts: half a minute
@pytest.mark.timeout(300)
def test_demo_runs_on_embedded_ssh_servers_without_sshd() -> None:
    """KEYWARD_DEMO_BACKEND=embedded: asyncssh servers in the demo process, asyncssh logins."""
    tmp = Path(tempfile.gettempdir())
    before_tmp = {p.name for p in tmp.iterdir() if p.name.startswith("keyward-demo-")}
    out = _run_demo("embedded")
    assert "backend: embedded asyncssh" in out
    assert "logins checked with: asyncssh client" in out
    after_tmp = {p.name for p in tmp.iterdir() if p.name.startswith("keyward-demo-")}
    assert after_tmp == before_tmp


def test_backend_falls_back_to_embedded_without_sshd(monkeypatch: pytest.MonkeyPatch) -> None:
    from keyward.cli import demo

    monkeypatch.delenv("KEYWARD_DEMO_BACKEND", raising=False)
    monkeypatch.setattr(demo, "find_sshd", lambda: None)
    assert demo.choose_backend() == "embedded"
    monkeypatch.setenv("KEYWARD_DEMO_BACKEND", "openssh")
    with pytest.raises(demo.DemoError, match="sshd is not installed"):
        demo.choose_backend()
    monkeypatch.setenv("KEYWARD_DEMO_BACKEND", "bogus")
    with pytest.raises(demo.DemoError, match="must be"):
        demo.choose_backend()
    monkeypatch.setattr(demo, "find_sshd", lambda: "/usr/sbin/sshd")
    monkeypatch.setenv("KEYWARD_DEMO_BACKEND", "embedded")
    assert demo.choose_backend() == "embedded"
    monkeypatch.delenv("KEYWARD_DEMO_BACKEND")
    assert demo.choose_backend() == "openssh"
