"""``keyward inventory import ansible``: the pure conversion, then a real Ansible inventory.

The table tests feed ``convert`` hand-written ``ansible-inventory --list`` documents; every
rendered file is read back by keyward's own loader.  The end-to-end tests run the real
``ansible-inventory`` (ansible-core, a test extra) on INI and YAML files with groups,
children, ranges, host and group variables, then the real keyward CLI, then
``keyward inventory check`` on what it wrote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from keyward.errors import UsageError
from keyward.inventory import check_inventory, load_inventory
from keyward.inventory.ansible import (
    Conversion,
    convert,
    load_list_json,
    parse_env_groups,
    render,
)
from tests.cli_runner import Keyward


def doc(groups: dict[str, Any], hostvars: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``--list`` document: ``groups`` plus ``all`` (top-level = groups nobody parents)."""
    children = {c for body in groups.values() for c in body.get("children", [])}
    top = [g for g in groups if g not in children and g != "all"]
    return {
        "_meta": {"hostvars": hostvars or {}},
        "all": {"children": ["ungrouped", *top]},
        **groups,
    }


def messages(result: Conversion) -> list[str]:
    return [str(problem) for problem in result.problems]


def hosts_of(result: Conversion, env: str) -> dict[str, tuple[Any, ...]]:
    [found] = [e for e in result.environments if e.name == env]
    return {h.name: (h.address, h.port, h.login, h.groups) for h in found.hosts}


def round_trip(tmp_path: Path, result: Conversion, source: str = "inv") -> Any:
    """Write the rendered files and load them with keyward's loader (strictly)."""
    for env in result.environments:
        (tmp_path / env.file_name).write_text(render(env, source))
    inv, problems = check_inventory(tmp_path)
    assert problems == [], problems
    return inv


# -- environments ---------------------------------------------------------------


def test_top_level_groups_are_environments_and_children_become_host_groups(
    tmp_path: Path,
) -> None:
    data = doc(
        {
            "production": {"children": ["web", "db"]},
            "web": {"hosts": ["web01", "web02"]},
            "db": {"hosts": ["db1"]},
            "staging": {"hosts": ["stage1"]},
            "ungrouped": {"hosts": ["orphan"]},
        }
    )
    result = convert(data)
    assert [e.name for e in result.environments] == ["production", "staging"]
    assert hosts_of(result, "production") == {
        "web01": (None, None, None, ("web",)),
        "web02": (None, None, None, ("web",)),
        "db1": (None, None, None, ("db",)),
    }
    assert messages(result) == ["host orphan: in no environment's group; left out"]
    assert result.left_out == ("orphan",)
    inv = round_trip(tmp_path, result)
    host = inv.host("web01")
    assert (host.environment, host.address, host.port, host.login, host.mode) == (
        "production",
        "web01",
        22,
        "root",
        "managed-block",
    )


def test_env_group_pairs_name_environments_and_all_takes_everything() -> None:
    data = doc({"prod_servers": {"hosts": ["a"]}, "ungrouped": {"hosts": ["b"]}})
    result = convert(data, {"prod": "prod_servers"})
    assert [(e.name, e.group) for e in result.environments] == [("prod", "prod_servers")]
    assert result.left_out == ("b",)
    whole = convert(data, {"fleet": "all"})
    assert hosts_of(whole, "fleet") == {
        "a": (None, None, None, ("prod_servers",)),
        "b": (None, None, None, ()),
    }
    assert whole.problems == ()


@pytest.mark.parametrize(
    ("pairs", "error"),
    [
        (["prod"], "expected ENV=GROUP"),
        (["=g"], "expected ENV=GROUP"),
        (["a=g", "a=h"], "environment 'a' given twice"),
        (["a=g", "b=g"], "group 'g' given for two environments"),
    ],
)
def test_env_group_options_are_checked(pairs: list[str], error: str) -> None:
    with pytest.raises(UsageError, match=error):
        parse_env_groups(pairs)


@pytest.mark.parametrize(
    ("env_groups", "error"),
    [
        ({"prod": "nope"}, "no group 'nope'"),
        ({"bad name": "web"}, "not a valid environment name"),
        ({"keyward": "web"}, "would be written to keyward.toml"),
    ],
)
def test_bad_environment_choices_refuse_the_import(env_groups: dict[str, str], error: str) -> None:
    with pytest.raises(UsageError, match=error):
        convert(doc({"web": {"hosts": ["a"]}}), env_groups)


def test_no_top_level_group_asks_for_env_group() -> None:
    with pytest.raises(UsageError, match="--env-group"):
        convert(doc({"ungrouped": {"hosts": ["a"]}}))


def test_a_host_in_two_environments_is_left_out_of_both() -> None:
    data = doc({"prod": {"hosts": ["a", "ns1"]}, "stage": {"hosts": ["b", "ns1"]}})
    result = convert(data)
    assert set(hosts_of(result, "prod")) == {"a"}
    assert set(hosts_of(result, "stage")) == {"b"}
    assert messages(result) == [
        "host ns1: in several environments (prod, stage); left out "
        "(a keyward host belongs to one environment)"
    ]


def test_an_environment_left_without_hosts_writes_no_file() -> None:
    result = convert(doc({"prod": {"hosts": ["a"]}, "bad": {"hosts": ["-x"]}}))
    assert [e.name for e in result.environments] == ["prod"]
    assert "environment bad: group 'bad': no host to import; no file" in messages(result)


def test_cyclic_children_do_not_hang() -> None:
    data = doc({"prod": {"children": ["a"]}, "a": {"children": ["b"]}, "b": {"hosts": ["h"]}})
    data["b"]["children"] = ["a"]
    result = convert(data)
    assert hosts_of(result, "prod") == {"h": (None, None, None, ("a", "b"))}


# -- hosts and their variables --------------------------------------------------


@pytest.mark.parametrize(
    ("hostvars", "expected"),
    [
        ({"ansible_host": "10.0.0.1"}, ("10.0.0.1", None, None)),
        ({"ansible_ssh_host": "10.0.0.1"}, ("10.0.0.1", None, None)),
        ({"ansible_host": "h"}, (None, None, None)),  # the name already is the address
        ({"ansible_port": 2222}, (None, 2222, None)),
        ({"ansible_port": "2222"}, (None, 2222, None)),  # INI gives strings sometimes
        ({"ansible_ssh_port": 22}, (None, None, None)),
        ({"ansible_user": "deploy"}, (None, None, "deploy")),
        ({"ansible_ssh_user": "deploy", "ansible_user": "deploy"}, (None, None, "deploy")),
        ({"ansible_connection": "ssh"}, (None, None, None)),
        ({"ansible_connection": "ansible.builtin.paramiko_ssh"}, (None, None, None)),
    ],
)
def test_connection_variables_map_to_address_port_login(
    hostvars: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    result = convert(doc({"prod": {"hosts": ["h"]}}, {"h": hostvars}))
    assert result.problems == ()
    assert hosts_of(result, "prod")["h"][:3] == expected


@pytest.mark.parametrize(
    ("hostvars", "reason"),
    [
        ({"ansible_host": "a b"}, "ansible_host 'a b': must not contain whitespace"),
        ({"ansible_host": "root@h2"}, "must not contain '@'"),
        ({"ansible_host": "-oProxyCommand=x"}, "must not start with '-'"),
        ({"ansible_host": 5}, "ansible_host 5: must be a string"),
        ({"ansible_host": "{{ inventory_hostname }}.lan"}, "is a Jinja2 template"),
        ({"ansible_port": "ssh"}, "ansible_port 'ssh': must be a port number 1-65535"),
        ({"ansible_port": 0}, "must be a port number"),
        ({"ansible_port": 70000}, "must be a port number"),
        ({"ansible_port": True}, "ansible_port (a bool value): must be a port number"),
        ({"ansible_user": "Admin"}, "ansible_user 'Admin': not a POSIX login"),
        (
            {"ansible_user": {"__ansible_vault": "$ANSIBLE_VAULT;1.1;AES256 6162"}},
            "ansible_user (a dict value): not a POSIX login",  # no ciphertext in reports
        ),
        (
            {"ansible_host": "10.0.0.1", "ansible_ssh_host": "10.0.0.2"},
            "ansible_host='10.0.0.1', ansible_ssh_host='10.0.0.2' disagree",
        ),
        ({"ansible_connection": "local"}, "ansible_connection 'local' is not SSH"),
        ({"ansible_connection": "winrm"}, "is not SSH"),
    ],
)
def test_a_host_keyward_cannot_reach_as_ansible_does_is_left_out(
    hostvars: dict[str, Any], reason: str
) -> None:
    result = convert(doc({"prod": {"hosts": ["h", "ok"]}}, {"h": hostvars}))
    assert set(hosts_of(result, "prod")) == {"ok"}
    [line] = messages(result)
    assert line.startswith("host h: ") and reason in line and line.endswith("; left out")
    assert result.left_out == ("h",)


def test_invalid_host_names_are_left_out_not_renamed() -> None:
    result = convert(doc({"prod": {"hosts": ["ok", "_jump", "fe80::1"]}}))
    assert set(hosts_of(result, "prod")) == {"ok"}
    assert [line.split(":")[0] for line in messages(result)] == ["host _jump", "host fe80"]
    assert all("not a valid keyward host name" in line for line in messages(result))


def test_every_unused_variable_is_named_host_by_host() -> None:
    hostvars = {
        "a": {"http_port": 80, "ansible_become": True, "ansible_python_interpreter": "/x"},
        "b": {"http_port": 80, "ansible_password": "s3cret"},
    }
    result = convert(doc({"prod": {"hosts": ["a", "b"]}}, hostvars))
    assert set(hosts_of(result, "prod")) == {"a", "b"}
    assert messages(result) == [
        "host a: variable ansible_become not imported: "
        "keyward logs in as the host's login and needs root there",
        "host a: variable ansible_python_interpreter not imported: "
        "the agent's interpreter is fleet-wide ([agent] python)",
        "host a: variable http_port not imported: no keyward equivalent",
        "host b: variable ansible_password not imported: "
        "not imported (a secret); the agent logs in with its own key",
        "host b: variable http_port not imported: no keyward equivalent",
    ]
    assert "s3cret" not in " ".join(messages(result))


def test_two_names_for_one_endpoint_keep_the_first() -> None:
    hostvars = {"a": {"ansible_host": "10.0.0.1"}, "b": {"ansible_host": "10.0.0.1"}}
    result = convert(doc({"prod": {"hosts": ["a", "b"]}}, hostvars))
    assert set(hosts_of(result, "prod")) == {"a"}
    assert messages(result) == [
        "host b: 10.0.0.1:22 is already used by host a; left out (two names for one machine?)"
    ]


def test_invalid_group_names_are_reported_once_and_left_off_the_hosts() -> None:
    data = doc({"prod": {"children": ["_internal", "web"]}, "_internal": {"hosts": ["a", "b"]}})
    data["web"] = {"hosts": ["a"]}
    result = convert(data)
    assert hosts_of(result, "prod") == {
        "a": (None, None, None, ("web",)),
        "b": (None, None, None, ()),
    }
    assert messages(result) == [
        "group _internal: not a valid keyward group name; left off host(s) a, b"
    ]


def test_exported_group_vars_apply_with_ansible_precedence() -> None:
    """``ansible-inventory --list --export`` keeps group vars on the groups: deeper groups
    win over their parents, the host's own over every group."""
    data = doc(
        {
            "prod": {"children": ["web"], "vars": {"ansible_user": "admin", "ansible_port": 2200}},
            "web": {"hosts": ["a", "b"], "vars": {"ansible_user": "www"}},
        },
        {"b": {"ansible_user": "deploy"}},
    )
    data["all"]["vars"] = {"ansible_port": 2100, "ntp": "x"}
    result = convert(data)
    assert hosts_of(result, "prod") == {
        "a": (None, 2200, "www", ("web",)),
        "b": (None, 2200, "deploy", ("web",)),
    }
    assert messages(result) == [
        "host a: variable ntp not imported: no keyward equivalent",
        "host b: variable ntp not imported: no keyward equivalent",
    ]


def test_load_list_json_refuses_what_is_not_a_list_document() -> None:
    with pytest.raises(UsageError, match="not ansible-inventory --list JSON"):
        load_list_json("[1, 2]")
    with pytest.raises(UsageError, match="not ansible-inventory --list JSON"):
        load_list_json("web01\n")


# -- rendering: TOML keyward's loader reads back ----------------------------------


def test_rendered_files_round_trip_through_the_loader(tmp_path: Path) -> None:
    hostvars = {
        "a": {"ansible_user": "ops", "ansible_port": 2222},
        "b": {"ansible_user": "ops", "ansible_port": 2222, "ansible_host": 'odd"na\\me'},
        "c": {"ansible_user": "ops", "ansible_port": 2022, "ansible_host": "c.example.com"},
    }
    data = doc({"prod": {"children": ["web"]}, "web": {"hosts": ["a", "b", "c"]}}, hostvars)
    result = convert(data)
    [env] = result.environments
    text = render(env, "inventories/prod\nhosts", "admin")
    assert '[defaults]\nmode = "managed-block"\nlogin = "ops"\n' in text  # shared
    assert "inventories/prod?hosts" in text  # a newline cannot end the comment early
    inv = round_trip(tmp_path, result)
    loaded = {h.name: (h.address, h.port, h.login, h.groups) for h in inv.hosts()}
    assert loaded == {
        "a": ("a", 2222, "ops", ("web",)),
        "b": ('odd"na\\me', 2222, "ops", ("web",)),
        "c": ("c.example.com", 2022, "ops", ("web",)),
    }
    [environment] = inv.environments
    assert environment.min_attestation == "proof"


def test_render_refuses_an_unknown_attestation() -> None:
    [env] = convert(doc({"prod": {"hosts": ["a"]}})).environments
    with pytest.raises(UsageError, match="unknown attestation"):
        render(env, "inv", "strong")


# -- the real ansible-inventory, then the real CLI --------------------------------

HOSTS_INI = """\
orphan

[web]
web[01:03].example.com
web-legacy ansible_host=198.51.100.9 ansible_port=2222 ansible_user=ops

[db]
db1 ansible_host=10.0.0.11 ansible_user=postgres
db2 ansible_host=10.0.0.12 ansible_become=true
localhost ansible_connection=local

[production]
ns1

[production:children]
web
db

[production:vars]
ansible_user=admin
"""

STAGING_YML = """\
all:
  children:
    staging:
      vars:
        ansible_port: 2200
      hosts:
        stage-app[1:2]:
        stage-db:
          ansible_host: 192.0.2.11
          ntp_server: ntp.example.com
        ns1:
        _jump:
          ansible_host: 192.0.2.99
      children:
        _internal:
          hosts:
            stage-db:
"""


@pytest.fixture
def ansible_inventory(tmp_path: Path) -> Path:
    """A real Ansible inventory directory: INI and YAML, group_vars and host_vars."""
    if shutil.which("ansible-inventory") is None:
        pytest.skip("needs ansible-inventory (pip install ansible-core; a test extra)")
    root = tmp_path / "ansible"
    (root / "group_vars").mkdir(parents=True)
    (root / "host_vars").mkdir()
    (root / "hosts.ini").write_text(HOSTS_INI)
    (root / "staging.yml").write_text(STAGING_YML)
    (root / "group_vars" / "web.yml").write_text("http_port: 8080\n")
    (root / "host_vars" / "web01.example.com.yml").write_text("ansible_port: 2201\n")
    return root


EXPECTED_PROBLEMS = {
    "host orphan: in no environment's group; left out",
    "host ns1: in several environments (production, staging); left out "
    "(a keyward host belongs to one environment)",
    "host localhost: ansible_connection 'local' is not SSH; left out",
    "host db2: variable ansible_become not imported: "
    "keyward logs in as the host's login and needs root there",
    "host web01.example.com: variable http_port not imported: no keyward equivalent",
    "host web02.example.com: variable http_port not imported: no keyward equivalent",
    "host web03.example.com: variable http_port not imported: no keyward equivalent",
    "host web-legacy: variable http_port not imported: no keyward equivalent",
    "host stage-db: variable ntp_server not imported: no keyward equivalent",
    "host _jump: not a valid keyward host name ([A-Za-z0-9][A-Za-z0-9_.-]{0,62}); left out",
    "group _internal: not a valid keyward group name; left off host(s) stage-db",
}


@pytest.mark.parametrize(
    "env_groups", [[], ["--env-group", "production=production", "--env-group", "staging=staging"]]
)
def test_real_ansible_inventory_through_the_cli_passes_inventory_check(
    ansible_inventory: Path, tmp_path: Path, env_groups: list[str]
) -> None:
    out = tmp_path / "keyward-inventory"
    kw = Keyward("sqlite:///unused.db", str(out))
    done = kw("inventory", "import", "ansible", str(ansible_inventory), *env_groups)
    assert done.code == 0, done
    assert "# ---- production.toml ----" in done.out
    assert "dry run, nothing written" in done.err
    assert not out.exists()

    done = kw("inventory", "import", "ansible", str(ansible_inventory), "--out", str(out))
    assert done.code == 0, done
    lines = [line for line in done.err.splitlines() if line.startswith(("host ", "group "))]
    assert len(lines) == len(set(lines))
    assert set(lines) == EXPECTED_PROBLEMS
    assert sorted(p.name for p in out.iterdir()) == ["production.toml", "staging.toml"]

    check = kw("inventory", "check", "--json")
    assert check.code == 0, check
    assert check.json()["ok"] is True
    inv = load_inventory(out)
    hosts = {h.name: (h.environment, h.address, h.port, h.login, h.groups) for h in inv.hosts()}
    assert hosts == {
        "web01.example.com": ("production", "web01.example.com", 2201, "admin", ("web",)),
        "web02.example.com": ("production", "web02.example.com", 22, "admin", ("web",)),
        "web03.example.com": ("production", "web03.example.com", 22, "admin", ("web",)),
        "web-legacy": ("production", "198.51.100.9", 2222, "ops", ("web",)),
        "db1": ("production", "10.0.0.11", 22, "postgres", ("db",)),
        "db2": ("production", "10.0.0.12", 22, "admin", ("db",)),
        "stage-app1": ("staging", "stage-app1", 2200, "root", ()),
        "stage-app2": ("staging", "stage-app2", 2200, "root", ()),
        "stage-db": ("staging", "192.0.2.11", 2200, "root", ()),
    }
    assert {h.mode for h in inv.hosts()} == {"managed-block"}
    assert "port = 2200" in (out / "staging.toml").read_text().split("[[hosts]]")[0]

    # Never overwrite: the same import again is refused, and nothing changes.
    before = (out / "production.toml").read_text()
    (out / "production.toml").write_text(before + "# my edit\n")
    again = kw("inventory", "import", "ansible", str(ansible_inventory), "--out", str(out))
    assert again.code == 2
    assert "already exist" in again.err and "--force" in again.err
    assert (out / "production.toml").read_text().endswith("# my edit\n")
    forced = kw(
        "inventory", "import", "ansible", str(ansible_inventory), "--out", str(out), "--force"
    )
    assert forced.code == 0, forced
    assert (out / "production.toml").read_text() == before


def test_list_json_from_stdin_and_json_output(ansible_inventory: Path, tmp_path: Path) -> None:
    """``-`` reads what ``ansible-inventory --list`` printed elsewhere."""
    import subprocess

    listed = subprocess.run(
        ["ansible-inventory", "-i", str(ansible_inventory), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    kw = Keyward("sqlite:///unused.db", str(tmp_path / "none"))
    done = kw(
        "inventory",
        "import",
        "ansible",
        "-",
        "--env-group",
        "prod=production",
        "--json",
        input=listed,
    )
    assert done.code == 0, done
    data = done.json()
    assert [env["file"] for env in data["environments"]] == ["prod.toml"]
    assert data["written"] is None
    legacy = [h for h in data["environments"][0]["hosts"] if h["name"] == "web-legacy"]
    assert legacy == [
        {
            "name": "web-legacy",
            "address": "198.51.100.9",
            "port": 2222,
            "login": "ops",
            "groups": ["web"],
        }
    ]
    wheres = {p["where"] for p in data["problems"]}
    assert {"host orphan", "host localhost", "host stage-db"} <= wheres
    assert "host ns1" not in wheres  # in one environment only, when staging is none
    assert "stage-db" in data["left_out"]
    assert "ns1" in {h["name"] for h in data["environments"][0]["hosts"]}


def test_unparsable_inventory_fails_instead_of_importing_less(tmp_path: Path) -> None:
    if shutil.which("ansible-inventory") is None:
        pytest.skip("needs ansible-inventory (pip install ansible-core; a test extra)")
    bad = tmp_path / "hosts.ini"
    bad.write_text("[web\nweb01\n")
    kw = Keyward("sqlite:///unused.db", str(tmp_path / "none"))
    done = kw("inventory", "import", "ansible", str(bad))
    assert done.code == 1
    assert done.err.startswith("keyward: error: ansible-inventory -i ")
    assert len(done.err.strip().splitlines()) == 1
    done = kw("inventory", "import", "ansible", str(tmp_path / "missing"))
    assert done.code == 1 and "failed" in done.err


def test_missing_ansible_inventory_is_one_line_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyward.cli import inventory_import

    monkeypatch.setattr(inventory_import, "ANSIBLE_INVENTORY", "keyward-no-such-program")
    kw = Keyward("sqlite:///unused.db", str(tmp_path / "none"))
    done = kw("inventory", "import", "ansible", "hosts.ini")
    assert done.code == 1
    assert done.err.strip() == (
        "keyward: error: keyward-no-such-program is not installed: install Ansible "
        "(pip install ansible-core), or run `ansible-inventory -i INVENTORY --list` where it "
        "is installed and pipe its output to `keyward inventory import ansible -`"
    )


def test_bad_json_on_stdin_is_a_usage_error(tmp_path: Path) -> None:
    kw = Keyward("sqlite:///unused.db", str(tmp_path / "none"))
    done = kw("inventory", "import", "ansible", "-", input="not json")
    assert done.code == 2
    assert "not ansible-inventory --list JSON" in done.err
    done = kw("inventory", "import", "ansible", "-", input=json.dumps(doc({})))
    assert done.code == 2 and "--env-group" in done.err


def test_cli_attestation_choices_match_the_library() -> None:
    """cli.inventory_import copies the scale so defining its options imports nothing more."""
    from keyward.attestation import ATTESTATION_LEVELS
    from keyward.cli.inventory_import import ATTESTATIONS

    assert ATTESTATIONS == ATTESTATION_LEVELS


def fake_ansible_inventory(tmp_path: Path, script: str) -> str:
    path = tmp_path / "fake-ansible-inventory"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def test_a_failing_ansible_inventory_gives_its_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyward.cli import inventory_import

    fake = fake_ansible_inventory(
        tmp_path, "echo '[WARNING]: something' >&2\necho '[ERROR]: no such plugin' >&2\nexit 4\n"
    )
    monkeypatch.setattr(inventory_import, "ANSIBLE_INVENTORY", fake)
    with pytest.raises(inventory_import.AnsibleFailed, match=r"exit 4\): \[ERROR\]: no such"):
        inventory_import.run_ansible_inventory("hosts.ini")


def test_a_hanging_ansible_inventory_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyward.cli import inventory_import

    monkeypatch.setattr(
        inventory_import, "ANSIBLE_INVENTORY", fake_ansible_inventory(tmp_path, "exec sleep 30\n")
    )
    with pytest.raises(inventory_import.AnsibleFailed, match=r"did not finish within 0\.3 s"):
        inventory_import.run_ansible_inventory("hosts.ini", timeout=0.3)


def test_export_output_imports_the_same_as_list(ansible_inventory: Path, tmp_path: Path) -> None:
    """``--list --export`` keeps group variables on the groups; the result is the same."""
    import subprocess

    kw = Keyward("sqlite:///unused.db", str(tmp_path / "none"))
    results = []
    for extra in ([], ["--export"]):
        listed = subprocess.run(
            ["ansible-inventory", "-i", str(ansible_inventory), "--list", *extra],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        done = kw("inventory", "import", "ansible", "-", "--json", input=listed)
        assert done.code == 0, done
        results.append(done.json())
    assert results[0] == results[1]
    assert len(results[0]["problems"]) == len(EXPECTED_PROBLEMS)
