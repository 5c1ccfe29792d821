"""A journal for one fleet host, for tests: no journald runs on the test machines.

``use_journal`` installs a ``journalctl`` stand-in that serves the host's real sshd log
(``sshd -e`` output) as journal entries of a root sshd that logged through syslog, with
journalctl's match rules (values of one field ORed, different fields ANDed), cursors,
``--after-cursor``, ``-n`` and ``--show-cursor``; then it restarts the host's sshd with
``SetEnv PATH=...`` so that the agent's helper on that host finds the stand-in first, and
points the host's ``auth_log`` at the journal. Logins made with the real ssh client on
that host thus reach keyward through its journal reader.
"""

from __future__ import annotations

import sys

from keyward.testing.fleet import FleetHost
from tests.agent_env import AgentEnv

JOURNALCTL = """#!{python}
import json, os, sys, time
LOG = {log!r}
args = sys.argv[1:]
matches, after, limit, output = {{}}, None, None, "short"
i = 0
while i < len(args):
    arg = args[i]
    if arg in ("-o", "-n", "--after-cursor"):
        value = args[i + 1]
        i += 2
        if arg == "-o":
            output = value
        elif arg == "-n":
            limit = int(value)
        else:
            after = int(value.rsplit("=", 1)[1])
        continue
    if "=" in arg and not arg.startswith("-"):
        field, value = arg.split("=", 1)
        matches.setdefault(field, set()).add(value)
    i += 1
with open(LOG, "rb") as handle:
    lines = handle.read().decode("utf-8", "replace").split("\\n")[:-1]
now = int(time.time() * 1e6)
entries = [
    {{
        "_COMM": "sshd",
        "_TRANSPORT": "syslog",
        "_UID": "0",
        "MESSAGE": text,
        "__CURSOR": "s=standin;i=%d" % n,
        "__REALTIME_TIMESTAMP": str(now),
    }}
    for n, text in enumerate(lines, 1)
]
entries = [e for e in entries if all(e.get(f) in v for f, v in matches.items())]
if after is not None:
    entries = [e for e in entries if int(e["__CURSOR"].rsplit("=", 1)[1]) > after]
elif limit is not None:
    entries = entries[-limit:] if limit else []
for entry in entries:
    print(entry["MESSAGE"] if output == "cat" else json.dumps(entry))
if "--show-cursor" in args and entries:
    print("-- cursor: " + entries[-1]["__CURSOR"])
"""

STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def use_journal(env: AgentEnv, host: FleetHost) -> None:
    """Make ``host``'s sshd log reach keyward through the journal reader (see above)."""
    bin_dir = host.dir / "journal-bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "journalctl"
    script.write_text(JOURNALCTL.format(python=sys.executable, log=str(host.log_file)))
    script.chmod(0o755)
    # The fleet writes its extra config into the sshd_config of each host it (re)starts:
    # set it for this one restart only.
    env.fleet.extra_config = f"SetEnv PATH={bin_dir}:{STANDARD_PATH}"
    try:
        env.fleet.stop_host(host.name)
        env.fleet.start_host(host.name)
    finally:
        env.fleet.extra_config = ""
    inventory = env.inventory / f"{env.spec.environment}.toml"
    text = inventory.read_text()
    line = f'auth_log = "{host.log_file}"'
    assert line in text
    inventory.write_text(text.replace(line, 'auth_log = "journal"'))
