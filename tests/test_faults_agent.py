"""SIGKILL the agent at random points of a reconcile: nothing is lost, nothing is partial.

Each round changes every managed file (a new person in each role), starts
``python -m keyward reconcile``, kills it with SIGKILL after a random delay in [0, 1.5] s
(fixed seed), and checks that every file holds either its content from before the round
or the content the next full reconcile writes, and parses completely.  At the end every
host is in sync, no stale temp file is left and the audit chain verifies.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.agent_env import AgentEnv
from tests.test_faults_network import assert_whole, cli_env, managed_files, stale_temps

ROUNDS = 5
SEED = int(os.environ.get("KEYWARD_FAULT_SEED", "20240601"))


@pytest.mark.timeout(240)
def test_sigkill_at_random_points_loses_nothing(env: AgentEnv) -> None:
    rnd = random.Random(SEED)
    for i in range(8):
        env.person_with_key(f"base{i}", "devops" if i % 2 else "qa")
    env.kw.ok("reconcile")
    killed_mid_run = 0
    for round_ in range(ROUNDS):
        env.person_with_key(f"d{round_}", "devops")
        env.person_with_key(f"q{round_}", "qa")
        before = managed_files(env)
        proc = subprocess.Popen(
            [sys.executable, "-m", "keyward", "reconcile"],
            env=cli_env(env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        time.sleep(rnd.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_mid_run += 1
        proc.wait(timeout=30)
        middle = managed_files(env)
        for data in middle.values():
            if data is not None:
                assert_whole(data)
        env.kw.ok("reconcile")
        after = managed_files(env)
        for path, data in middle.items():
            assert data in (before[path], after[path]), (round_, path)
    assert killed_mid_run >= 3  # the kills really interrupted runs
    assert env.kw("plan").code == 0
    assert not stale_temps(env)
    assert env.kw.ok("audit", "verify").code == 0
    # Every key now on a host has its host.add event: a kill between a write and its
    # record must not leave a change on a host that the audit trail never mentions.
    adds = env.kw.ok("audit", "log", "--json", "--action", "host.add").json()
    recorded = {(e["subject"], e["details"]["person"]) for e in adds}
    missing = [
        (host.name, person)
        for host in env.hosts
        for person in [f"d{r}" for r in range(ROUNDS)] + [f"q{r}" for r in range(ROUNDS)]
        if (host.name, person) not in recorded
    ]
    assert not missing, missing
    for host in env.hosts:
        assert env.can_login(host, env.deploy, f"d{ROUNDS - 1}")
        assert env.can_login(host, env.app, f"q{ROUNDS - 1}")
