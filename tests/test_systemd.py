"""The systemd units in ``systemd/``: valid for systemd, hardened, and on a 5-minute timer.

``systemd-analyze`` (Debian package ``systemd``) checks copies of the units offline; no
systemd needs to run as PID 1. As with the other external tools the tests use, a missing
install is an error, not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import click
import pytest

UNIT_DIR = Path(__file__).resolve().parent.parent / "systemd"
SERVICE = "keyward-reconcile.service"
TIMER = "keyward-reconcile.timer"
DOCUMENTED_EXEC = "/usr/local/bin/keyward"

Unit = dict[str, dict[str, list[str]]]

TRUE = {"yes", "true", "on", "1"}

# directive -> required value (booleans compared as booleans)
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectHome": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictSUIDSGID": "yes",
    "RestrictRealtime": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
    "StateDirectory": "keyward",
}


def parse_unit(text: str) -> Unit:
    """Sections -> directive -> every value assigned, in order (an empty value resets)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"directive outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        values = section.setdefault(key.strip(), [])
        value = value.strip()
        if value:
            values.append(value)
        else:
            values.clear()
            values.append("")
    return unit


def last(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= is missing"
    return values[-1]


def same(actual: str, wanted: str) -> bool:
    if wanted in TRUE:
        return actual.lower() in TRUE
    return actual == wanted


@pytest.fixture(scope="module")
def analyze() -> str:
    path = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not os.access(path, os.X_OK):
        pytest.fail("systemd-analyze not found: install the Debian package 'systemd'")
    return path


@pytest.fixture(scope="module")
def service() -> Unit:
    return parse_unit((UNIT_DIR / SERVICE).read_text())


@pytest.fixture(scope="module")
def timer() -> Unit:
    return parse_unit((UNIT_DIR / TIMER).read_text())


def keyward_script() -> str:
    """An absolute path to an installed ``keyward`` console script (verify checks ExecStart)."""
    beside = Path(sys.executable).parent / "keyward"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("keyward")
    if found is None:
        pytest.fail("the keyward console script is not installed (pip install -e .)")
    return str(Path(found).absolute())


def unit_copies(tmp_path: Path, service_extra: str = "") -> Path:
    """Both units in ``tmp_path``, ExecStart pointing at a keyward that exists here."""
    text = (UNIT_DIR / SERVICE).read_text()
    assert f"ExecStart={DOCUMENTED_EXEC} " in text
    text = text.replace(f"ExecStart={DOCUMENTED_EXEC} ", f"ExecStart={keyward_script()} ")
    (tmp_path / SERVICE).write_text(text + service_extra)
    shutil.copy(UNIT_DIR / TIMER, tmp_path / TIMER)
    return tmp_path


def verify(analyze: str, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyze, "verify", "--man=no", "--generators=no", SERVICE, TIMER],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )


def complaints(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if "keyward-reconcile" in line or "ExecStart" in line
    ]


# -- systemd-analyze ----------------------------------------------------------


def test_units_verify_cleanly(analyze: str, tmp_path: Path) -> None:
    proc = verify(analyze, unit_copies(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert complaints(proc) == []


def test_verify_check_catches_a_misspelt_directive(analyze: str, tmp_path: Path) -> None:
    # systemd only warns (exit 0) on unknown keys: the no-complaints check must see them.
    proc = verify(analyze, unit_copies(tmp_path, "ProtectSytem=strict\n"))
    assert any("ProtectSytem" in line for line in complaints(proc)), proc.stderr


def test_security_exposure_stays_low(analyze: str, tmp_path: Path) -> None:
    directory = unit_copies(tmp_path)
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=20", "--no-pager", SERVICE],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "", "TERM": "dumb"},
    )
    overall = [line for line in proc.stdout.splitlines() if "Overall exposure" in line]
    assert proc.returncode == 0, overall or proc.stdout + proc.stderr


# -- the service --------------------------------------------------------------


def test_service_runs_keyward_reconcile_once(service: Unit) -> None:
    assert last(service, "Service", "Type") == "oneshot"
    exec_start = service["Service"]["ExecStart"]
    assert exec_start == [f"{DOCUMENTED_EXEC} --log-format json reconcile"]
    assert Path(exec_start[0].split()[0]).is_absolute()
    environment = set(service["Service"].get("Environment", []))
    assert "KEYWARD_INVENTORY=/etc/keyward/inventory" in environment
    assert "KEYWARD_ACTOR=keyward-agent" in environment
    assert last(service, "Service", "TimeoutStartSec") == "15min"


@pytest.mark.parametrize(("key", "wanted"), sorted(HARDENING.items()))
def test_service_hardening(service: Unit, key: str, wanted: str) -> None:
    actual = last(service, "Service", key)
    assert same(actual, wanted), f"{key}={actual}, want {wanted}"


def test_service_has_no_capabilities(service: Unit) -> None:
    assert service["Service"].get("CapabilityBoundingSet") == [""]
    assert service["Service"].get("AmbientCapabilities", [""]) == [""]


def test_service_writes_only_its_state_directory(service: Unit) -> None:
    writable = " ".join(service["Service"].get("ReadWritePaths", [])).split()
    assert writable == ["/var/lib/keyward"]
    assert "User" not in service["Service"], "runs as root: the agent key is root-owned 0600"


def test_service_address_families(service: Unit) -> None:
    families = " ".join(service["Service"]["RestrictAddressFamilies"]).split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]


# -- the timer ----------------------------------------------------------------


def five_minute_schedule(analyze: str, timer: Unit) -> bool:
    calendars = timer["Timer"].get("OnCalendar", [])
    if not calendars:
        active = timer["Timer"].get("OnUnitActiveSec", [])
        spans = [timespan_us(analyze, value) for value in active]
        return spans == [5 * 60 * 1_000_000] and "OnBootSec" in timer["Timer"]
    assert len(calendars) == 1, calendars
    proc = subprocess.run(
        [
            analyze,
            "calendar",
            "--iterations=14",
            "--base-time=2024-01-01 00:57:30 UTC",
            calendars[0],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TZ": "UTC"},
    )
    assert proc.returncode == 0, proc.stderr
    times = [
        datetime.strptime(m, "%Y-%m-%d %H:%M:%S")
        for m in re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", proc.stdout)
    ]
    assert len(times) == 14, proc.stdout
    gaps = {b - a for a, b in pairwise(times)}
    return gaps == {timedelta(minutes=5)}


def timespan_us(analyze: str, value: str) -> int:
    proc = subprocess.run(
        [analyze, "timespan", value], capture_output=True, text=True, timeout=60, check=True
    )
    match = re.search(r"μs: (\d+)", proc.stdout)
    assert match, proc.stdout
    return int(match.group(1))


def test_timer_every_five_minutes(analyze: str, timer: Unit) -> None:
    assert five_minute_schedule(analyze, timer)


def test_timer_catches_up_and_spreads_load(analyze: str, timer: Unit) -> None:
    assert last(timer, "Timer", "Persistent").lower() in TRUE
    assert 0 < timespan_us(analyze, last(timer, "Timer", "RandomizedDelaySec")) <= 5 * 60 * 10**6
    assert timespan_us(analyze, last(timer, "Timer", "AccuracySec")) == 10**6
    assert timer["Timer"].get("Unit", [SERVICE]) == [SERVICE]
    assert last(timer, "Install", "WantedBy") == "timers.target"


def test_parser_sees_dropped_directives() -> None:
    text = (UNIT_DIR / SERVICE).read_text()
    weakened = parse_unit(text.replace("NoNewPrivileges=yes", "NoNewPrivileges=no"))
    assert not same(last(weakened, "Service", "NoNewPrivileges"), "yes")
    dropped = parse_unit(re.sub(r"(?m)^ProtectSystem=.*\n", "", text))
    assert "ProtectSystem" not in dropped["Service"]


# -- the daemon's service -----------------------------------------------------

DAEMON = "keyward.service"


def test_daemon_unit_verifies_cleanly(analyze: str, tmp_path: Path) -> None:
    text = (UNIT_DIR / DAEMON).read_text()
    assert f"ExecStart={DOCUMENTED_EXEC} --log-format json daemon" in text
    (tmp_path / DAEMON).write_text(
        text.replace(f"ExecStart={DOCUMENTED_EXEC} ", f"ExecStart={keyward_script()} ")
    )
    proc = subprocess.run(
        [analyze, "verify", "--man=no", "--generators=no", DAEMON],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [ln for ln in (proc.stdout + proc.stderr).splitlines() if "keyward" in ln] == []


def test_daemon_unit_is_hardened_notifying_and_restarting() -> None:
    unit = parse_unit((UNIT_DIR / DAEMON).read_text())
    for key, wanted in HARDENING.items():
        assert same(last(unit, "Service", key), wanted), key
    assert last(unit, "Service", "Type") == "notify"
    assert last(unit, "Service", "Restart") == "on-failure"
    assert last(unit, "Service", "ExecReload").endswith("-HUP $MAINPID")
    assert last(unit, "Service", "CapabilityBoundingSet") == ""
    assert "127.0.0.1:" in last(unit, "Service", "ExecStart")  # metrics on loopback only


# -- the daemon's metrics socket ----------------------------------------------

SOCKET = "keyward.socket"


def test_metrics_socket_verifies_with_its_service(analyze: str, tmp_path: Path) -> None:
    service = (UNIT_DIR / DAEMON).read_text()
    (tmp_path / DAEMON).write_text(
        service.replace(f"ExecStart={DOCUMENTED_EXEC} ", f"ExecStart={keyward_script()} ")
    )
    shutil.copy(UNIT_DIR / SOCKET, tmp_path / SOCKET)
    proc = subprocess.run(
        [analyze, "verify", "--man=no", "--generators=no", SOCKET, DAEMON],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [ln for ln in (proc.stdout + proc.stderr).splitlines() if "keyward" in ln] == []


def test_metrics_socket_is_the_services_loopback_address() -> None:
    """systemd hands the socket to the service of the same name, which serves it only when
    it is on loopback and --metrics is given: both units must name the same address."""
    socket_unit = parse_unit((UNIT_DIR / SOCKET).read_text())
    listen = last(socket_unit, "Socket", "ListenStream")
    assert listen.startswith("127.0.0.1:")
    exec_start = last(parse_unit((UNIT_DIR / DAEMON).read_text()), "Service", "ExecStart")
    assert f"--metrics {listen}" in exec_start


# -- the audit checkpoint timer -------------------------------------------------

CHECKPOINT_SERVICE = "keyward-checkpoint.service"
CHECKPOINT_TIMER = "keyward-checkpoint.timer"


def test_checkpoint_units_verify_cleanly(analyze: str, tmp_path: Path) -> None:
    service = (UNIT_DIR / CHECKPOINT_SERVICE).read_text()
    assert f"ExecStart={DOCUMENTED_EXEC} --log-format json audit checkpoint" in service
    (tmp_path / CHECKPOINT_SERVICE).write_text(
        service.replace(f"ExecStart={DOCUMENTED_EXEC} ", f"ExecStart={keyward_script()} ")
    )
    shutil.copy(UNIT_DIR / CHECKPOINT_TIMER, tmp_path / CHECKPOINT_TIMER)
    proc = subprocess.run(
        [analyze, "verify", "--man=no", "--generators=no", CHECKPOINT_SERVICE, CHECKPOINT_TIMER],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [ln for ln in (proc.stdout + proc.stderr).splitlines() if "keyward" in ln] == []


def test_checkpoint_service_is_hardened_and_private(analyze: str) -> None:
    """It holds the checkpoint signing key: files 0600, nothing writable but its state."""
    unit = parse_unit((UNIT_DIR / CHECKPOINT_SERVICE).read_text())
    for key, wanted in HARDENING.items():
        assert same(last(unit, "Service", key), wanted), key
    assert last(unit, "Service", "CapabilityBoundingSet") == ""
    assert last(unit, "Service", "ReadWritePaths") == "/var/lib/keyward"
    timer = parse_unit((UNIT_DIR / CHECKPOINT_TIMER).read_text())
    assert last(timer, "Timer", "Unit") == CHECKPOINT_SERVICE
    assert same(last(timer, "Timer", "Persistent"), "yes")
    # at most 15 minutes between checkpoints: the documented window
    proc = subprocess.run(
        [analyze, "calendar", "--iterations=3", last(timer, "Timer", "OnCalendar")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    runs = [
        datetime.fromisoformat(" ".join(line.split()[-3:-1]))
        for line in proc.stdout.splitlines()
        if "Next elapse" in line or "Iter." in line
    ]
    assert len(runs) == 3
    assert all(b - a <= timedelta(minutes=15) for a, b in pairwise(runs))


# -- the log every unit keeps -------------------------------------------------


def keyward_exec_starts() -> list[tuple[str, list[str]]]:
    found = []
    for unit_file in sorted(UNIT_DIR.glob("*.service")):
        for value in parse_unit(unit_file.read_text()).get("Service", {}).get("ExecStart", []):
            argv = value.split()
            if argv and argv[0] == DOCUMENTED_EXEC:
                found.append((unit_file.name, argv[1:]))
    return found


def test_every_unit_keeps_the_full_structured_log() -> None:
    """Without a terminal keyward logs warnings only; the journal must get every change, so
    each unit asks for ``--log-format json`` (JSON lines from info up), and the real CLI
    accepts the unit's command line as written."""
    from tests.cli_runner import Keyward

    found = keyward_exec_starts()
    assert {unit for unit, _ in found} >= {
        SERVICE,
        DAEMON,
        CHECKPOINT_SERVICE,
        "keyward-backup.service",
        "keyward-directory-sync.service",
    }
    runner = Keyward("sqlite:////nonexistent/registry.db", "/nonexistent")
    for unit, args in found:
        assert args[:2] == ["--log-format", "json"], unit
        result = runner(*args, "--help")
        assert result.code == 0, f"{unit}: {result}"


# -- documentation the units point at -----------------------------------------


def installed_files() -> set[str]:
    """Paths (relative to the install prefix) that ``pip install .`` puts outside the package."""
    project = tomllib.loads((UNIT_DIR.parent / "pyproject.toml").read_text())
    data_files = project["tool"]["setuptools"].get("data-files", {})
    return {
        f"{directory}/{Path(source).name}"
        for directory, sources in data_files.items()
        for source in sources
        if (UNIT_DIR.parent / source).is_file()
    }


def installed_target(uri: str) -> str | None:
    """The prefix-relative file a ``Documentation=`` URI needs, or None if not a local one."""
    if match := re.fullmatch(r"man:([\w.-]+)\((\d)\)", uri):
        name, section = match.groups()
        return f"share/man/man{section}/{name}.{section}"
    if match := re.fullmatch(r"file:///usr(?:/local)?/(.+)", uri):
        return match.group(1)
    return None


@pytest.mark.parametrize("unit_name", sorted(p.name for p in UNIT_DIR.iterdir()))
def test_documentation_points_at_what_the_package_installs(unit_name: str) -> None:
    """``systemctl help`` opens Documentation=: it must name a page pip actually installs."""
    unit = parse_unit((UNIT_DIR / unit_name).read_text())
    uris = " ".join(unit.get("Unit", {}).get("Documentation", [])).split()
    assert uris, f"{unit_name} has no Documentation="
    for uri in uris:
        target = installed_target(uri)
        assert target in installed_files(), f"{unit_name}: {uri} is not installed by the package"


def test_installed_target_resolution() -> None:
    assert installed_target("man:keyward(1)") == "share/man/man1/keyward.1"
    assert installed_target("file:///usr/share/doc/keyward/operations.md") == (
        "share/doc/keyward/operations.md"
    )
    assert installed_target("https://example.com/keyward") is None
    assert "share/doc/keyward/operations.md" not in installed_files()  # what it used to name


def test_every_daemon_option_is_in_the_operations_guide() -> None:
    from keyward.cli.main import cli

    daemon = cli.get_command(click.Context(cli), "daemon")
    assert daemon is not None
    guide = (UNIT_DIR.parent / "docs" / "operations.md").read_text()
    section = guide.split("## Running the daemon", 1)[1]
    for param in daemon.params:
        for name in param.opts:
            if name.startswith("--") and name != "--help":
                assert f"`{name}" in section, f"{name} is not in docs/operations.md"


# -- directory sync -----------------------------------------------------------

DIRECTORY_SERVICE = "keyward-directory-sync.service"
DIRECTORY_TIMER = "keyward-directory-sync.timer"


def test_directory_sync_units_verify_cleanly(analyze: str, tmp_path: Path) -> None:
    service = (UNIT_DIR / DIRECTORY_SERVICE).read_text()
    assert f"ExecStart={DOCUMENTED_EXEC} --log-format json directory sync\n" in service
    (tmp_path / DIRECTORY_SERVICE).write_text(
        service.replace(f"ExecStart={DOCUMENTED_EXEC} ", f"ExecStart={keyward_script()} ")
    )
    shutil.copy(UNIT_DIR / DIRECTORY_TIMER, tmp_path / DIRECTORY_TIMER)
    proc = subprocess.run(
        [analyze, "verify", "--man=no", "--generators=no", DIRECTORY_SERVICE, DIRECTORY_TIMER],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [ln for ln in (proc.stdout + proc.stderr).splitlines() if "keyward" in ln] == []


def test_directory_sync_is_hardened_like_reconcile_and_every_five_minutes(
    analyze: str, service: Unit, timer: Unit
) -> None:
    """It may offboard, so it reconciles hosts: the same sandbox as the reconcile unit."""
    unit = parse_unit((UNIT_DIR / DIRECTORY_SERVICE).read_text())
    assert last(unit, "Service", "Type") == "oneshot"
    for key, wanted in HARDENING.items():
        assert same(last(unit, "Service", key), wanted), key
    for key in ("CapabilityBoundingSet", "ReadWritePaths", "RestrictAddressFamilies"):
        assert unit["Service"][key] == service["Service"][key], key
    assert unit["Service"]["SystemCallFilter"] == service["Service"]["SystemCallFilter"]
    assert "--allow-mass-offboard" not in " ".join(unit["Service"]["ExecStart"])
    ours = parse_unit((UNIT_DIR / DIRECTORY_TIMER).read_text())
    assert last(ours, "Timer", "Unit") == DIRECTORY_SERVICE
    for key in ("OnCalendar", "RandomizedDelaySec", "Persistent", "AccuracySec"):
        assert last(ours, "Timer", key) == last(timer, "Timer", key), key


# -- the server's service -------------------------------------------------------

SERVER = "keyward-server.service"


def test_server_unit_verifies_cleanly_and_exposes_little(analyze: str, tmp_path: Path) -> None:
    text = (UNIT_DIR / SERVER).read_text()
    assert f"ExecStart={DOCUMENTED_EXEC} --log-format json server" in text
    (tmp_path / SERVER).write_text(
        text.replace(f"ExecStart={DOCUMENTED_EXEC} ", f"ExecStart={keyward_script()} ")
    )
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "", "TERM": "dumb"}
    proc = subprocess.run(
        [analyze, "verify", "--man=no", "--generators=no", SERVER],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [ln for ln in (proc.stdout + proc.stderr).splitlines() if "keyward" in ln] == []
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=20", "--no-pager", SERVER],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, [ln for ln in proc.stdout.splitlines() if "Overall" in ln]


def test_server_unit_is_hardened_on_loopback_and_restarting() -> None:
    unit = parse_unit((UNIT_DIR / SERVER).read_text())
    for key, wanted in HARDENING.items():
        assert same(last(unit, "Service", key), wanted), key
    assert last(unit, "Service", "CapabilityBoundingSet") == ""
    assert last(unit, "Service", "ReadWritePaths") == "/var/lib/keyward"
    assert last(unit, "Service", "Restart") == "on-failure"
    assert "--listen 127.0.0.1:" in last(unit, "Service", "ExecStart")  # TLS is a proxy's job
    assert "--state-dir /var/lib/keyward" in last(unit, "Service", "ExecStart")
