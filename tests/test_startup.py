"""Start-up: each command imports only what it uses, and the lazy command table is the truth.

No timing is asserted here (the machine is shared; bench/startup.py measures).  What makes a
command slow to start is importing SQLAlchemy/sqlmodel (registry), asyncssh (SSH) and
cryptography; these tests run the real CLI in a fresh interpreter and assert which of them
got imported.  The other half keeps ``keyward.cli.main.COMMANDS`` -- the table that lets
``--help`` list commands without importing them -- from going stale when a command module is
added or a docstring changes.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keyward.cli.main import COMMANDS
from tests.cli_runner import Keyward
from tests.keygen import make_key

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = ("sqlalchemy", "sqlmodel", "pydantic", "alembic")
SSH = ("asyncssh",)

# Runs the real CLI, then (at exit, after main()'s sys.exit) writes the imported modules.
RUN = """
import atexit, json, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from keyward.cli.main import main
main(sys.argv[2:])
"""

# Loads the named top-level commands through the lazy group only (or every command module
# first, with "--all") and prints each one's tree of (sub)command names and short help.
TREE = """
import importlib, json, pkgutil, sys
import click
import keyward.cli
from keyward.cli.main import COMMANDS, cli

def tree(cmd):
    out = {"help": cmd.get_short_help_str(10**6), "hidden": cmd.hidden}
    if isinstance(cmd, click.Group):
        out["sub"] = {n: tree(c) for n, c in sorted(cmd.commands.items())}
    return out

names = sys.argv[1:]
ctx = click.Context(cli, info_name="keyward")
result = {"lazy_help": cli.get_help(ctx)}
if names == ["--all"]:
    for info in pkgutil.iter_modules(keyward.cli.__path__):
        importlib.import_module(f"keyward.cli.{info.name}")
    names = sorted(COMMANDS)
result["trees"] = {n: tree(cli.get_command(ctx, n)) for n in names}
result["loaded_help"] = cli.get_help(ctx)
result["modules"] = sorted(m for m in sys.modules if m.startswith("keyward.cli."))
print(json.dumps(result))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_")}
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = "100"
    return env


def imported_by(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> set[str]:
    """Run ``keyward ARGS`` in a fresh interpreter; return the modules it imported."""
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(out), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), **(env or {})},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return set(json.loads(out.read_text()))


def loaded(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in prefixes or m.startswith(prefixes))


def tree_of(*names: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", TREE, *names],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


# -- which modules each command imports ---------------------------------------


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["-h"]])
def test_version_and_help_import_no_registry_agent_or_ssh(tmp_path: Path, args: list[str]) -> None:
    modules = imported_by(tmp_path, *args)
    assert loaded(modules, (*REGISTRY, *SSH, "cryptography", "structlog")) == []
    # Not even keyward's own registry, agent or command modules: only main, its context and
    # the console settings the global options fill in (stdlib and click only).
    assert loaded(modules, ("keyward.registry", "keyward.agent", "keyward.daemon", "rich")) == []
    assert sorted(m for m in modules if m.startswith("keyward.cli.")) == [
        "keyward.cli.context",
        "keyward.cli.main",
        "keyward.cli.output",
    ]


def test_key_check_imports_no_registry_or_ssh(tmp_path: Path) -> None:
    private, _ = make_key(tmp_path, "ed25519", passphrase="correct horse")
    modules = imported_by(tmp_path, "key", "check", str(private))
    assert loaded(modules, (*REGISTRY, *SSH, "structlog")) == []
    assert loaded(modules, ("keyward.registry.store", "keyward.agent")) == []


def test_key_check_reads_only_the_inventorys_policy(tmp_path: Path) -> None:
    """The key policy is in keyward.toml: ``key check`` neither loads the loader nor
    depends on the environment files being valid."""
    private, _ = make_key(tmp_path, "ed25519", passphrase="correct horse")
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "keyward.toml").write_text("[policy]\nmin_rsa_bits = 4096\n")
    (inventory / "production.toml").write_text("this is [not toml\n")
    modules = imported_by(tmp_path, "--inventory", str(inventory), "key", "check", str(private))
    assert loaded(modules, ("keyward.inventory.load", "keyward.inventory.hosts")) == []
    # Only the policy's reader: not the inventory model or the other settings' readers.
    assert "keyward.inventory.policy" in modules
    assert loaded(modules, ("keyward.inventory.model", "keyward.inventory.settings")) == []


def test_inventory_check_imports_no_registry_or_ssh(tmp_path: Path) -> None:
    modules = imported_by(tmp_path, "--inventory", str(ROOT / "inventory"), "inventory", "check")
    assert loaded(modules, (*REGISTRY, *SSH, "structlog")) == []
    assert loaded(modules, ("keyward.registry.store", "keyward.agent")) == []


def test_registry_read_imports_no_ssh(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    kw = Keyward(url, str(tmp_path / "no-inventory"))
    kw.ok("init")
    kw.ok("person", "add", "alice", "--name", "Alice Example")
    modules = imported_by(tmp_path, "--db", url, "key", "list")
    assert "sqlmodel" in modules  # it did read the registry
    assert loaded(modules, (*SSH, "keyward.agent", "keyward.daemon", "alembic")) == []


def test_person_list_on_sqlite_reads_without_the_orm(tmp_path: Path) -> None:
    """The one read the issue timed: no SQLAlchemy, sqlmodel or pydantic (quickread)."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    kw = Keyward(url, str(tmp_path / "no-inventory"))
    kw.ok("init")
    kw.ok("person", "add", "alice", "--name", "Alice Example")
    modules = imported_by(tmp_path, "--db", url, "person", "list")
    assert "keyward.registry.quickread" in modules
    assert loaded(modules, (*REGISTRY, *SSH, "structlog", "keyward.registry.store")) == []


def test_key_and_person_load_whole_from_their_own_module() -> None:
    """``key rotate``/``key attest`` and ``person purge``/``clear-alert`` once were attached
    from other command modules; each group now owns all its subcommands."""
    loaded = tree_of("key", "person")
    key = loaded["trees"]["key"]["sub"]  # type: ignore[index]
    person = loaded["trees"]["person"]["sub"]  # type: ignore[index]
    assert {"add", "rotate", "attest", "check", "revoke"} <= set(key)
    assert {"purge", "clear-alert", "list", "rehire"} <= set(person)
    commands = {m for m in loaded["modules"] if m.endswith("_cmds")}  # type: ignore[attr-defined]
    assert commands == {"keyward.cli.key_cmds", "keyward.cli.person_cmds"}


# -- the command table cannot go stale ----------------------------------------


@pytest.fixture(scope="module")
def everything() -> dict[str, object]:
    """Every module of keyward.cli imported, then every command loaded."""
    return tree_of("--all")


def test_table_names_every_top_level_command(everything: dict[str, object]) -> None:
    """Every module that registers commands is in COMMANDS, with every command it registers.

    A new command module (with ``register(cli)``) missing from the table fails here.
    """
    import importlib
    import pkgutil

    import click

    import keyward.cli

    registered: dict[str, str] = {}
    for info in pkgutil.iter_modules(keyward.cli.__path__):
        module = importlib.import_module(f"keyward.cli.{info.name}")
        if not callable(getattr(module, "register", None)):
            continue
        scratch = click.Group()
        module.register(scratch)
        for name in scratch.commands:
            registered[name] = info.name
    assert sorted(registered) == sorted(COMMANDS)
    for name, module_name in registered.items():
        assert module_name == COMMANDS[name].module, name
    assert sorted(everything["trees"]) == sorted(COMMANDS)  # type: ignore[call-overload]


def test_table_help_is_the_commands_own(everything: dict[str, object]) -> None:
    """``keyward --help`` without importing the commands reads exactly as with them."""
    trees: dict[str, dict[str, object]] = everything["trees"]  # type: ignore[assignment]
    for name, entry in COMMANDS.items():
        assert entry.help == trees[name]["help"], name
    assert everything["lazy_help"] == everything["loaded_help"]
    assert "Commands:" in str(everything["lazy_help"])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_loads_whole_from_its_table_entry(
    name: str, everything: dict[str, object]
) -> None:
    """Loading one command from its entry alone gives every subcommand it has when all
    modules are loaded: a module that attaches subcommands to another module's group
    fails here."""
    alone = tree_of(name)
    assert alone["trees"] == {name: everything["trees"][name]}  # type: ignore[index]
    assert f"keyward.cli.{COMMANDS[name].module}" in alone["modules"]  # type: ignore[operator]


# No command module is imported but by main's lazy group.
IMPORTABLE_COMMAND_MODULES: set[str] = set()


def test_command_modules_import_no_other_command_module() -> None:
    """Helpers shared by several commands live in keyward.cli's shared modules (common,
    checkpoints, output, parsing, context), not in one command module that others import."""
    sources = {
        f"keyward.cli.{path.stem}": ast.parse(path.read_text())
        for path in sorted((ROOT / "keyward" / "cli").glob("*.py"))
    }
    commands = {
        name
        for name, tree in sources.items()
        if any(isinstance(n, ast.FunctionDef) and n.name == "register" for n in tree.body)
    }
    assert {"keyward.cli.key_cmds", "keyward.cli.person_cmds"} <= commands
    for name in sorted(commands):
        imported: set[str] = set()
        for node in ast.walk(sources[name]):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
        assert (imported & commands) - IMPORTABLE_COMMAND_MODULES - {name} == set(), name


def test_checkpoint_option_names_match_the_library() -> None:
    """cli.checkpoints copies three names so defining its options imports no cryptography."""
    from keyward.cli import checkpoints
    from keyward.registry import checkpoint

    assert checkpoints.DIR_ENV == checkpoint.DIR_ENV
    assert checkpoints.TRUSTED_ENV == checkpoint.TRUSTED_ENV
    assert checkpoints.KEY_NAME == checkpoint.KEY_NAME


# -- logging is set up lazily but exactly as configured ------------------------

LOG = """
import sys
from keyward.logs import configure, get_logger
configure(json=True, level="warning")
print("structlog" in sys.modules)
get_logger(host="h1").info("not_shown")
get_logger(host="h1").warning("shown_event")
"""


def test_logging_configured_without_importing_structlog_until_a_log() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LOG + "print('rich' in sys.modules)\nimport rich\n"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    # structlog only at the first log; rich (its optional pretty tracebacks) not even then,
    # yet still importable by anyone else.
    assert proc.stdout.split() == ["False", "False"]
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [(line["event"], line["level"], line["host"]) for line in lines] == [
        ("shown_event", "warning", "h1")
    ]


def test_bad_log_level_fails_at_configure() -> None:
    from keyward.logs import configure

    with pytest.raises(KeyError):
        configure(level="loud")


# -- the demo ------------------------------------------------------------------

DEMO = """
import json, sys
launched = []
def hook(event, args):
    if event == "subprocess.Popen":
        launched.append([str(a) for a in args[1]] if isinstance(args[1], list) else [str(args[1])])
sys.addaudithook(hook)
from keyward.cli.main import main
try:
    main(["demo"])
finally:
    open(sys.argv[1], "w").write(json.dumps(launched))
"""


@pytest.mark.fleet
@pytest.mark.timeout(300)
def test_demo_starts_no_interpreter_per_step(tmp_path: Path) -> None:
    """Each demo step runs keyward's main() in the demo's process: a new interpreter per
    step paid the imports 18 times, most of the demo's 22-31 s.  Logins are still checked
    by separate real ``ssh`` clients when sshd is used."""
    from keyward.testing.sshd import find_sshd

    out = tmp_path / "launched.json"
    proc = subprocess.run(
        [sys.executable, "-c", DEMO, str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo finished" in proc.stdout
    assert proc.stdout.count(": logged in") == 3
    launched: list[list[str]] = json.loads(out.read_text())
    assert [argv for argv in launched if argv[0] == sys.executable or "keyward" in argv] == []
    if find_sshd() is not None:
        assert sum(Path(argv[0]).name == "ssh" for argv in launched) == 9


@pytest.mark.fleet
def test_demo_hosts_skip_the_accounts_rc_files(tmp_path: Path) -> None:
    """The demo fleet's sessions get an empty $HOME, so a slow ~/.bashrc does not run in
    every agent session and login; they still start in the account's real home."""
    import getpass
    import pwd

    from keyward.cli import demo
    from keyward.testing.fleet import safe_base_dir
    from keyward.testing.keypairs import make_ed25519
    from keyward.testing.ssh_client import ssh_login

    if demo.find_sshd() is None:
        pytest.skip("needs OpenSSH sshd")
    user = getpass.getuser()
    base = safe_base_dir("keyward-test-startup-")
    try:
        with demo._fleet(demo.OPENSSH, base, 1, user) as fleet:
            key = make_ed25519(tmp_path / "id", "t")
            host = fleet.hosts[0]
            host.authorized_keys_path(user).write_text(Path(f"{key}.pub").read_text())
            known = fleet.write_known_hosts(tmp_path / "known_hosts")
            done = ssh_login(host, user, key, known, 'echo "$HOME"; pwd', timeout=30)
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    home, cwd = done.stdout.split()
    assert home == str(base / "empty-home")
    assert cwd == pwd.getpwnam(user).pw_dir


# -- names imported only for the type checker -----------------------------------


def _runtime_uses_of_type_only_names(source: str) -> list[tuple[int, str]]:
    """Names a function uses at run time that its module imports only under TYPE_CHECKING.

    Lazy imports move module-level imports under ``if TYPE_CHECKING:`` for annotations;
    a function that then uses such a name without importing it itself fails only when
    run (NameError, exit 70), and ruff cannot see it: the name is defined for it.
    """
    tree = ast.parse(source)
    type_only: set[str] = set()
    runtime: set[str] = set()

    def imported(node: ast.AST) -> set[str]:
        return {
            (alias.asname or alias.name).split(".")[0]
            for n in ast.walk(node)
            if isinstance(n, ast.Import | ast.ImportFrom)
            for alias in n.names
        }

    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only |= set().union(*(imported(n) for n in node.body))
            runtime |= set().union(*(imported(n) for n in node.orelse))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            runtime |= imported(node)
    type_only -= runtime
    found = []
    enclosing: dict[int, list[ast.AST]] = {}
    for outer in ast.walk(tree):
        if isinstance(outer, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(outer):
                if inner is not outer:
                    enclosing.setdefault(id(inner), []).append(outer)
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for fn in functions:
        annotations: set[int] = set()
        for n in ast.walk(fn):
            if isinstance(n, ast.arg) and n.annotation is not None:
                annotations |= {id(x) for x in ast.walk(n.annotation)}
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.returns is not None:
                annotations |= {id(x) for x in ast.walk(n.returns)}
            if isinstance(n, ast.AnnAssign):
                annotations |= {id(x) for x in ast.walk(n.annotation)}
        local = imported(fn).union(*(imported(o) for o in enclosing.get(id(fn), [])))
        for n in ast.walk(fn):
            if (
                isinstance(n, ast.Name)
                and isinstance(n.ctx, ast.Load)
                and n.id in type_only
                and n.id not in local
                and id(n) not in annotations
            ):
                found.append((n.lineno, n.id))
    return found


def test_no_function_uses_a_name_imported_only_for_type_checking() -> None:
    package = Path(__file__).resolve().parent.parent / "keyward"
    problems = [
        f"{path.relative_to(package.parent)}:{line}: {name}"
        for path in sorted(package.rglob("*.py"))
        for line, name in _runtime_uses_of_type_only_names(path.read_text())
    ]
    assert problems == []


@pytest.mark.parametrize(
    ("source", "found"),
    [
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from x import ops\n"
            "def f():\n    return ops.g()\n",
            [(5, "ops")],
        ),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from x import ops\n"
            "def f():\n    from x import ops\n    return ops.g()\n",
            [],
        ),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from x import Ops\n"
            "def f(a: Ops) -> Ops:\n    b: Ops = a\n    return b\n",
            [],
        ),
    ],
)
def test_type_only_name_check(source: str, found: list[tuple[int, str]]) -> None:
    assert _runtime_uses_of_type_only_names(source) == found
