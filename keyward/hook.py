"""Running an operator's command hook: ``[policy] alert_command`` and ``[notify] command``.

One way for both, because both run a command line an administrator wrote with data that
people can influence (names, reasons): the line is split as a shell would split it and run
**without a shell**, the JSON goes on stdin (never into the arguments), and it gets at most
``timeout`` seconds. A hook that fails is reported, never raised: an alert or a
notification must not stop the change it reports.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Mapping
from typing import Any

HOOK_TIMEOUT = 30.0  # seconds a hook may take


def run_hook(
    command: str,
    payload: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    timeout: float = HOOK_TIMEOUT,
) -> str | None:
    """Run ``command`` with ``payload`` as JSON on stdin; None if it exited 0, else why
    (one line: ``exited N: <first 300 characters of stderr>`` or ``failed: <reason>``).

    ``env``: the whole environment to run it in (None: this process's).
    """
    try:
        proc = subprocess.run(
            shlex.split(command),
            input=json.dumps(payload).encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
            env=dict(env) if env is not None else None,
        )
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return f"failed: {exc or type(exc).__name__}"
    if proc.returncode != 0:
        stderr = " ".join(proc.stderr.decode("utf-8", "replace").split())
        return f"exited {proc.returncode}: {stderr[:300]}"
    return None
