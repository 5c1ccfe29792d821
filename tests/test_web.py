"""The web page in a real browser: headless Chromium (Debian's) driven by Selenium.

People sign in through the terminal-code flow: the page shows a code, the test runs the
real ``keyward auth browser CODE`` with the person's key in a real ssh-agent, and the
page's meta refresh carries the browser in.  One person files a request in one browser,
an approver approves it in another, and the first sees it approved; the requester can
neither see an approve button for their own request nor forge the POST.
"""

from __future__ import annotations

import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.server_env import ServerEnv, server_env
from tests.test_server_cli import remote

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(180)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerEnv]:
    with server_env(tmp_path_factory.mktemp("web"), host="127.0.0.25") as env:
        yield env


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A headless Chromium through the system chromedriver (nothing downloaded); killed after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            process = getattr(service, "process", None)
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def wait_for(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT).until(lambda d: d.find_element(By.ID, element_id))


def click(driver: Any, element_id: str) -> None:
    """Click a button and wait until the page it submits to has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, element_id).click()
    WebDriverWait(driver, WAIT).until(expected_conditions.staleness_of(old))


def sign_in(driver: Any, server: ServerEnv, person: str) -> None:
    """The terminal-code flow: read the code off the page, confirm it with the real CLI."""
    driver.get(server.url + "/web/")
    command = wait_for(driver, "code").text
    assert re.fullmatch(r"keyward auth browser [A-Z2-7]{4}-[A-Z2-7]{4}", command), command
    code = command.split()[-1]
    out = remote(server, person).ok("auth", "browser", code).out
    assert f" as {person} with key SHA256:" in out
    assert wait_for(driver, "user").text == person  # the meta refresh signed the page in


def cookie_header(driver: Any) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in driver.get_cookies())


def csrf_of(driver: Any) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', driver.page_source)
    assert match
    return match.group(1)


def post(server: ServerEnv, path: str, cookies: str, form: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(
        server.url + path,
        data=urllib.parse.urlencode(form).encode(),
        method="POST",
        headers={"cookie": cookies, "content-type": "application/x-www-form-urlencoded"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_request_in_one_browser_approve_in_another(server: ServerEnv, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with chromium(tmp_path / "alice") as alice, chromium(tmp_path / "bob") as bob:
        sign_in(alice, server, "alice")
        alice.get(server.url + "/web/request")
        wait_for(alice, "role").send_keys("devops")
        alice.find_element(By.ID, "environment").send_keys("prod")
        alice.find_element(By.ID, "duration").send_keys("2h")
        alice.find_element(By.ID, "reason").send_keys("INC-7 <b>now</b>")
        click(alice, "submit")
        row = alice.find_element(By.CSS_SELECTOR, "tr[id^=request-]")
        rid = row.get_attribute("id").split("-")[1]
        assert "pending" in row.text and "INC-7 <b>now</b>" in row.text  # shown, not markup

        sign_in(bob, server, "bob")
        bob.get(server.url + "/web/queue")
        wait_for(bob, f"request-{rid}")
        click(bob, f"approve-{rid}")
        wait_for(bob, "user")
        assert not bob.find_elements(By.ID, f"request-{rid}")  # decided: gone from the queue

        alice.get(server.url + "/web/")
        row = wait_for(alice, f"request-{rid}")
        assert "approved" in row.text and "bob" in row.text

    events = server.kw.ok("audit", "log", "--json").json()
    mine = [e for e in events if e["details"].get("request_id") == int(rid)]
    assert [(e["action"], e["actor"]) for e in mine] == [
        ("access.request", "alice"),
        ("access.approve", "bob"),
    ]


def test_the_requester_cannot_approve_their_own(server: ServerEnv, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    own = server.request_for("bob", "devops")  # bob approves devops requests
    other = server.request_for("rita", "devops")
    with chromium(tmp_path / "bob") as bob:
        sign_in(bob, server, "bob")
        bob.get(server.url + "/web/queue")
        row = wait_for(bob, f"request-{own}")
        assert "your own request" in row.text
        assert not bob.find_elements(By.ID, f"approve-{own}")
        assert bob.find_elements(By.ID, f"approve-{other}")
        cookies, csrf = cookie_header(bob), csrf_of(bob)
    before = server.head()
    status, page = post(server, f"/web/requests/{own}/approve", cookies, {"csrf": csrf})
    assert status == 403, page
    assert "approved by someone other than the requester" in page
    assert server.head() == before


def test_csrf_and_cookie_flags(server: ServerEnv, tmp_path: Path) -> None:
    with chromium(tmp_path / "alice") as alice:
        sign_in(alice, server, "alice")
        cookies = {c["name"]: c for c in alice.get_cookies()}
        session = cookies["kw_session"]
        assert session["httpOnly"] is True
        assert session["sameSite"] == "Strict"
        assert session["secure"] is False  # plain HTTP on loopback; Secure under TLS (below)
        assert session["path"] == "/web"
        assert 0 < session["expiry"] - __import__("time").time() <= 3600 + 5
        header, csrf = cookie_header(alice), csrf_of(alice)
    before = server.head()
    form = {"role": "devops", "environment": "prod", "duration": "1h", "reason": "x"}
    assert post(server, "/web/request", header, form)[0] == 403
    assert post(server, "/web/request", header, {**form, "csrf": csrf[:-2] + "xx"})[0] == 403
    assert post(server, "/web/logout", header, {})[0] == 403
    assert server.head() == before
    # Without a session a POST proves no one.
    assert post(server, "/web/request", "", {**form, "csrf": csrf})[0] == 401
    # The form's input is checked as the API and the CLI check it, and shown again.
    status, page = post(
        server, "/web/request", header, {**form, "environment": "nope", "csrf": csrf}
    )
    assert status == 400 and 'id="error"' in page and 'value="nope"' in page
    status, page = post(server, "/web/request", header, {**form, "duration": "9d", "csrf": csrf})
    assert status == 400 and "between 1 minute and 7 days" in page
    assert server.head() == before
    # The right token passes (a 303 to the page, followed by urllib).
    assert post(server, "/web/request", header, {**form, "csrf": csrf})[0] == 200
    assert server.head() != before


def test_a_name_with_markup_renders_inert(server: ServerEnv, tmp_path: Path) -> None:
    from tests.keygen import make_key

    name = "<script>document.title='pwned'</script><img src=x id=injected>"
    server.kw.ok("person", "add", "xss", "--name", name)
    private, public = make_key(tmp_path / "keys", "ed25519", name="xss", comment="xss")
    server.kw.ok("key", "add", "xss", str(public), "--attest", "admin")
    server.keys["xss"] = private
    subprocess.run(
        ["ssh-add", "-q", str(private)],
        env={"SSH_AUTH_SOCK": server.agent_sock, "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        timeout=10,
    )
    with chromium(tmp_path / "xss") as browser:
        sign_in(browser, server, "xss")
        from selenium.webdriver.common.by import By

        assert name in browser.find_element(By.ID, "full-name").text
        assert "pwned" not in browser.title
        assert not browser.find_elements(By.ID, "injected")
        assert "&lt;script&gt;" in browser.page_source


def test_revoking_the_key_ends_the_browser_session(server: ServerEnv, tmp_path: Path) -> None:
    from tests.keygen import make_key

    private, public = make_key(tmp_path / "keys", "ed25519", name="dave2", comment="dave2")
    from keyward.auth.signer import load_signer

    server.kw.ok("key", "add", "dave", str(public), "--attest", "admin")
    fingerprint = load_signer(str(private)).public.fingerprint
    subprocess.run(
        ["ssh-add", "-q", str(private)],
        env={"SSH_AUTH_SOCK": server.agent_sock, "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        timeout=10,
    )
    with chromium(tmp_path / "dave") as dave:
        dave.get(server.url + "/web/")
        code = wait_for(dave, "code").text.split()[-1]
        remote(server, "dave", KEYWARD_KEY=str(public)).ok("auth", "browser", code)
        assert wait_for(dave, "user").text == "dave"
        # A code is used once.
        again = remote(server, "dave", KEYWARD_KEY=str(public)).fails("auth", "browser", code)
        assert "no such sign-in code" in again.err
        server.kw.ok("key", "revoke", fingerprint, "--reason", "stolen")
        dave.get(server.url + "/web/queue")
        assert wait_for(dave, "code")  # back to sign-in


def test_the_access_review_filters_and_members_see_their_own(
    server: ServerEnv, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    rid = server.request_for("rita", "devops")
    server.kw.ok("access", "approve", str(rid), actor="bob")
    with chromium(tmp_path / "erin") as erin, chromium(tmp_path / "rita") as rita:
        sign_in(erin, server, "erin")  # an administrator
        erin.get(server.url + "/web/access?environment=prod&role=devops&person=rita")
        assert 'id="error"' not in erin.page_source, erin.page_source
        wait_for(erin, "user")
        text = erin.find_element(By.TAG_NAME, "main").text
        assert "prod-web-1" in text and "rita" in text and "access request" in text
        erin.get(server.url + "/web/access?person=nobody")
        wait_for(erin, "user")
        assert "0 rows." in erin.page_source
        erin.get(server.url + "/web/access?environment=prod&customer=none-such")
        assert "0 rows." in erin.page_source

        sign_in(rita, server, "rita")  # a member: only her own rows, whatever she asks
        rita.get(server.url + "/web/access?person=erin")
        wait_for(rita, "user")
        assert "Your own access" in rita.page_source
        rows = rita.find_elements(By.CSS_SELECTOR, "tbody tr")
        assert rows and all("rita" in r.text for r in rows)


def test_sign_out_and_secure_cookies_under_tls(server: ServerEnv, tmp_path: Path) -> None:
    import ssl

    from tests.server_env import tls_server

    with chromium(tmp_path / "alice") as alice:
        sign_in(alice, server, "alice")
        copied = cookie_header(alice)
        click(alice, "logout")
        wait_for(alice, "code")  # signed out: the sign-in page again
        assert "kw_session" not in {c["name"] for c in alice.get_cookies()}
    # A copy of the cookie taken before signing out no longer works either.
    request = urllib.request.Request(server.url + "/web/", headers={"cookie": copied})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert 'id="code"' in response.read().decode()

    with tls_server(server, tmp_path, "127.0.0.26") as (url, cert, _log):
        context = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(f"{url}/web/", timeout=30, context=context) as r:
            cookie = r.headers["set-cookie"]
            policy = r.headers["content-security-policy"]
    assert cookie.startswith("kw_pre=")
    assert {"HttpOnly", "Secure", "SameSite=strict"} <= {p.strip() for p in cookie.split(";")}
    assert "default-src 'none'" in policy


def test_offboarding_evidence_for_administrators_and_auditors(
    server: ServerEnv, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    server.kw.ok("person", "add", "leaver", "--name", "Lee <Leaver>")
    remote(server, "erin")("offboard", "leaver", "--reason", "left <b>today</b>")
    with chromium(tmp_path / "dave") as dave, chromium(tmp_path / "alice") as alice:
        sign_in(dave, server, "dave")  # an auditor
        dave.get(server.url + "/web/offboarding")
        wait_for(dave, "user")
        rows = dave.find_elements(By.CSS_SELECTOR, "tr[id^=case-]")
        leaver = next(r for r in rows if "leaver" in r.text)
        assert "erin" in leaver.text and "open" in leaver.text
        leaver.find_element(By.LINK_TEXT, "evidence").click()
        assert wait_for(dave, "person").text == "Lee <Leaver> (leaver)"
        targets = dave.find_elements(By.CSS_SELECTOR, "tr[id^=target-]")
        assert dave.find_element(By.ID, "still-open").text == str(len(targets))  # none confirmed
        target = dave.find_element(By.ID, "target-prod-web-1-deploy")
        assert "not yet checked" in target.text
        main = dave.find_element(By.TAG_NAME, "main").text
        assert "left <b>today</b>" in main and "person.offboard" in main

        sign_in(alice, server, "alice")  # a member: refused
        alice.get(server.url + "/web/offboarding/leaver")
        assert "only administrators and auditors" in wait_for(alice, "error").text
