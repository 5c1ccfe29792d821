"""Benchmark: desired-state computation at scale, and registry queries vs fleet size.

Part 1 (pure, in memory): a synthetic ``RegistrySnapshot`` (10,000 people, 25,000
ed25519 keys, 20 roles, 15,000 grants) and an ``Inventory`` (2,000 hosts x 5
managed accounts, 3 environments, 30 access rules, 3 break-glass keys) are built
directly from the frozen dataclasses; ``compute_desired`` is timed (median of N
runs) and its memory measured (process peak RSS and tracemalloc peak of one call).
Also timed, as context: rendering every file and the daemon's per-file
``signature`` (what ``keyward daemon`` computes for all files on every change).

Part 2 (real SQLite registry): a registry populated through ``keyward.registry.ops``
with a scaled-down set (default 1,000 people / 2,500 keys / 1,500 grants); the
number of SQL statements is counted with a SQLAlchemy ``before_cursor_execute``
listener for ``load_snapshot`` + ``compute_desired`` over inventories of 10 and of
2,000 hosts, and for the engine's ``load_inputs()`` path (TOML inventory on disk,
registry opened as the commands open it) with 10 and 2,000 hosts.  The counts must match.

Targets: compute_desired < 2 s and peak RSS < 500 MB.

    python bench/desired_state.py [--runs 5] [--json out.json] [--skip-queries]

Everything lives in a temporary directory that is removed at the end; nothing
connects anywhere.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from keyward.desired import compute_desired
from keyward.inventory.model import (
    AccessRule,
    AgentSettings,
    BreakGlass,
    Environment,
    Host,
    Inventory,
)
from keyward.inventory.policy import PolicySettings
from keyward.keys import ED25519, PublicKey, encode_string
from keyward.state import GrantRecord, KeyRecord, PersonRecord, RegistrySnapshot

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ENVIRONMENTS = (("production", "proof"), ("staging", "admin"), ("dev", "none"))
ACCOUNTS = ("deploy", "app", "db", "ops")  # + login "root" = 5 managed accounts
LOGIN = "root"
CUSTOMERS = tuple(f"cust{i}" for i in range(5))
ATTESTATIONS = ("none", "admin", "admin", "proof", "proof", "proof")


def fake_ed25519(rng: random.Random, comment: str = "") -> PublicKey:
    """A structurally valid ssh-ed25519 key from 32 random bytes (no key generation)."""
    point = rng.randbytes(32)
    return PublicKey(ED25519, encode_string(ED25519.encode()) + encode_string(point), comment)


# -- synthetic data ---------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    people: int
    keys: int
    roles: int
    grants: int
    hosts: int
    rules_per_env: int


FULL = Scale(people=10_000, keys=25_000, roles=20, grants=15_000, hosts=2_000, rules_per_env=10)


def role_names(n: int) -> list[str]:
    return [f"role{i:02d}" for i in range(n)]


def role_weights(n: int) -> list[float]:
    """Skewed role sizes: a few big roles (everyone-in-engineering), many small ones."""
    return [1.0 / (i + 1) ** 0.8 for i in range(n)]


def synthetic_people(rng: random.Random, scale: Scale) -> list[tuple[str, str, str]]:
    out = []
    for i in range(scale.people):
        status = "offboarded" if rng.random() < 0.02 else "active"
        out.append((f"u{i:05d}", f"User {i}", status))
    return out


def key_owners(rng: random.Random, scale: Scale) -> list[int]:
    """Person index for each key: everyone has >= 1, the rest spread at random."""
    owners = list(range(scale.people))
    owners += [rng.randrange(scale.people) for _ in range(scale.keys - scale.people)]
    rng.shuffle(owners)
    return owners


def grant_pairs(rng: random.Random, scale: Scale) -> list[tuple[int, int]]:
    """``grants`` distinct (person, role) pairs with skewed role popularity."""
    weights = role_weights(scale.roles)
    seen: set[tuple[int, int]] = set()
    while len(seen) < scale.grants:
        person = rng.randrange(scale.people)
        role = rng.choices(range(scale.roles), weights)[0]
        seen.add((person, role))
    return sorted(seen)


def build_snapshot(rng: random.Random, scale: Scale) -> RegistrySnapshot:
    people_rows = synthetic_people(rng, scale)
    people = {u: PersonRecord(u, name, status) for u, name, status in people_rows}
    keys = []
    for owner in key_owners(rng, scale):
        username = people_rows[owner][0]
        added = NOW - timedelta(days=rng.randrange(1, 360))
        expires = added + timedelta(days=365)
        if rng.random() < 0.03:  # already expired
            expires = NOW - timedelta(days=rng.randrange(1, 30))
        revoked = NOW - timedelta(days=1) if rng.random() < 0.03 else None
        keys.append(
            KeyRecord(
                key=fake_ed25519(rng, f"{username}@laptop"),
                owner=username,
                attestation=rng.choice(ATTESTATIONS),
                added_at=added,
                expires_at=expires,
                revoked_at=revoked,
            )
        )
    roles = role_names(scale.roles)
    grants = []
    for person, role in grant_pairs(rng, scale):
        until = None
        customer = None
        environment = None
        r = rng.random()
        if r < 0.10:
            until = NOW + timedelta(days=rng.randrange(-10, 60))  # some lapsed
        elif r < 0.15:
            customer = rng.choice(CUSTOMERS)
        elif r < 0.17:  # an approved access request: one environment only
            environment = rng.choice(ENVIRONMENTS)[0]
            until = NOW + timedelta(hours=rng.randrange(1, 8))
        grants.append(
            GrantRecord(
                username=people_rows[person][0],
                role=roles[role],
                granted_by="security",
                granted_at=NOW - timedelta(days=30),
                reason="bench",
                until=until,
                customer=customer,
                environment=environment,
            )
        )
    return RegistrySnapshot(people=people, keys=tuple(keys), grants=tuple(grants), head_seq=1)


def build_inventory(rng: random.Random, scale: Scale, n_hosts: int | None = None) -> Inventory:
    n_hosts = scale.hosts if n_hosts is None else n_hosts
    roles = role_names(scale.roles)
    per_env = [n_hosts * 2 // 5, n_hosts * 3 // 10]
    per_env.append(n_hosts - sum(per_env))
    environments = []
    index = 0
    for (env_name, min_att), count in zip(ENVIRONMENTS, per_env, strict=True):
        groups = [f"{env_name}-g{i}" for i in range(8)]
        hosts = []
        for _ in range(count):
            index += 1
            if env_name == "staging":
                # Customer hosts: one group each, and a group belongs to one customer, so
                # rules scoped by group never cross customers (the loader refuses that).
                host_groups: tuple[str, ...] = (rng.choice(groups),)
                customer = CUSTOMERS[groups.index(host_groups[0]) % len(CUSTOMERS)]
            else:
                host_groups = tuple(sorted(set(rng.sample(groups, rng.randint(1, 2)))))
                customer = None
            hosts.append(
                Host(
                    name=f"{env_name}-{index:05d}",
                    environment=env_name,
                    address=f"10.{index // 65536}.{(index // 256) % 256}.{index % 256}",
                    port=22,
                    login=LOGIN,
                    authorized_keys=("/etc/ssh/authorized_keys/%u",),
                    mode="exclusive",
                    groups=host_groups,
                    accounts=ACCOUNTS,
                    customer=customer,
                )
            )
        used = sorted({g for h in hosts for g in h.groups}) or groups
        access = []
        for r in range(scale.rules_per_env):
            everywhere = r < 3 and env_name != "staging"
            if env_name == "staging":
                customer = CUSTOMERS[groups.index(rng.choice(used)) % len(CUSTOMERS)]
                pool = [g for g in used if CUSTOMERS[groups.index(g) % len(CUSTOMERS)] == customer]
            else:
                pool = used
            access.append(
                AccessRule(
                    environment=env_name,
                    roles=tuple(rng.sample(roles, rng.randint(1, 3))),
                    accounts=tuple(rng.sample((*ACCOUNTS, LOGIN), rng.randint(1, 3))),
                    groups=None
                    if everywhere
                    else tuple(rng.sample(pool, min(len(pool), rng.randint(1, 2)))),
                    hosts=None,
                    options=("no-port-forwarding",) if r % 2 else (),
                    source=f"{env_name}.toml: access[{r}]",
                )
            )
        glass = (
            BreakGlass(
                environment=env_name,
                accounts=(LOGIN,),
                key=fake_ed25519(rng, "break-glass"),
                groups=None,
                hosts=None,
                options=('from="10.0.0.0/8"',),
                source=f"{env_name}.toml: break_glass[0]",
            ),
        )
        environments.append(
            Environment(
                name=env_name,
                min_attestation=min_att,
                customer=None,
                hosts=tuple(hosts),
                access=tuple(access),
                break_glass=glass,
                source_file=f"{env_name}.toml",
            )
        )
    return Inventory(
        root=Path("/nonexistent/inventory"),
        agent=AgentSettings(
            identity=Path("/nonexistent/agent"),
            identity_pub=Path("/nonexistent/agent.pub"),
            known_hosts=Path("/nonexistent/known_hosts"),
            concurrency=50,
            connect_timeout=10,
            python="python3",
        ),
        policy=PolicySettings(max_key_age_days=365, min_rsa_bits=3072, allowed_key_types=None),
        environments=tuple(environments),
    )


# -- part 1: compute_desired ------------------------------------------------------


def rss_mb() -> float:
    """Current resident set size of this process, MB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_compute(
    runs: int, seed: int, sample_files: int = 100, sig_budget_s: float = 60.0
) -> dict[str, Any]:
    from keyward.daemon.service import signature

    rng = random.Random(seed)  # noqa: S311 - synthetic data, not crypto
    rss_start = rss_mb()
    t0 = time.perf_counter()
    snapshot = build_snapshot(rng, FULL)
    t_snapshot = time.perf_counter() - t0
    t0 = time.perf_counter()
    inventory = build_inventory(rng, FULL)
    t_inventory = time.perf_counter() - t0
    hosts = inventory.hosts()
    agent_key = fake_ed25519(rng, "keyward-agent")
    rss_inputs = rss_mb()

    times = []
    cpu_times = []
    desired: dict[Any, Any] = {}
    for _ in range(runs):
        desired = {}
        gc.collect()
        c0 = time.process_time()
        t0 = time.perf_counter()
        desired = compute_desired(snapshot, inventory, hosts, agent_key, NOW)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        print(
            f"  compute_desired run: {times[-1]:.3f} s wall, {cpu_times[-1]:.3f} s CPU",
            flush=True,
        )
    rss_after = rss_mb()
    peak_after_compute = peak_rss_mb()

    line_counts = [len(d.lines) for d in desired.values()]
    total_lines = sum(line_counts)
    distinct_line_tuples = len({id(d.lines) for d in desired.values()})

    # One call under tracemalloc: the allocation peak of compute_desired itself.
    desired = {}
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    result = compute_desired(snapshot, inventory, hosts, agent_key, NOW)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    traced_peak_mb = (peak - base) / 1e6

    # Context (not part of the target): rendering every file, and the daemon's
    # per-file ``signature`` which renders every line of every file on every change.
    # Both are far slower than compute_desired, so they are timed on a random sample
    # of files and extrapolated by line count.
    sample_rng = random.Random(seed + 7)  # noqa: S311
    sample = sample_rng.sample(list(result.values()), min(sample_files, len(result)))
    sample_lines = sum(len(d.lines) for d in sample)
    t0 = time.perf_counter()
    sample_bytes = sum(len(d.exclusive_content()) for d in sample)
    t_render = time.perf_counter() - t0
    t0 = time.perf_counter()
    for d in sample:
        signature(d)
    t_signature = time.perf_counter() - t0
    # The daemon's signature() may cache per lines tuple: time real passes over all
    # files (cold, then warm, as on the next change), bounded by a time budget.
    sig_passes = []
    for _ in range(2):
        t0 = time.perf_counter()
        done = 0
        for d in result.values():
            signature(d)
            done += 1
            if time.perf_counter() - t0 > sig_budget_s:
                break
        took = time.perf_counter() - t0
        sig_passes.append(
            {
                "files": done,
                "s": round(took, 2),
                "all_files_s_est": round(took * len(result) / done, 1),
            }
        )
    per_line_render = t_render / max(1, sample_lines)
    per_line_sig = t_signature / max(1, sample_lines)
    content_bytes = int(sample_bytes / max(1, sample_lines) * total_lines)

    return {
        "people": len(snapshot.people),
        "keys": len(snapshot.keys),
        "roles": len({g.role for g in snapshot.grants}),
        "grants": len(snapshot.grants),
        "hosts": len(hosts),
        "accounts_per_host": len(hosts[0].managed_accounts),
        "environments": len(inventory.environments),
        "access_rules": sum(len(e.access) for e in inventory.environments),
        "files": len(result),
        "lines_total": total_lines,
        "lines_per_file_mean": round(total_lines / len(line_counts), 1),
        "lines_per_file_max": max(line_counts),
        "distinct_line_tuples": distinct_line_tuples,
        "rendered_bytes_total_est": content_bytes,
        "build_snapshot_s": round(t_snapshot, 3),
        "build_inventory_s": round(t_inventory, 3),
        "compute_runs_s": [round(t, 4) for t in times],
        "compute_median_s": round(statistics.median(times), 4),
        "compute_max_s": round(max(times), 4),
        "compute_cpu_runs_s": [round(t, 4) for t in cpu_times],
        "compute_cpu_median_s": round(statistics.median(cpu_times), 4),
        "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
        "rss_start_mb": round(rss_start, 1),
        "rss_with_inputs_mb": round(rss_inputs, 1),
        "rss_after_compute_mb": round(rss_after, 1),
        "peak_rss_mb": round(peak_after_compute, 1),
        "compute_tracemalloc_peak_mb": round(traced_peak_mb, 1),
        "render_sample_files": len(sample),
        "render_sample_lines": sample_lines,
        "render_us_per_line": round(per_line_render * 1e6, 2),
        "render_all_files_s_est": round(per_line_render * total_lines, 1),
        "daemon_signature_us_per_line": round(per_line_sig * 1e6, 2),
        "daemon_signature_all_files_s_est": round(per_line_sig * total_lines, 1),
        "daemon_signature_passes": sig_passes,
        "target_time_met": statistics.median(times) < 2.0,
        "target_rss_met": peak_after_compute < 500,
    }


# -- part 2: queries vs hosts -----------------------------------------------------


class QueryCounter:
    def __init__(self) -> None:
        self.count = 0
        self.statements: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.count += 1
        self.statements.append(" ".join(statement.split())[:80])

    def reset(self) -> None:
        self.count = 0
        self.statements = []


def populate_registry(url: str, scale: Scale, seed: int) -> dict[str, int]:
    from keyward.registry.ops import KeyClaim, add_key, add_person, add_role, grant_role
    from keyward.registry.store import Registry

    rng = random.Random(seed)  # noqa: S311 - synthetic data, not crypto
    registry, _, _ = Registry.initialise(url)
    people = synthetic_people(rng, scale)
    owners = key_owners(rng, scale)
    pairs = grant_pairs(rng, scale)
    roles = role_names(scale.roles)
    try:
        with registry.write("bench-admin") as tx:
            for username, name, _ in people:
                add_person(tx, username, name, None)
            for owner in owners:
                username = people[owner][0]
                claim = KeyClaim(
                    attestation=rng.choice(ATTESTATIONS),
                    expires_at=tx.now + timedelta(days=rng.randrange(30, 365)),
                )
                add_key(tx, username, fake_ed25519(rng, f"{username}@laptop"), claim)
            for role in roles:
                add_role(tx, role, "bench")
            for person, role in pairs:
                until = tx.now + timedelta(days=30) if rng.random() < 0.1 else None
                grant_role(tx, roles[role], people[person][0], "bench", until)
        with registry.read() as session:
            from sqlmodel import select

            from keyward.registry.models import AuditHead

            head = session.exec(select(AuditHead)).one().seq
    finally:
        registry.dispose()
    return {
        "people": len(people),
        "keys": len(owners),
        "roles": len(roles),
        "grants": len(pairs),
        "audit_events": head,
    }


def write_toml_inventory(root: Path, inventory: Inventory, agent_identity: Path) -> None:
    """The same fleet as TOML files, for the engine's ``load_inputs()`` path."""
    from keyward.testing.keypairs import make_ed25519

    make_ed25519(agent_identity, comment="keyward-agent")
    root.mkdir(parents=True, exist_ok=True)
    (root / "keyward.toml").write_text(
        "[agent]\n"
        f'identity = "{agent_identity}"\n'
        'known_hosts = "known_hosts"\n'
        "\n[policy]\nmax_key_age_days = 365\n"
    )
    (root / "known_hosts").write_text("")

    def lst(values: tuple[str, ...]) -> str:
        return "[" + ", ".join(json.dumps(v) for v in values) + "]"

    for env in inventory.environments:
        lines = [
            "[environment]",
            f'name = "{env.name}"',
            f'min_attestation = "{env.min_attestation}"',
            "",
            "[defaults]",
            f'login = "{LOGIN}"',
            'mode = "exclusive"',
            "",
        ]
        for h in env.hosts:
            lines += [
                "[[hosts]]",
                f'name = "{h.name}"',
                f'address = "{h.address}"',
                f"port = {h.port}",
                f"authorized_keys = {json.dumps(h.authorized_keys[0])}",
                f"accounts = {lst(h.accounts)}",
                f"groups = {lst(h.groups)}",
            ]
            if h.customer:
                lines.append(f'customer = "{h.customer}"')
            lines.append("")
        for rule in env.access:
            lines += [
                "[[access]]",
                f"roles = {lst(rule.roles)}",
                f"accounts = {lst(rule.accounts)}",
            ]
            if rule.groups is not None:
                lines.append(f"groups = {lst(rule.groups)}")
            if rule.options:
                lines.append(f"options = {lst(rule.options)}")
            lines.append("")
        (root / f"{env.name}.toml").write_text("\n".join(lines))


def bench_queries(seed: int, people: int) -> dict[str, Any]:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from keyward.engine.inputs import load_inputs
    from keyward.registry.snapshot import load_snapshot
    from keyward.registry.store import Registry

    factor = people / FULL.people
    scale = Scale(
        people=people,
        keys=int(FULL.keys * factor),
        roles=FULL.roles,
        grants=int(FULL.grants * factor),
        hosts=FULL.hosts,
        rules_per_env=FULL.rules_per_env,
    )
    work = Path(tempfile.mkdtemp(prefix="keyward-bench-q-"))
    counter = QueryCounter()
    out: dict[str, Any] = {}
    try:
        url = f"sqlite:///{work / 'registry.db'}"
        t0 = time.perf_counter()
        out["registry"] = populate_registry(url, scale, seed)
        out["populate_s"] = round(time.perf_counter() - t0, 2)
        rng = random.Random(seed + 1)  # noqa: S311
        inventories = {n: build_inventory(rng, scale, n) for n in (10, 2000)}
        agent_key = fake_ed25519(rng, "keyward-agent")

        event.listen(Engine, "before_cursor_execute", counter)
        try:
            # (a) load_snapshot + compute_desired, directly.
            rows = []
            for n, inv in inventories.items():
                registry = Registry.open(url)
                try:
                    counter.reset()
                    t0 = time.perf_counter()
                    with registry.read() as session:
                        snapshot = load_snapshot(session)
                    t_load = time.perf_counter() - t0
                    loaded = counter.count
                    statements = list(counter.statements)
                    desired = compute_desired(snapshot, inv, inv.hosts(), agent_key, NOW)
                    rows.append(
                        {
                            "hosts": n,
                            "files": len(desired),
                            "queries_load_snapshot": loaded,
                            "queries_total": counter.count,
                            "load_snapshot_s": round(t_load, 3),
                            "statements": statements,
                        }
                    )
                finally:
                    registry.dispose()
            out["direct"] = rows
            # (b) the engine's load_inputs(): TOML inventory + registry, exactly as plan/reconcile.
            rows = []
            for n, inv in inventories.items():
                root = work / f"inv{n}"
                write_toml_inventory(root, inv, work / f"agent{n}" / "id")
                counter.reset()
                t0 = time.perf_counter()
                registry = Registry.open(url)  # counted, as plan/reconcile open it
                try:
                    prepared = load_inputs(registry, registry.clock, root, None, None)
                    rows.append(
                        {
                            "hosts": len(prepared.hosts),
                            "files": len(prepared.desired),
                            "queries": counter.count,
                            "prepare_s": round(time.perf_counter() - t0, 3),
                        }
                    )
                finally:
                    registry.dispose()
            out["cli_prepare"] = rows
        finally:
            event.remove(Engine, "before_cursor_execute", counter)
        direct = out["direct"]
        cli = out["cli_prepare"]
        out["independent_of_hosts"] = (
            direct[0]["queries_total"] == direct[1]["queries_total"]
            and cli[0]["queries"] == cli[1]["queries"]
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def machine() -> dict[str, str]:
    cpu = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem = fh.readline().split()[1]
    return {
        "nproc": str(os.cpu_count()),
        "ram_gb": f"{int(mem) / 1024 / 1024:.1f}",
        "cpu": cpu,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--query-people", type=int, default=1000)
    parser.add_argument("--skip-queries", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()

    results: dict[str, Any] = {"machine": machine()}
    results["compute"] = bench_compute(args.runs, args.seed)
    c = results["compute"]
    print(
        f"compute_desired: {c['hosts']} hosts x {c['accounts_per_host']} accounts = "
        f"{c['files']} files, {c['people']} people, {c['keys']} keys, {c['grants']} grants, "
        f"{c['access_rules']} rules"
    )
    print(
        f"  median {c['compute_median_s']} s wall / {c['compute_cpu_median_s']} s CPU "
        f"(runs {c['compute_runs_s']}), "
        f"peak RSS {c['peak_rss_mb']} MB, tracemalloc peak {c['compute_tracemalloc_peak_mb']} MB"
    )
    print(
        f"  lines/file mean {c['lines_per_file_mean']} max {c['lines_per_file_max']}; "
        f"render all (est.) {c['render_all_files_s_est']} s; daemon signature all (est.) "
        f"{c['daemon_signature_all_files_s_est']} s"
    )
    print(f"  daemon signature() over all files, cold then warm: {c['daemon_signature_passes']}")
    if not args.skip_queries:
        results["queries"] = bench_queries(args.seed, args.query_people)
        q = results["queries"]
        for row in q["direct"]:
            print(
                f"  load_snapshot+compute_desired, {row['hosts']} hosts: "
                f"{row['queries_total']} queries ({row['queries_load_snapshot']} in load_snapshot)"
            )
        for row in q["cli_prepare"]:
            print(f"  engine load_inputs(), {row['hosts']} hosts: {row['queries']} queries")
        print(f"  independent of hosts: {q['independent_of_hosts']}")
    text = json.dumps(results, indent=2, default=str)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    ok = results["compute"]["target_time_met"] and results["compute"]["target_rss_met"]
    if "queries" in results:
        ok = ok and results["queries"]["independent_of_hosts"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
