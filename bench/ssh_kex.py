"""Client CPU of one OpenSSH connection: the default key exchange vs curve25519-sha256.

Why the plain OpenSSH floor of bench/ansible/compare.py is slow on this machine: one
loopback sshd (keyward.testing.localfleet), 30 sequential ``ssh root@host cat /etc/hostname``
with each key exchange, the client's CPU from RUSAGE_CHILDREN.  Run as root:

    python bench/ssh_kex.py
"""

import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

from keyward.testing.fleet import safe_base_dir
from keyward.testing.localfleet import LocalFleet
from keyward.testing.ssh_client import ssh_command

base = safe_base_dir("kw-kex-")
try:
    with LocalFleet(base, 1) as fleet:
        host = fleet.hosts[0]
        key = base / "id"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        ak = host.authorized_keys_path("root")
        ak.parent.mkdir(parents=True, exist_ok=True)
        ak.write_text(Path(str(key) + ".pub").read_text())
        os.chmod(ak, 0o644)
        kh = fleet.write_known_hosts(base / "known_hosts")
        v = subprocess.run(
            ssh_command(host, "root", key, kh, "true")[:-2]
            + ["-v", f"root@{host.address}", "true"],
            capture_output=True,
            text=True,
        )
        print([l for l in v.stderr.splitlines() if "kex: algorithm" in l])
        for label, extra in (
            ("default", []),
            ("curve25519-sha256", ["-o", "KexAlgorithms=curve25519-sha256"]),
        ):
            cmd = ssh_command(host, "root", key, kh, "cat /etc/hostname")
            cmd = cmd[:1] + extra + cmd[1:]
            n = 30
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            for _ in range(n):
                subprocess.run(cmd, capture_output=True, check=True)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t1 = time.perf_counter()
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            print(
                f"{label}: client CPU {cpu / n * 1000:.1f} ms per connection, wall {(t1 - t0) / n * 1000:.1f} ms"
            )
finally:
    shutil.rmtree(base, ignore_errors=True)
