"""Benchmark: how long each ``keyward`` command takes before it does anything.

Runs each command as a fresh process (``python -m keyward ...``, the way a shell runs it)
``--runs`` times after one warm-up run, hyperfine-style, and reports the median, min and max
wall time.  ``--baseline DIR`` also measures another checkout (e.g. the previous commit,
unpacked with ``git archive``), alternating run by run with this one, so that a shared
machine's changing load falls on both alike; the load average is recorded before and after.

    git archive HEAD~3 keyward | tar -x -C /tmp/before
    python bench/startup.py --baseline /tmp/before --runs 15 --json bench/results/startup.json
    python bench/startup.py --reconcile-hosts 20 --demo-runs 3   # root, sshd

``--importtime`` adds, per command, the top imports of one ``python -X importtime`` run.

Each measured tree is byte-compiled first and the runs may use the ``.pyc`` files, as an
installed keyward does (``pip install .`` compiles them); a shell that sets
``PYTHONDONTWRITEBYTECODE`` would otherwise make every run compile keyward's sources again
(about 40 ms more per command here). ``--source`` measures that uncompiled case instead.
Nothing binds outside 127.0.0.0/8; the temporary registry, keys and fleet are removed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def timed(
    cmd: Sequence[str], envs: dict[str, dict[str, str]], runs: int, cwd: Path
) -> dict[str, Any]:
    """Per variant (a checkout's environment): median/min/max wall seconds of ``runs`` runs
    of ``cmd``, after one warm-up run each; the variants take turns run by run."""
    for env in envs.values():
        first = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
        if first.returncode not in (0, 3):  # plan exits 3 for "changes pending"
            raise SystemExit(f"{' '.join(cmd)} failed ({first.returncode}):\n{first.stderr}")
    times: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(runs):
        for name, env in envs.items():
            start = time.perf_counter()
            subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, timeout=300, check=False)
            times[name].append(time.perf_counter() - start)
    return {
        name: {
            "median_s": round(statistics.median(t), 4),
            "min_s": round(min(t), 4),
            "max_s": round(max(t), 4),
            "runs": runs,
        }
        for name, t in times.items()
    }


def show(label: str, row: dict[str, Any]) -> None:
    parts = [
        f"{name} median {r['median_s']:.3f} s (min {r['min_s']:.3f}, max {r['max_s']:.3f})"
        for name, r in row.items()
        if isinstance(r, dict)
    ]
    print(f"{label:34} " + "; ".join(parts), flush=True)


def variants(tree: Path, baseline: Path | None, env: dict[str, str]) -> dict[str, dict[str, str]]:
    out = {"this": {**env, "PYTHONPATH": str(tree)}}
    if baseline is not None:
        out["baseline"] = {**env, "PYTHONPATH": str(baseline)}
    return out


def top_imports(args: Sequence[str], env: dict[str, str], cwd: Path, n: int = 8) -> list[str]:
    """The ``n`` costliest top-level imports (cumulative µs) of one -X importtime run."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keyward", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or line.endswith("| imported package"):
            continue
        _, cumulative, name = line.split("|")
        # Depth 0 (one leading space) is every import the run itself asked for, lazy or not.
        if not name.startswith("  ") and cumulative.strip().isdigit():
            rows.append((int(cumulative), name.strip()))
    total = sum(us for us, name in rows if name not in ("site", "encodings"))
    best = sorted(rows, reverse=True)[:n]
    return [f"total (without site) {total / 1000:.0f} ms"] + [
        f"{name} {us / 1000:.0f} ms" for us, name in best
    ]


def make_private_key(directory: Path) -> Path | None:
    if shutil.which("ssh-keygen") is None:
        return None
    path = directory / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "bench passphrase", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return path


def kw(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "keyward", *args], env=env, check=True, capture_output=True
    )


def command_table(work: Path, key: Path | None) -> list[tuple[str, list[str]]]:
    table: list[tuple[str, list[str]]] = [
        ("--version", ["--version"]),
        ("--help", ["--help"]),
    ]
    if key is not None:
        table.append(("key check", ["key", "check", str(key)]))
    table += [
        ("inventory check", ["--inventory", str(REPO / "inventory"), "inventory", "check"]),
        ("person list", ["person", "list"]),
        ("key list", ["key", "list"]),
        ("audit log", ["audit", "log"]),
    ]
    return table


def fleet_runs(
    tree: Path,
    baseline: Path | None,
    hosts: int,
    runs: int,
    demo_runs: int,
    base_env: dict[str, str],
    importtime: bool,
) -> dict[str, Any]:
    """``keyward reconcile`` of an unchanged local fleet of ``hosts`` real sshd hosts, and
    ``keyward demo`` (which starts its own fleet) ``demo_runs`` times."""
    sys.path.insert(0, str(tree))
    from keyward.testing.fleet import safe_base_dir
    from keyward.testing.inventory import AccessSpec, InventorySpec, write_inventory
    from keyward.testing.keypairs import make_ed25519
    from keyward.testing.localfleet import LocalFleet

    user = getpass.getuser()
    base = safe_base_dir("keyward-bench-startup-")
    work = Path(tempfile.mkdtemp(prefix="keyward-bench-startup-"))
    try:
        # As in bench/daemon.py (login_rc_config): sessions get an empty $HOME, so this
        # machine's root .bashrc (pyenv init, ~0.3 s a session) is not what gets measured.
        home = base / "root-rc-home"
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        extra = f"Match User {user}\n  SetEnv HOME={home}\n"
        with LocalFleet(
            base / "fleet", max(hosts, 1), name_prefix="b-", extra_config=extra
        ) as fleet:
            agent = make_ed25519(work / "keys" / "agent", "agent")
            alice = make_ed25519(work / "keys" / "alice", "alice")
            for host in fleet.hosts:
                path = host.authorized_keys_path(user)
                path.write_text(Path(f"{agent}.pub").read_text())
                os.chmod(path, 0o600)
            spec = InventorySpec(
                environment="bench",
                login=user,
                accounts=(user,),
                access=(AccessSpec(("ops",), (user,)),),
            )
            inventory = work / "inventory"
            write_inventory(inventory, fleet.hosts, spec, agent)
            env = {
                **base_env,
                "PYTHONPATH": str(tree),
                "KEYWARD_DB": str(work / "registry.db"),
                "KEYWARD_INVENTORY": str(inventory),
                "KEYWARD_CHECKPOINT_DIR": str(work / "checkpoints"),
            }
            kw(env, "init")
            kw(env, "person", "add", "alice", "--name", "Alice")
            kw(env, "key", "add", "alice", f"{alice}.pub", "--attest", "admin")
            kw(env, "role", "add", "ops")
            kw(env, "role", "grant", "ops", "alice", "--reason", "bench")
            kw(env, "reconcile")  # the first fill; the timed runs change nothing
            result: dict[str, Any] = {"hosts": hosts}
            if hosts:
                envs = variants(tree, baseline, env)
                cmd = [sys.executable, "-m", "keyward", "reconcile", "--no-logins"]
                result["unchanged"] = timed(cmd, envs, runs, work)
                show(f"reconcile --no-logins, {hosts} hosts", result["unchanged"])
                full = [sys.executable, "-m", "keyward", "reconcile"]
                result["unchanged_with_logins"] = timed(full, envs, runs, work)
                show(f"reconcile, {hosts} hosts", result["unchanged_with_logins"])
                if importtime:
                    result["imports"] = top_imports(["reconcile", "--no-logins"], env, work)
        if demo_runs:
            envs = variants(tree, baseline, base_env)
            demo = [sys.executable, "-m", "keyward", "demo"]
            result["demo"] = timed(demo, envs, demo_runs, work)
            show("demo", result["demo"])
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tree", type=Path, default=REPO, help="keyward checkout to measure")
    parser.add_argument("--baseline", type=Path, default=None, help="a checkout to compare with")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--importtime", action="store_true", help="add top imports per command")
    parser.add_argument(
        "--reconcile-hosts", type=int, default=0, help="also time reconcile on N local hosts"
    )
    parser.add_argument("--demo-runs", type=int, default=0, help="also time keyward demo")
    parser.add_argument(
        "--source", action="store_true", help="do not byte-compile: every run compiles keyward"
    )
    args = parser.parse_args(argv)
    tree = args.tree.resolve()
    baseline = args.baseline.resolve() if args.baseline else None
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_")}
    if args.source:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for checkout in (tree, baseline):
            if checkout is not None:
                subprocess.run(
                    [sys.executable, "-m", "compileall", "-q", str(checkout / "keyward")],
                    check=True,
                    capture_output=True,
                )
    env["PYTHONPATH"] = str(tree)
    results: dict[str, Any] = {
        "tree": str(tree),
        "baseline": str(baseline) if baseline else None,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "bytecode": "source (compiled every run)" if args.source else "compiled, as installed",
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "commands": {},
    }
    with tempfile.TemporaryDirectory(prefix="keyward-bench-startup-") as tmp:
        work = Path(tmp)
        env["KEYWARD_DB"] = str(work / "registry.db")
        env["KEYWARD_INVENTORY"] = str(work / "no-inventory")
        env["KEYWARD_CHECKPOINT_DIR"] = str(work / "checkpoints")
        env["KEYWARD_ACTOR"] = "bench"
        kw(env, "init")
        for name in ("alice", "bob", "carol"):
            kw(env, "person", "add", name, "--name", name.title())
        key = make_private_key(work)
        envs = variants(tree, baseline, env)
        floor = [sys.executable, "-c", "pass"]
        results["commands"]["(python -c pass)"] = timed(floor, {"this": env}, args.runs, work)
        show("(python -c pass)", results["commands"]["(python -c pass)"])
        for label, cmd_args in command_table(work, key):
            cmd = [sys.executable, "-m", "keyward", *cmd_args]
            row = timed(cmd, envs, args.runs, work)
            if args.importtime:
                row["imports"] = top_imports(cmd_args, env, work)
            results["commands"][label] = row
            show(label, row)
    if args.reconcile_hosts or args.demo_runs:
        base_env = {k: v for k, v in env.items() if not k.startswith("KEYWARD_")}
        base_env["KEYWARD_ACTOR"] = "bench"
        results["fleet"] = fleet_runs(
            tree,
            baseline,
            args.reconcile_hosts,
            args.runs,
            args.demo_runs,
            base_env,
            args.importtime,
        )
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
