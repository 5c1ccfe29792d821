"""The TOML inventory: the shipped example, located problems, matching and selection."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from keyward.cli.inventory_summary import summarize
from keyward.errors import InventoryError, KeywardError, UsageError
from keyward.inventory import (
    AccessRule,
    Host,
    Inventory,
    check_inventory,
    find_inventory_dir,
    load_inventory,
    normalise_authorized_keys,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "inventory"
BREAK_GLASS_B64 = "AAAAC3NzaC1lZDI1NTE5AAAAINrgThJFa0bsAH2QkRlXG353PUqm0UETPf0CR4LJ+3Gi"
BREAK_GLASS = f"ssh-ed25519 {BREAK_GLASS_B64} vault-escrow"

BASE_ENV = """\
[environment]
name = "production"
min_attestation = "proof"

[[hosts]]
name = "web-1"
address = "web-1.example.com"
groups = ["web"]
accounts = ["deploy"]
{host_extra}
[[hosts]]
name = "db-1"
address = "db-1.example.com"
groups = ["db"]

[[access]]
roles = ["devops"]
accounts = ["deploy"]
groups = ["web"]
{access_extra}
{tail}"""


def env_text(host_extra: str = "", access_extra: str = "", tail: str = "") -> str:
    return BASE_ENV.format(host_extra=host_extra, access_extra=access_extra, tail=tail)


def write(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def problems_of(root: Path) -> list[str]:
    inventory, problems = check_inventory(root)
    assert (inventory is None) == bool(problems)
    return [str(problem) for problem in problems]


# --- the shipped example -------------------------------------------------------


def test_shipped_example_validates() -> None:
    inventory, problems = check_inventory(EXAMPLE)
    assert problems == []
    assert inventory is not None
    assert [env.name for env in inventory.environments] == [
        "preproduction",
        "production",
        "test",
    ]
    production = inventory.environment("production")
    assert production.min_attestation == "proof"
    assert all(h.authorized_keys == ("/etc/ssh/authorized_keys.d/%u",) for h in production.hosts)
    assert {role for rule in production.access for role in rule.roles} == {"devops"}
    (glass,) = production.break_glass
    assert glass.key.comment == "vault-escrow"
    assert glass.accounts == ("root",)
    assert inventory.agent.known_hosts == EXAMPLE / "known_hosts"
    assert inventory.agent.identity_pub == Path("/etc/keyward/agent_ed25519.pub")
    test_roles = {role for rule in inventory.environment("test").access for role in rule.roles}
    assert test_roles == {"devops", "qa", "developers"}
    assert inventory.host("test-web-1").authorized_keys == (
        "%h/.ssh/authorized_keys",
        "%h/.ssh/authorized_keys2",
    )
    assert inventory.host("test-acme-1").customer == "acme"
    assert inventory.host("pre-reports-1").mode == "managed-block"
    assert inventory.host("pre-reports-1").managed_accounts == ("root",)
    summary = summarize(inventory)
    assert "3 environments" in summary
    assert "production (production.toml): min_attestation proof" in summary


def test_every_matched_host_manages_the_rule_accounts_in_example() -> None:
    inventory = load_inventory(EXAMPLE)
    for host in inventory.hosts():
        for rule in inventory.access_for(host):
            assert set(rule.accounts) <= set(host.managed_accounts)
        for glass in inventory.break_glass_for(host):
            assert set(glass.accounts) <= set(host.managed_accounts)


# --- located problems, one environment file -------------------------------------

ENV_CASES: list[tuple[str, str, str]] = [
    (
        "port-zero",
        env_text(host_extra="port = 0"),
        "production.toml: hosts[0].port: must be an integer 1-65535",
    ),
    (
        "port-string",
        env_text(host_extra='port = "22"'),
        "production.toml: hosts[0].port: must be an integer 1-65535",
    ),
    (
        "auth-log-trusted-string",
        env_text(host_extra='auth_log_trusted = "yes"'),
        "production.toml: hosts[0].auth_log_trusted: must be true or false, not a string",
    ),
    (
        "port-bool",
        env_text(host_extra="port = true"),
        "production.toml: hosts[0].port: must be an integer 1-65535",
    ),
    (
        "unknown-field",
        env_text(host_extra="portt = 22"),
        "production.toml: hosts[0]: unknown field 'portt' (did you mean 'port'?)",
    ),
    (
        "unknown-table",
        env_text(tail="[hostz]\n"),
        "production.toml: unknown field 'hostz' (did you mean 'hosts'?)",
    ),
    (
        "bad-mode",
        env_text(host_extra='mode = "append"'),
        "production.toml: hosts[0].mode: 'append' is not one of exclusive, managed-block",
    ),
    (
        "bad-attestation",
        env_text().replace('"proof"', '"strong"'),
        "production.toml: environment.min_attestation: 'strong' is not one of "
        "none, admin, proof, sk",
    ),
    (
        "missing-attestation",
        env_text().replace('min_attestation = "proof"', ""),
        "production.toml: environment: missing required field 'min_attestation'",
    ),
    (
        "missing-environment-table",
        env_text().replace('[environment]\nname = "production"\nmin_attestation = "proof"', ""),
        "production.toml: missing table [environment] (needs at least min_attestation)",
    ),
    (
        "toml-syntax",
        '[environment]\nmin_attestation = = "proof"\n',
        "production.toml: line 2, column 19: TOML syntax error: Invalid value",
    ),
    (
        "toml-duplicate-key",
        '[environment]\nmin_attestation = "proof"\nmin_attestation = "sk"\n',
        "production.toml: line 3, column 23: TOML syntax error: Cannot overwrite a value",
    ),
    (
        "unknown-group",
        env_text().replace('groups = ["web"]\n\n', 'groups = ["web"]\n\n', 1)
        + '\n[[access]]\nroles = ["devops"]\naccounts = ["root"]\ngroups = ["cache"]\n',
        "production.toml: access[1].groups: no host of this environment is in group 'cache' "
        "(groups: db, web)",
    ),
    (
        "unknown-host",
        env_text(tail='[[access]]\nroles = ["devops"]\naccounts = ["root"]\nhosts = ["web-9"]\n'),
        "production.toml: access[1].hosts: host 'web-9' is not in this environment",
    ),
    (
        "empty-groups",
        env_text(access_extra="hosts = []"),
        "production.toml: access[0].hosts: must not be empty (leave the field out instead)",
    ),
    (
        "account-not-posix",
        env_text().replace('accounts = ["deploy"]\n', 'accounts = ["Deploy"]\n', 1),
        "production.toml: hosts[0].accounts: 'Deploy' is not a valid account name "
        "(POSIX login: [a-z_][a-z0-9_.-]{0,31})",
    ),
    (
        "login-not-posix",
        env_text(host_extra='login = "root;id"'),
        "production.toml: hosts[0].login: 'root;id' is not a valid account name "
        "(POSIX login: [a-z_][a-z0-9_.-]{0,31})",
    ),
    (
        "account-not-managed",
        env_text(tail='[[access]]\nroles = ["devops"]\naccounts = ["deploy"]\n'),
        "production.toml: access[1].accounts: account 'deploy' is not managed on host(s) db-1; "
        "add it to their accounts or narrow the rule with groups/hosts",
    ),
    (
        "access-missing-roles",
        env_text(tail='[[access]]\naccounts = ["root"]\n'),
        "production.toml: access[1]: missing required field 'roles'",
    ),
    (
        "authorized-keys-token",
        env_text(host_extra='authorized_keys = "/etc/ssh/keys/%d"'),
        "production.toml: hosts[0].authorized_keys: '/etc/ssh/keys/%d': unknown token '%d'; "
        "only %h %u %U %% are expanded",
    ),
    (
        "authorized-keys-dotdot",
        env_text(host_extra='authorized_keys = "%h/../root/.ssh/authorized_keys"'),
        "production.toml: hosts[0].authorized_keys: '%h/../root/.ssh/authorized_keys': "
        "must not contain empty, '.' or '..' path components",
    ),
    (
        "authorized-keys-h-not-first",
        env_text(host_extra='authorized_keys = "/keys%h"'),
        "production.toml: hosts[0].authorized_keys: '/keys%h': %h may only start the pattern, "
        "as %h/...",
    ),
    (
        "authorized-keys-space",
        env_text(host_extra='authorized_keys = ".ssh/authorized_keys .ssh/x"'),
        "production.toml: hosts[0].authorized_keys: '.ssh/authorized_keys .ssh/x': "
        "must not contain whitespace or control characters",
    ),
    (
        "authorized-keys-type",
        env_text(host_extra="authorized_keys = 3"),
        "production.toml: hosts[0].authorized_keys: must be a string or an array of strings",
    ),
    (
        "authorized-keys-shared",
        env_text(host_extra='authorized_keys = "/etc/ssh/shared_keys"'),
        "production.toml: hosts[0].authorized_keys: '/etc/ssh/shared_keys' has no %h, %u or %U, "
        "so all 2 managed accounts would share one file",
    ),
    (
        "address-space",
        env_text().replace('"web-1.example.com"', '"web-1 .example.com"'),
        "production.toml: hosts[0].address: must not contain whitespace",
    ),
    (
        "address-empty",
        env_text().replace('"web-1.example.com"', '""'),
        "production.toml: hosts[0].address: must not be empty",
    ),
    (
        "address-control",
        env_text().replace('"web-1.example.com"', '"web-1\\u0000"'),
        "production.toml: hosts[0].address: must not contain control characters",
    ),
    (
        "address-option",
        env_text().replace('"web-1.example.com"', '"-oProxyCommand=id"'),
        "production.toml: hosts[0].address: must not start with '-'",
    ),
    (
        "duplicate-host-in-file",
        env_text().replace('name = "db-1"', 'name = "web-1"'),
        "production.toml: hosts[1].name: host 'web-1' is already defined in "
        "production.toml: hosts[0]",
    ),
    (
        "duplicate-endpoint",
        env_text().replace('"db-1.example.com"', '"WEB-1.example.com"'),
        "production.toml: hosts[1].address: WEB-1.example.com:22 is already used by "
        "host 'web-1' (production.toml)",
    ),
    (
        "bad-host-name",
        env_text().replace('name = "db-1"', 'name = "db 1"'),
        "production.toml: hosts[1].name: 'db 1' is not a valid host name",
    ),
    (
        "bad-option-environment",
        env_text(access_extra="options = ['environment=\"LD_PRELOAD=x\"']"),
        "production.toml: access[0].options: option 'environment' is not allowed: "
        "needs PermitUserEnvironment, which lets a key holder set LD_PRELOAD",
    ),
    (
        "bad-option-injection",
        env_text(access_extra='options = [\'from="a\\\\"" ,command="x"\']'),
        "production.toml: access[0].options: the value of 'from' must not contain a double "
        "quote or backslash",
    ),
    (
        "bad-option-expiry",
        env_text(access_extra="options = ['expiry-time=\"20300101\"']"),
        "production.toml: access[0].options: option 'expiry-time' is not allowed: "
        "keyward sets expiry-time itself from key expiry and grant until",
    ),
    (
        "bad-option-contradiction",
        env_text(access_extra='options = ["pty", "no-pty"]'),
        "production.toml: access[0].options: options 'no-pty' and 'pty' contradict each other",
    ),
    (
        "break-glass-bad-key",
        env_text(
            tail='[[break_glass]]\naccounts = ["root"]\n'
            f'key = "ssh-ed25519 {BREAK_GLASS_B64[:-4]} vault-escrow"\n'
        ),
        "production.toml: break_glass[0].key: ",
    ),
    (
        "break-glass-unmanaged-account",
        env_text(tail=f'[[break_glass]]\naccounts = ["deploy"]\nkey = "{BREAK_GLASS}"\n'),
        "production.toml: break_glass[0].accounts: account 'deploy' is not managed on "
        "host(s) db-1; add it to their accounts or narrow the rule with groups/hosts",
    ),
    (
        "break-glass-missing-key",
        env_text(tail='[[break_glass]]\naccounts = ["root"]\n'),
        "production.toml: break_glass[0]: missing required field 'key'",
    ),
    (
        "hosts-not-array-of-tables",
        '[environment]\nmin_attestation = "sk"\nhosts = ["web-1"]\n',
        "production.toml: environment: unknown field 'hosts'",
    ),
    (
        "hosts-is-not-tables",
        'hosts = ["web-1"]\n[environment]\nmin_attestation = "sk"\n',
        "production.toml: hosts: must be an array of tables [[hosts]]",
    ),
    (
        "rule-without-hosts",
        '[environment]\nmin_attestation = "sk"\n[[access]]\nroles = ["a"]\naccounts = ["root"]\n',
        "production.toml: access[0]: matches no host",
    ),
    (
        "customer-type",
        env_text().replace('name = "production"', 'name = "production"\ncustomer = 7'),
        "production.toml: environment.customer: must be a string, not an integer",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [(text, expected) for _, text, expected in ENV_CASES],
    ids=[case_id for case_id, _, _ in ENV_CASES],
)
def test_located_problem(tmp_path: Path, text: str, expected: str) -> None:
    root = write(tmp_path / "inv", {"production.toml": text})
    found = problems_of(root)
    assert any(problem.startswith(expected) for problem in found), found
    for problem in found:
        assert BREAK_GLASS_B64[:-4] not in problem


def test_base_environment_is_valid(tmp_path: Path) -> None:
    root = write(tmp_path / "inv", {"production.toml": env_text()})
    assert problems_of(root) == []


# --- problems across files -----------------------------------------------------

SMALL_ENV = """\
[environment]
name = "{name}"
min_attestation = "none"

[[hosts]]
name = "{host}"
address = "{address}"
"""

CROSS_CASES: list[tuple[str, dict[str, str], str]] = [
    (
        "duplicate-host-across-files",
        {
            "a.toml": SMALL_ENV.format(name="a", host="web-1", address="a.example.com"),
            "b.toml": SMALL_ENV.format(name="b", host="web-1", address="b.example.com"),
        },
        "b.toml: hosts[0].name: host 'web-1' is already defined in a.toml: hosts[0]",
    ),
    (
        "duplicate-environment",
        {
            "a.toml": SMALL_ENV.format(name="prod", host="web-1", address="a.example.com"),
            "b.toml": SMALL_ENV.format(name="prod", host="web-2", address="b.example.com"),
        },
        "b.toml: environment.name: environment 'prod' is already defined in a.toml",
    ),
    (
        "duplicate-endpoint-across-files",
        {
            "a.toml": SMALL_ENV.format(name="a", host="web-1", address="x.example.com"),
            "b.toml": SMALL_ENV.format(name="b", host="web-2", address="x.example.com"),
        },
        "b.toml: hosts[0].address: x.example.com:22 is already used by host 'web-1' (a.toml)",
    ),
    (
        "host-in-other-environment",
        {
            "a.toml": SMALL_ENV.format(name="a", host="web-1", address="a.example.com"),
            "b.toml": SMALL_ENV.format(name="b", host="web-2", address="b.example.com")
            + '[[access]]\nroles = ["x"]\naccounts = ["root"]\nhosts = ["web-1"]\n',
        },
        "b.toml: access[0].hosts: host 'web-1' is not in this environment "
        "(it is defined in a.toml: hosts[0])",
    ),
    (
        "settings-bad-concurrency",
        {
            "keyward.toml": "[agent]\nconcurrency = 0\n",
            "a.toml": SMALL_ENV.format(name="a", host="web-1", address="a.example.com"),
        },
        "keyward.toml: agent.concurrency: must be an integer 1-10000",
    ),
    (
        "settings-unknown-field",
        {
            "keyward.toml": "[agent]\nidentiy = 'x'\n",
            "a.toml": SMALL_ENV.format(name="a", host="web-1", address="a.example.com"),
        },
        "keyward.toml: agent: unknown field 'identiy' (did you mean 'identity'?)",
    ),
    (
        "settings-dsa",
        {
            "keyward.toml": "[policy]\nallowed_key_types = ['ssh-ed25519', 'ssh-dss']\n",
            "a.toml": SMALL_ENV.format(name="a", host="web-1", address="a.example.com"),
        },
        "keyward.toml: policy.allowed_key_types: ssh-dss (DSA) keys cannot be allowed",
    ),
    (
        "settings-weak-rsa",
        {
            "keyward.toml": "[policy]\nmin_rsa_bits = 1024\n",
            "a.toml": SMALL_ENV.format(name="a", host="web-1", address="a.example.com"),
        },
        "keyward.toml: policy.min_rsa_bits: must be an integer 2048-16384",
    ),
    (
        "settings-timeout",
        {
            "keyward.toml": "[agent]\nconnect_timeout = 0\n",
            "a.toml": SMALL_ENV.format(name="a", host="web-1", address="a.example.com"),
        },
        "keyward.toml: agent.connect_timeout: must be a number of seconds above 0 up to 3600",
    ),
    (
        "settings-python",
        {
            "keyward.toml": "[agent]\npython = 'python3 -c evil'\n",
            "a.toml": SMALL_ENV.format(name="a", host="web-1", address="a.example.com"),
        },
        "keyward.toml: agent.python: must be a command name or absolute path, no spaces",
    ),
    (
        "no-environment-files",
        {"keyward.toml": "[agent]\n"},
        "no environment files (*.toml other than keyward.toml)",
    ),
    (
        "not-utf8",
        {"a.toml": "name = '\udcff'"},
        "a.toml: is not valid UTF-8",
    ),
]


@pytest.mark.parametrize(
    ("files", "expected"),
    [(files, expected) for _, files, expected in CROSS_CASES],
    ids=[case_id for case_id, _, _ in CROSS_CASES],
)
def test_cross_file_problem(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    root = tmp_path / "inv"
    root.mkdir()
    for name, text in files.items():
        (root / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    found = problems_of(root)
    assert any(expected in problem for problem in found), found


def test_missing_directory_is_a_problem(tmp_path: Path) -> None:
    found = problems_of(tmp_path / "nowhere")
    assert found == [f"{tmp_path / 'nowhere'}: inventory directory does not exist"]


def test_missing_settings_file_means_defaults(tmp_path: Path) -> None:
    root = write(tmp_path / "inv", {"production.toml": env_text()})
    inventory = load_inventory(root)
    assert inventory.agent.identity == Path("/etc/keyward/agent_ed25519")
    assert inventory.agent.identity_pub == Path("/etc/keyward/agent_ed25519.pub")
    assert inventory.agent.known_hosts == root.absolute() / "known_hosts"
    assert inventory.agent.concurrency == 100
    assert inventory.agent.connect_timeout == 10.0
    assert inventory.policy.max_key_age_days == 365
    assert inventory.policy.allowed_key_types is None
    assert inventory.policy.key_policy().min_rsa_bits == 3072


def test_relative_agent_paths_are_inventory_relative(tmp_path: Path) -> None:
    root = write(
        tmp_path / "inv",
        {
            "keyward.toml": "[agent]\nidentity = 'secrets/agent'\nconnect_timeout = 2.5\n",
            "production.toml": env_text(),
        },
    )
    agent = load_inventory(root).agent
    assert agent.identity == root.absolute() / "secrets/agent"
    assert agent.identity_pub == root.absolute() / "secrets/agent.pub"
    assert agent.connect_timeout == 2.5


def test_all_problems_are_collected_and_load_reports_the_count(tmp_path: Path) -> None:
    text = env_text(host_extra='port = 0\nmode = "x"\nportt = 1')
    root = write(tmp_path / "inv", {"production.toml": text})
    assert len(problems_of(root)) == 3
    with pytest.raises(InventoryError) as caught:
        load_inventory(root)
    assert caught.value.message == (
        "production.toml: hosts[0]: unknown field 'portt' (did you mean 'port'?) "
        "(and 2 more problems; run keyward inventory check)"
    )
    assert caught.value.exit_code == 2


def test_defaults_and_normalisation(tmp_path: Path) -> None:
    text = """\
    [environment]
    min_attestation = "sk"
    customer = "acme"

    [defaults]
    login = "admin"
    port = 2222
    accounts = ["deploy", "admin"]
    authorized_keys = [".ssh/authorized_keys", "%h/.ssh/authorized_keys2", ".ssh/authorized_keys"]
    mode = "managed-block"
    auth_log = "/var/log/auth.log"
    auth_log_trusted = true

    [[hosts]]
    name = "h1"

    [[hosts]]
    name = "h2"
    port = 22
    accounts = []
    customer = "globex"
    auth_log_trusted = false
    """
    root = write(tmp_path / "inv", {"staging.toml": text})
    inventory = load_inventory(root)
    env = inventory.environment("staging")
    assert env.customer == "acme"
    h1, h2 = env.hosts
    assert h1.address == "h1"
    assert h1.port == 2222
    assert h1.login == "admin"
    assert h1.mode == "managed-block"
    assert h1.authorized_keys == ("%h/.ssh/authorized_keys", "%h/.ssh/authorized_keys2")
    assert h1.managed_accounts == ("deploy", "admin")
    assert h1.customer == "acme"
    assert h2.port == 22
    assert h2.managed_accounts == ("admin",)
    assert h2.customer == "globex"
    # A log file is believed only where the inventory says so; a host can take it back.
    assert (h1.auth_log, h1.auth_log_trusted) == ("/var/log/auth.log", True)
    assert (h2.auth_log, h2.auth_log_trusted) == ("/var/log/auth.log", False)
    example = load_inventory(EXAMPLE)
    assert not any(host.auth_log_trusted for host in example.hosts())


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("%h/.ssh/authorized_keys", "%h/.ssh/authorized_keys"),
        (".ssh/authorized_keys", "%h/.ssh/authorized_keys"),
        ("/etc/ssh/authorized_keys.d/%u", "/etc/ssh/authorized_keys.d/%u"),
        ("/etc/ssh/keys/%U.keys", "/etc/ssh/keys/%U.keys"),
        ("/etc/ssh/100%%/%u", "/etc/ssh/100%%/%u"),
    ],
)
def test_normalise_authorized_keys(pattern: str, expected: str) -> None:
    assert normalise_authorized_keys(pattern) == expected


@pytest.mark.parametrize(
    "pattern", ["", "%h", "%h/", "/etc/ssh/", "/etc//x", "%x/keys", "a%", "/a/./b", "~/.ssh/x y"]
)
def test_normalise_authorized_keys_refuses(pattern: str) -> None:
    with pytest.raises(ValueError):
        normalise_authorized_keys(pattern)


# --- model: matching and selection ------------------------------------------------


def host(name: str, env: str = "prod", groups: tuple[str, ...] = ()) -> Host:
    return Host(
        name=name,
        environment=env,
        address=f"{name}.example.com",
        port=22,
        login="root",
        authorized_keys=("%h/.ssh/authorized_keys",),
        mode="exclusive",
        groups=groups,
        accounts=("deploy", "root", "deploy"),
    )


def rule(groups: tuple[str, ...] | None, hosts: tuple[str, ...] | None) -> AccessRule:
    return AccessRule(
        environment="prod",
        roles=("devops",),
        accounts=("root",),
        groups=groups,
        hosts=hosts,
        options=(),
        source="prod.toml: access[0]",
    )


@pytest.mark.parametrize(
    ("groups", "hosts", "target", "expected"),
    [
        (None, None, host("web-1", groups=("web",)), True),
        (None, None, host("web-1", env="test", groups=("web",)), False),
        (("web",), None, host("web-1", groups=("web", "edge")), True),
        (("web",), None, host("db-1", groups=("db",)), False),
        (("web",), None, host("web-1", env="test", groups=("web",)), False),
        (None, ("db-1",), host("db-1", groups=("db",)), True),
        (None, ("db-1",), host("web-1", groups=("web",)), False),
        (("web",), ("db-1",), host("db-1", groups=("db",)), True),
        (("web",), ("db-1",), host("web-2", groups=("web",)), True),
        (("web",), ("db-1",), host("cache-1", groups=("cache",)), False),
        (("web",), ("db-1",), host("ungrouped"), False),
    ],
)
def test_applies_to(
    groups: tuple[str, ...] | None, hosts: tuple[str, ...] | None, target: Host, expected: bool
) -> None:
    assert rule(groups, hosts).applies_to(target) is expected


def test_managed_accounts_dedupes_and_keeps_order() -> None:
    assert host("a").managed_accounts == ("deploy", "root")


@pytest.fixture
def example() -> Inventory:
    return load_inventory(EXAMPLE)


def test_select_hosts(example: Inventory) -> None:
    assert example.select_hosts() == example.hosts()
    assert [h.name for h in example.select_hosts("production")] == ["web-1", "web-2", "db-1"]
    assert example.select_hosts(host="db-1") == (example.host("db-1"),)
    assert example.select_hosts("production", "db-1") == (example.host("db-1"),)


@pytest.mark.parametrize(
    ("env", "name", "message"),
    [
        ("prod", None, "unknown environment 'prod' (known: preproduction, production, test)"),
        (None, "web-9", "unknown host 'web-9'"),
        ("test", "web-1", "host 'web-1' is in environment 'production', not 'test'"),
        ("nope", "web-1", "unknown environment 'nope'"),
    ],
)
def test_select_hosts_errors(
    example: Inventory, env: str | None, name: str | None, message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        example.select_hosts(env, name)
    assert isinstance(caught.value, KeywardError)
    assert caught.value.message.startswith(message)


def test_find_inventory_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"KEYWARD_INVENTORY": "/srv/inv"}
    assert find_inventory_dir("/x/inv", env) == Path("/x/inv")
    assert find_inventory_dir(None, env) == Path("/srv/inv")
    assert find_inventory_dir(None, {}) == Path("/etc/keyward/inventory")
    (tmp_path / "inventory").mkdir()
    assert find_inventory_dir(None, {}) == tmp_path / "inventory"
    assert find_inventory_dir(None, {"KEYWARD_INVENTORY": ""}) == tmp_path / "inventory"


# --- reaching hosts: become and jump hosts ---------------------------------------

BASTION = '[[jump_hosts]]\nname = "bastion-1"\naddress = "10.0.0.1"\nlogin = "ops"\n'

REACH_CASES: list[tuple[str, str, str]] = [
    (
        "become-unknown",
        env_text(host_extra='become = "doas"'),
        "production.toml: hosts[0].become: 'doas' is not one of none, sudo",
    ),
    (
        "jump-unknown",
        env_text(host_extra='jump = ["nowhere"]'),
        "production.toml: hosts[0].jump: 'nowhere' is neither a [[jump_hosts]] entry "
        "nor a host of this file",
    ),
    (
        "jump-self",
        env_text(host_extra='jump = ["web-1"]'),
        "production.toml: hosts[0].jump: 'web-1' would be passed through twice",
    ),
    (
        "jump-host-clashes",
        env_text(tail=BASTION.replace("bastion-1", "db-1")),
        "production.toml: jump_hosts: 'db-1' is both a jump host and a host; rename one",
    ),
    (
        "jump-host-field",
        env_text(tail=BASTION + "groups = []\n"),
        "production.toml: jump_hosts[0]: unknown field 'groups'",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [(text, expected) for _, text, expected in REACH_CASES],
    ids=[case_id for case_id, _, _ in REACH_CASES],
)
def test_reach_problem(tmp_path: Path, text: str, expected: str) -> None:
    root = write(tmp_path / "inv", {"production.toml": text})
    found = problems_of(root)
    assert any(problem.startswith(expected) for problem in found), found


def test_become_and_jump_are_resolved(tmp_path: Path) -> None:
    text = (
        '[environment]\nmin_attestation = "none"\n\n'
        '[defaults]\nlogin = "ops"\nbecome = "sudo"\njump = ["bastion-1"]\n\n'
        + BASTION
        + '\n[[hosts]]\nname = "web-1"\njump = ["bastion-1", "db-1"]\n'
        '\n[[hosts]]\nname = "db-1"\nlogin = "root"\nbecome = "none"\n'
        '\n[[hosts]]\nname = "edge-1"\njump = []\n'
    )
    inventory = load_inventory(write(tmp_path / "inv", {"production.toml": text}))
    web, db, edge = inventory.hosts()
    assert (web.login, web.become, db.login, db.become) == ("ops", "sudo", "root", None)
    assert [(hop.name, hop.address, hop.port, hop.login) for hop in web.jump] == [
        ("bastion-1", "10.0.0.1", 22, "ops"),
        ("db-1", "db-1", 22, "root"),
    ]
    assert [hop.name for hop in db.jump] == ["bastion-1"]
    assert edge.jump == ()
