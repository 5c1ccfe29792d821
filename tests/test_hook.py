"""The operators' command hook: argv not shell, JSON on stdin, bounded, failures reported."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from keyward.hook import run_hook

PY = sys.executable


def test_the_payload_is_json_on_stdin_and_the_environment_is_passed(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    script = (
        "import json, os, sys; "
        "seen = [json.load(sys.stdin), os.environ.get('KEYWARD_EVENT')]; "
        f"json.dump(seen, open({str(out)!r}, 'w'))"
    )
    env = {**os.environ, "KEYWARD_EVENT": "test"}
    assert run_hook(f"{PY} -c {json.dumps(script)}", {"person": "alice; rm -rf /"}, env) is None
    assert json.loads(out.read_text()) == [{"person": "alice; rm -rf /"}, "test"]


def test_no_shell_reads_the_command_line(tmp_path: Path) -> None:
    marker = tmp_path / "should-not-exist"
    error = run_hook(f"true; touch {marker}", {})
    assert error is not None and error.startswith("failed: ")  # 'true;' is no program
    assert not marker.exists()


def test_failures_are_one_line_never_raised() -> None:
    script = "import sys; sys.stderr.write('bad\\n  thing\\n'); sys.exit(3)"
    assert run_hook(f"{PY} -c {json.dumps(script)}", {}) == "exited 3: bad thing"
    missing = run_hook("/nonexistent/hook", {})
    assert missing is not None and missing.startswith("failed: ")
    slow = run_hook(f"{PY} -c 'import time; time.sleep(5)'", {}, timeout=0.5)
    assert slow is not None and slow.startswith("failed: ") and "\n" not in slow
