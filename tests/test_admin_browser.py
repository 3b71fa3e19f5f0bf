"""The admin page in a real browser: Debian's headless Chromium, driven by Selenium through chromedriver.

One server process and one browser serve the whole module. Each test starts from a signed-in page
(signing in again through `osnova-server admin-url` if an earlier test logged out), so the tests
hold in any order and on any xdist worker. Every test ends by reading Chromium's console: an error
or a CSP violation there fails it. Screenshots go to $OSNOVA_TEST_ARTIFACTS, else a pytest temp dir.
"""

from __future__ import annotations

import functools
import http.client
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest

from osnova_server import config as config_module
from tests.conftest import ServerProcess, cli, free_port, make_config, write_config

CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMEDRIVER: Final = Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM_FLAGS: Final = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
)
DESKTOP: Final = (1280, 800)
PHONE: Final = (390, 844)
WAIT: Final = 15.0
BAN_FROM: Final = "127.0.0.2"
T = TypeVar("T")


@dataclass
class Served:
    """The server process the module drives, and where its files are."""

    url: str
    config: Path
    port: int
    manifests: Path
    artifacts: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`osnova-server serve` with no address exempt from bans, so the test can make one."""
    root = tmp_path_factory.mktemp("admin-browser")
    state = root / "state"
    state.mkdir(mode=0o700)
    port = free_port()
    config = make_config(state, ban={"ignore": []})
    config = config_module.replace(config, "server", bind_address=f"127.0.0.1:{port}")
    path = write_config(root / "server.toml", config)
    manifests = root / "manifests"
    manifests.mkdir()
    artifacts = Path(os.environ.get("OSNOVA_TEST_ARTIFACTS") or root / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    process = ServerProcess(path)
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_ready(url)
        yield Served(url, path, port, manifests, artifacts)
    finally:
        code, err = process.stop()
        assert code == 0, err


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium from Debian with a fresh profile; Selenium Manager never runs."""
    profile = tempfile.mkdtemp(prefix="osnova-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    set_viewport(driver, DESKTOP)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def set_viewport(driver: webdriver.Chrome, size: tuple[int, int]) -> None:
    """Size the window so that the page itself gets `size` (the window's frame takes some room)."""
    driver.set_window_size(*size)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2 * size[0] - inner[0], 2 * size[1] - inner[1])


def admin_url(served: Served) -> str:
    """A fresh one-time link, from the command a newcomer runs."""
    done = cli("--config", str(served.config), "admin-url")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def wait_for(driver: webdriver.Chrome, what: Callable[[webdriver.Chrome], T], message: str) -> T:
    """Poll the page until `what` is truthy (bounded)."""
    try:
        # The lists are rebuilt whenever an event arrives, so an element found a moment ago may be gone.
        waiting = WebDriverWait(driver, WAIT, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,))
        return waiting.until(what, message)
    except TimeoutException:
        raise AssertionError(f"timed out waiting: {message}\n{driver.page_source[:3000]}") from None


def console_problems(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """Errors and CSP violations Chromium logged since the last look."""
    entries = driver.get_log("browser")
    return [e for e in entries if e["level"] in ("SEVERE", "ERROR") or "Content Security Policy" in e["message"]]


@pytest.fixture
def page(browser: webdriver.Chrome, served: Served) -> Iterator[webdriver.Chrome]:
    """The browser on a signed-in admin page; after the test, its console must be clean."""
    set_viewport(browser, DESKTOP)
    browser.get(f"{served.url}/admin/")
    if not browser.find_elements(By.ID, "overview"):
        browser.get_log("browser")  # the sign-in notice is a 401, which Chromium logs as a failed load
        browser.get(admin_url(served))
        wait_for(browser, lambda d: d.current_url == f"{served.url}/admin/", "the link leads to the page")
    wait_for(browser, lambda d: d.find_element(By.ID, "live-state").text == "Live", "the live socket opens")
    yield browser
    assert console_problems(browser) == []


def go(driver: webdriver.Chrome, section: str) -> None:
    """Open a section the way a keyboard user does: Tab to its link in the menu, press Enter."""
    link = driver.find_element(By.CSS_SELECTOR, f'nav a[data-section="{section}"]')
    link.send_keys(Keys.ENTER)
    wait_for(driver, lambda d: d.find_element(By.ID, section).is_displayed(), f"section {section} shows")


def rpc(served: Served, method: str, params: Any = None, token: str | None = None,
        source: str | None = None) -> tuple[int, Any]:
    """One JSON-RPC call over plain HTTP, as a phone (or a stranger) sends it."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10,
                                            source_address=(source, 0) if source else None)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}})
    try:
        connection.request("POST", "/rpc", body, headers)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read() or b"null")
    finally:
        connection.close()


def card(driver: webdriver.Chrome, list_id: str, attribute: str, value: str) -> WebElement | None:
    """The card of one device, app or ban, if it is shown."""
    for element in driver.find_elements(By.CSS_SELECTOR, f"#{list_id} li"):
        if element.get_attribute(attribute) == value:
            return element
    return None


def fact(element: WebElement, term: str) -> str:
    """The value shown for `term` in a card."""
    for pair in element.find_elements(By.CSS_SELECTOR, "dl > div"):
        if pair.find_element(By.TAG_NAME, "dt").text == term:
            return str(pair.find_element(By.TAG_NAME, "dd").text)
    raise AssertionError(f"no {term} in {element.text}")


def screenshot(driver: webdriver.Chrome, served: Served, name: str, size: tuple[int, int]) -> Path:
    """Save what the page shows at `size` as a PNG artifact."""
    assert driver.execute_script("return [window.innerWidth, window.innerHeight]") == list(size)
    path = served.artifacts / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    return path


# -- the tests -------------------------------------------------------------------------------


def test_a_phone_pairs_from_the_page_and_is_managed_there(page: webdriver.Chrome, served: Served) -> None:
    page.execute_script("window.osnovaNotReloaded = true;")
    go(page, "pair")
    Select(page.find_element(By.ID, "pair-role")).select_by_value("member")
    page.find_element(By.ID, "pair-name").send_keys(Keys.ENTER)  # submit with the keyboard
    code = wait_for(page, lambda d: d.find_element(By.ID, "pair-code").text, "the code shows")
    assert len(code) == 9 and code[4] == "-"
    assert "Expires in" in page.find_element(By.ID, "pair-countdown").text
    qr = page.find_element(By.ID, "pair-qr")
    wait_for(page, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", qr),
             "the QR image loads")
    assert qr.get_attribute("src").startswith(f"{served.url}/admin/qr/")
    # What a phone's camera reads from the screen: the pairing payload, with this code.
    shot = served.artifacts / "pair-qr.png"
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", qr)
    assert qr.screenshot(str(shot))
    decoded = subprocess.run(["zbarimg", "--raw", "-q", str(shot)], capture_output=True, text=True, timeout=30)
    assert decoded.returncode == 0, decoded.stderr
    payload = json.loads(decoded.stdout)
    assert payload["pairing"]["code"] == code and payload["server"]["address"] == served.url
    screenshot(page, served, "pair-desktop", DESKTOP)
    set_viewport(page, PHONE)
    screenshot(page, served, "pair-phone", PHONE)
    set_viewport(page, DESKTOP)

    # The phone redeems the code over HTTP; its name is markup, which must show as text.
    name = "<script>window.osnovaPwned = 1</script> Ana's phone"
    status, grant = rpc(served, "pairing.complete", {"token": code, "device_name": name})
    assert status == 200 and "result" in grant, grant
    device_id = grant["result"]["device_id"]
    done = wait_for(page, lambda d: d.find_element(By.ID, "pair-done").text, "the page announces the device")
    assert done.startswith(f"{name} paired as member")
    assert page.find_element(By.ID, "pair-result").is_displayed() is False
    go(page, "devices")
    shown = wait_for(page, lambda d: card(d, "devices-list", "data-device", device_id), "the device is listed")
    assert page.execute_script("return window.osnovaNotReloaded === true && window.osnovaPwned === undefined")
    title = shown.find_element(By.CSS_SELECTOR, ".card-title")
    assert title.text == name and title.find_elements(By.TAG_NAME, "script") == []
    assert fact(shown, "Role") == "member" and fact(shown, "Paired by") == "admin"

    # Change its role: choose, then press the button.
    Select(shown.find_element(By.TAG_NAME, "select")).select_by_value("owner")
    shown.find_element(By.XPATH, ".//button[text()='Change role']").click()
    wait_for(page, lambda d: fact(card(d, "devices-list", "data-device", device_id), "Role") == "owner",
             "the new role shows")

    # Revoke it, with the keyboard alone: Enter on Revoke, then Enter on the confirmation that takes focus.
    revoke = card(page, "devices-list", "data-device", device_id).find_element(By.XPATH, ".//button[text()='Revoke']")
    revoke.send_keys(Keys.ENTER)
    confirm = wait_for(page, lambda d: d.switch_to.active_element if d.switch_to.active_element.text == "Yes, revoke"
                       else None, "the confirmation takes focus")
    confirm.send_keys(Keys.ENTER)
    wait_for(page, lambda d: fact(card(d, "devices-list", "data-device", device_id), "Status") == "revoked",
             "the device shows revoked")
    assert rpc(served, "status.get", token=grant["result"]["access_token"])[0] == 401
    screenshot(page, served, "devices-desktop", DESKTOP)

    # And forget it.
    card(page, "devices-list", "data-device", device_id).find_element(By.XPATH, ".//button[text()='Remove']").click()
    page.find_element(By.XPATH, "//button[text()='Yes, remove']").click()
    wait_for(page, lambda d: card(d, "devices-list", "data-device", device_id) is None, "the device is gone")


def test_apps_install_show_validation_errors_as_text_and_uninstall(page: webdriver.Chrome, served: Served) -> None:
    good = served.manifests / "notes.json"
    good.write_text(json.dumps({
        "id": "ant://notes", "name": "Notes", "version": "1.2.3", "iconUri": "https://example.com/notes.png",
        "description": "Take notes",
        "components": [{"id": "ant://notes-ui", "name": "UI", "kind": "frontend", "version": "1.0.0"}],
    }))
    broken = served.manifests / "broken.json"
    broken.write_text(json.dumps({"id": "ant://broken", "name": "Broken"}))
    go(page, "apps")
    field = page.find_element(By.ID, "install-uri")
    error = page.find_element(By.ID, "install-error")

    field.send_keys(broken.as_uri(), Keys.ENTER)
    wait_for(page, lambda d: error.is_displayed() and error.text, "the validation error shows")
    assert "manifest" in error.text.lower()
    assert field.get_attribute("aria-invalid") == "true"
    assert page.switch_to.active_element == field  # back where the user typed

    # A URI holding markup: the error quoting it is text, never elements.
    hostile = "file:///nowhere/<img src=x id=osnova-injected>.json"
    field.clear()
    field.send_keys(hostile, Keys.ENTER)
    wait_for(page, lambda d: "<img" in error.text, "the error quotes the URI as text")
    assert page.find_elements(By.ID, "osnova-injected") == []
    assert error.find_elements(By.TAG_NAME, "img") == []

    field.clear()
    field.send_keys(good.as_uri(), Keys.ENTER)
    shown = wait_for(page, lambda d: card(d, "apps-list", "data-app", "ant://notes"), "the app is listed")
    assert not error.is_displayed() and field.get_attribute("aria-invalid") is None
    assert fact(shown, "Manifest") == good.as_uri()
    set_viewport(page, PHONE)
    screenshot(page, served, "apps-phone", PHONE)
    set_viewport(page, DESKTOP)

    shown.find_element(By.XPATH, ".//button[text()='Uninstall']").click()
    page.find_element(By.XPATH, "//button[text()='Cancel']").click()  # changed their mind: nothing happens
    assert card(page, "apps-list", "data-app", "ant://notes") is not None
    card(page, "apps-list", "data-app", "ant://notes").find_element(By.XPATH, ".//button[text()='Uninstall']").click()
    page.find_element(By.XPATH, "//button[text()='Yes, uninstall']").click()
    wait_for(page, lambda d: card(d, "apps-list", "data-app", "ant://notes") is None, "the app is gone")


def test_a_ban_is_listed_and_lifted(page: webdriver.Chrome, served: Served) -> None:
    for _ in range(10):  # [ban] max_failures bad tokens from another loopback address
        status, _ = rpc(served, "status.get", token="not-a-token", source=BAN_FROM)
        if status == 403:
            break
    assert rpc(served, "status.get", source=BAN_FROM)[0] == 403
    go(page, "bans")
    shown = wait_for(page, lambda d: card(d, "bans-list", "data-ban", BAN_FROM), "the ban is listed")
    assert "failed" in fact(shown, "Why")
    shown.find_element(By.TAG_NAME, "button").send_keys(Keys.ENTER)
    wait_for(page, lambda d: card(d, "bans-list", "data-ban", BAN_FROM) is None, "the ban is gone")
    assert page.find_element(By.ID, "bans-empty").is_displayed()
    assert rpc(served, "status.get", source=BAN_FROM)[0] == 401  # heard again (and asked for a token)


def test_the_overview_is_live_and_fits_a_phone(page: webdriver.Chrome, served: Served) -> None:
    go(page, "overview")
    wait_for(page, lambda d: d.find_element(By.ID, "ov-version").text not in ("", "–"), "the overview fills in")
    assert page.find_element(By.ID, "ov-status").text in ("ok", "degraded")
    assert page.find_element(By.ID, "ov-certificate").text == "no TLS (plain HTTP)"
    services = page.find_elements(By.CSS_SELECTOR, "#ov-services li")
    assert any("database" in service.text for service in services)
    first = page.find_element(By.ID, "ov-uptime").text
    wait_for(page, lambda d: d.find_element(By.ID, "ov-uptime").text != first, "uptime moves without a reload")
    screenshot(page, served, "overview-desktop", DESKTOP)
    set_viewport(page, PHONE)
    width = page.execute_script("return document.documentElement.scrollWidth")
    assert width <= PHONE[0], f"the page is {width} px wide on a {PHONE[0]} px screen"
    screenshot(page, served, "overview-phone", PHONE)
    paint = page.execute_script(
        "return performance.getEntriesByType('paint').map(e => [e.name, e.startTime])")
    assert {name for name, _ in paint} >= {"first-paint", "first-contentful-paint"}


def test_every_control_is_reachable_with_tab(page: webdriver.Chrome, served: Served) -> None:
    go(page, "pair")
    page.find_element(By.TAG_NAME, "body").click()
    reached = set()
    for _ in range(40):
        page.switch_to.active_element.send_keys(Keys.TAB)
        active = page.switch_to.active_element
        reached.add(active.get_attribute("id") or active.text)
    assert {"pair-name", "pair-role", "pair-ttl", "Get a pairing code", "logout", "Overview", "Bans"} <= reached
    for control in page.find_elements(By.CSS_SELECTOR, "#pair input, #pair select"):
        label = page.find_elements(By.CSS_SELECTOR, f'label[for="{control.get_attribute("id")}"]')
        assert label and label[0].text, control.get_attribute("id")


def test_a_used_link_shows_how_to_get_a_new_one(browser: webdriver.Chrome, served: Served) -> None:
    link = admin_url(served)
    browser.get(link)
    wait_for(browser, lambda d: d.current_url == f"{served.url}/admin/", "the link signs in")
    browser.get(link)
    wait_for(browser, lambda d: d.find_elements(By.ID, "notice-message"), "a notice shows")
    assert browser.find_element(By.TAG_NAME, "h1").text == "This sign-in link does not work"
    assert "already used or has expired" in browser.find_element(By.ID, "notice-message").text
    assert browser.find_element(By.TAG_NAME, "code").text == "osnova-server admin-url"
    assert "#" not in browser.current_url  # the secret left the address bar
    problems = console_problems(browser)
    # The refusal itself is a 403 the browser reports; nothing else may be there.
    assert [p for p in problems if "403" not in p["message"]] == []


def test_log_out_ends_the_session_and_the_cookie_is_refused_after(page: webdriver.Chrome, served: Served) -> None:
    cookie = page.get_cookie("osnova_admin")
    assert cookie is not None and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/admin"
    page.find_element(By.ID, "logout").send_keys(Keys.ENTER)
    wait_for(page, lambda d: d.find_elements(By.ID, "notice-message"), "the sign-in notice shows")
    assert page.find_element(By.TAG_NAME, "h1").text == "Sign in to the admin page"
    assert page.find_element(By.TAG_NAME, "code").text == "osnova-server admin-url"
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        connection.request("GET", "/admin/api/session", headers={"Cookie": f"osnova_admin={cookie['value']}"})
        assert connection.getresponse().status == 401
    finally:
        connection.close()
    problems = console_problems(page)
    assert [p for p in problems if "401" not in p["message"]] == []  # the sign-in page itself is a 401
    page.get_log("browser")


def test_a_cross_origin_form_cannot_post_to_the_admin_page(page: webdriver.Chrome, served: Served) -> None:
    """A page on another port of this host (same site, so the Strict cookie goes along) auto-posts a form."""
    (served.manifests / "attack.html").write_text(
        f'<form id="f" method="post" action="{served.url}/admin/logout"><input name="x" value="1"></form>'
        '<script src="attack.js"></script>'
    )
    (served.manifests / "attack.js").write_text('document.getElementById("f").submit();')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served.manifests))
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=attacker.serve_forever, daemon=True)
    thread.start()
    try:
        page.get(f"http://127.0.0.1:{attacker.server_address[1]}/attack.html")
        wait_for(page, lambda d: d.current_url == f"{served.url}/admin/logout", "the form was posted")
        assert "must come from the admin page" in page.find_element(By.TAG_NAME, "body").text
    finally:
        attacker.shutdown()
        attacker.server_close()
        thread.join()
    page.get_log("browser")  # the 403 the forged form got is the point
    page.get(f"{served.url}/admin/")
    wait_for(page, lambda d: d.find_element(By.ID, "live-state").text == "Live", "the session survived")


def test_a_stopping_server_is_said_so_and_a_restarted_one_asks_for_a_new_link(
    browser: webdriver.Chrome, tmp_path: Path,
) -> None:
    """SIGTERM: the page says the server is stopping; once it is back (sessions gone), the sign-in page."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    port = free_port()
    config = config_module.replace(make_config(state), "server", bind_address=f"127.0.0.1:{port}")
    path = write_config(tmp_path / "server.toml", config)
    url = f"http://127.0.0.1:{port}"
    own = Served(url, path, port, tmp_path, tmp_path)
    process = ServerProcess(path)
    try:
        process.wait_ready(url)
        browser.get(admin_url(own))
        wait_for(browser, lambda d: d.find_element(By.ID, "live-state").text == "Live", "the page is live")
        process.process.terminate()
        banner = wait_for(browser, lambda d: d.find_element(By.ID, "banner").text, "the page says why")
        assert banner.startswith("The server is stopping or restarting.")
        assert process.process.wait(timeout=15) == 0
        process = ServerProcess(path)
        process.wait_ready(url)
        wait_for(browser, lambda d: d.find_elements(By.ID, "notice-message"), "the sign-in page once it is back")
        assert browser.find_element(By.TAG_NAME, "code").text == "osnova-server admin-url"
    finally:
        process.stop()
    # The page's reconnection attempts while the server was down are failed loads, as they should be.
    problems = console_problems(browser)
    assert all("ERR_CONNECTION_REFUSED" in p["message"] or "401" in p["message"]
               or "WebSocket" in p["message"] for p in problems), problems
