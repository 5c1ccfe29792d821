"""Run the real keyward CLI in-process, the way a user's shell would see it.

``main()`` is the same function the ``keyward`` console script calls, so the
exit codes and the one-line errors are exactly what users get.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from click.testing import CliRunner

from keyward.cli.main import main


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}"


class Keyward:
    """A CLI bound to one registry and inventory, acting as ``actor``."""

    def __init__(self, db_url: str, inventory: str, env: Mapping[str, str] | None = None) -> None:
        self.db_url = db_url
        self.inventory = inventory
        self.env = dict(env or {})

    def __call__(
        self,
        *args: str,
        actor: str = "admin",
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        runner = CliRunner()
        full_env = {
            "KEYWARD_DB": self.db_url,
            "KEYWARD_INVENTORY": self.inventory,
            "KEYWARD_ACTOR": actor,
            **self.env,
            **(env or {}),
        }
        code = 0
        with runner.isolation(input=input, env=full_env) as streams:
            out, err = streams[0], streams[1]
            try:
                main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        return Result(code, out.getvalue().decode(), err.getvalue().decode())

    def ok(self, *args: str, **kwargs: Any) -> Result:
        result = self(*args, **kwargs)
        assert result.code == 0, str(result)
        return result

    def fails(self, *args: str, code: int = 2, **kwargs: Any) -> Result:
        result = self(*args, **kwargs)
        assert result.code == code, str(result)
        assert "Traceback" not in result.err, str(result)
        return result
