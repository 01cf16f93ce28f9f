"""The admin page in a real browser (headless Chromium driven by Selenium) against a running
appliance and a real DCMTK storescp: setup, login, roles, CSRF, modalities, routes, restore,
settings rollback, upload, and patient data that must render as text."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image
from pydicom import dcmread
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from .conftest import (
    ADMIN,
    ADMIN_PASSWORD,
    ARTIFACTS,
    ROOT,
    ApplianceProcess,
    free_port,
    make_series,
    storescu,
    wait_for,
)
from .peers import StoreSCP

pytestmark = pytest.mark.integration

XSS_NAME = "<script>window.pwned=1</script>^Eve"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    if shutil.which("chromium") is None or not Path(CHROMEDRIVER).exists():
        pytest.fail("chromium and chromium-driver are not installed (tools/test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--disable-gpu"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(60)
    yield browser
    browser.quit()


@pytest.fixture
def browser(driver: WebDriver) -> WebDriver:
    driver.delete_all_cookies()
    driver.set_window_size(1280, 900)
    return driver


def shot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"admin-{name}.png"))


def fill(driver: WebDriver, values: dict[str, str]) -> None:
    for element_id, value in values.items():
        field = driver.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(value)


def click(driver: WebDriver, element_id: str) -> None:
    """Click, and when that loads a new page, wait until it has."""
    page = driver.find_element(By.TAG_NAME, "html")
    element = driver.find_element(By.ID, element_id)
    navigates = element.tag_name in ("button", "a") and element.get_attribute("type") != "button"
    element.click()
    if navigates:
        wait_for(lambda: stale(page), 30, "the next page")


def stale(element: Any) -> bool:
    try:
        element.tag_name  # noqa: B018
    except WebDriverException:  # stale, or its document is gone
        return True
    return False


def follow(driver: WebDriver, element: Any) -> None:
    """Click an element found otherwise than by ID, and wait for the page it loads."""
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    wait_for(lambda: stale(page), 30, "the next page")


def login(driver: WebDriver, app: ApplianceProcess, user: str = ADMIN,
          password: str = ADMIN_PASSWORD) -> None:
    driver.get(app.url + "/login")
    fill(driver, {"username": user, "password": password})
    click(driver, "login")
    wait_for(lambda: "/admin/" in driver.current_url, 30, "the dashboard after login")


def text(driver: WebDriver) -> str:
    return str(driver.find_element(By.TAG_NAME, "body").text)


def browser_session(driver: WebDriver, app: ApplianceProcess) -> requests.Session:
    """A requests session with the browser's cookies (and no API token)."""
    session = requests.Session()
    for cookie in driver.get_cookies():
        session.cookies.set(cookie["name"], cookie["value"])
    return session


def csrf(driver: WebDriver) -> str:
    meta = driver.find_element(By.CSS_SELECTOR, 'meta[name="csrf-token"]')
    return str(meta.get_attribute("content"))


def test_first_run_setup_login_logout_csrf(appliance_factory: Any, browser: WebDriver) -> None:
    app = appliance_factory(accounts=False, config={"http": {"host": "0.0.0.0"}}).start()
    assert "http.host 0.0.0.0 ignored until an administrator is set up" in app.log()
    assert "HTTP listening on 127.0.0.1:" in app.log()
    assert requests.get(app.url + "/patients", timeout=10).status_code == 401
    match = re.search(r"http://127\.0\.0\.1:\d+/setup\?token=(\S+)", app.log())
    assert match, "the setup link is printed in the log"
    browser.get(app.url + "/login")
    assert "setup link" in text(browser)
    browser.get(match.group(0))
    shot(browser, "setup")
    fill(browser, {"username": "root", "password": "long enough pw", "password2": "long enough pw"})
    click(browser, "setup")
    wait_for(lambda: browser.current_url.endswith("/admin/"), 30, "the dashboard")
    shot(browser, "dashboard-empty")
    assert requests.get(match.group(0), timeout=10).status_code == 403, "the link is one-time"

    # A change without the CSRF token is refused, with it accepted.
    session = browser_session(browser, app)
    r = session.post(app.url + "/admin/settings", data={"quota.max_studies": "3"}, timeout=10)
    assert r.status_code == 403 and "CSRF" in r.text
    r = session.put(app.url + "/modalities/x", json={"AET": "X", "Host": "h", "Port": 104},
                    timeout=10)
    assert r.status_code == 403
    r = session.put(app.url + "/modalities/x", json={"AET": "X", "Host": "h", "Port": 104},
                    headers={"X-CSRF-Token": csrf(browser)}, timeout=10)
    assert r.status_code == 200
    # HTTP Basic works for the REST API, without CSRF.
    r = requests.delete(app.url + "/modalities/x", auth=("root", "long enough pw"), timeout=10)
    assert r.status_code == 200

    click(browser, "logout")
    wait_for(lambda: "/login" in browser.current_url, 30, "the login page")
    browser.get(app.url + "/admin/browse")
    assert "/login" in browser.current_url, "logged out: pages redirect to the login"
    fill(browser, {"username": "root", "password": "wrong password"})
    click(browser, "login")
    assert "wrong user name or password" in text(browser)
    shot(browser, "login-failed")
    login(browser, app, "root", "long enough pw")
    form = requests.get(app.url + "/login", timeout=10)
    r = requests.post(app.url + "/login", timeout=30, allow_redirects=False,
                      cookies=form.cookies, data={"username": "root", "password": "long enough pw",
                                                  "csrf_token": form.cookies["appliance_csrf"]})
    assert r.status_code == 303
    cookie = r.headers["Set-Cookie"].lower()
    assert "appliance_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie

    # Rate limit: failed logins for one user name are paused.
    statuses = [requests.post(app.url + "/login", timeout=30,
                              data={"username": "nobody", "password": "x" * 12,
                                    "csrf_token": "t"}, cookies={"appliance_csrf": "t"}
                              ).status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]

    browser.get(app.url + "/admin/audit")
    shot(browser, "audit")
    audit = text(browser)
    assert "setup" in audit and "login" in audit and "PUT /modalities/x" in audit
    assert "POST /admin/settings denied missing or wrong CSRF token" in audit


PHYSICIST = ("physicist", "viewer password")


def add_viewer(browser: WebDriver, app: ApplianceProcess) -> None:
    browser.get(app.url + "/admin/users")
    fill(browser, {"u-name": PHYSICIST[0], "u-password": PHYSICIST[1]})
    Select(browser.find_element(By.ID, "u-role")).select_by_visible_text("viewer")
    click(browser, "u-save")
    assert "user physicist saved with role viewer" in text(browser)


def test_viewer_is_denied_settings(appliance: ApplianceProcess, browser: WebDriver) -> None:
    login(browser, appliance)
    add_viewer(browser, appliance)
    shot(browser, "users")
    click(browser, "logout")
    login(browser, appliance, *PHYSICIST)
    assert "Settings" not in browser.find_element(By.TAG_NAME, "nav").text
    browser.get(appliance.url + "/admin/settings")
    assert "needs an administrator" in text(browser)
    session = browser_session(browser, appliance)
    r = session.post(appliance.url + "/admin/settings", timeout=10,
                     data={"csrf_token": csrf(browser), "quota.max_studies": "1"})
    assert r.status_code == 403
    assert session.get(appliance.url + "/patients", timeout=10).status_code == 200
    viewer = PHYSICIST  # the REST API with HTTP Basic: same roles
    r = requests.put(appliance.url + "/modalities/x", auth=viewer, timeout=10,
                     json={"AET": "X", "Host": "h", "Port": 104})
    assert r.status_code == 403
    r = requests.post(appliance.url + "/modalities/none/store", auth=viewer, json=["x"],
                      timeout=10)
    assert r.status_code == 404, "viewers may send to known modalities"


def test_cli_creates_accounts_and_tokens(appliance_factory: Any) -> None:
    app = appliance_factory(accounts=False)
    cli = [sys.executable, "-m", "appliance", "user", "--data", str(app.data)]
    done = subprocess.run([*cli, "add", "ops", "--admin", "--password-stdin"], input="short\n",
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and "at least 10 characters" in done.stderr
    subprocess.run([*cli, "add", "ops", "--admin", "--password-stdin"], check=True, timeout=60,
                   input="a long password\n", capture_output=True, text=True, cwd=ROOT)
    token = subprocess.run([*cli, "token", "ops", "--label", "monitoring"], check=True,
                           timeout=60, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    app.start()
    assert "setup?token" not in app.log()
    auth = {"Authorization": f"Bearer {token}"}
    assert requests.get(app.url + "/patients", headers=auth, timeout=10).status_code == 200
    wrong = {"Authorization": f"Bearer {token[:-2]}xx"}
    assert requests.get(app.url + "/patients", headers=wrong, timeout=10).status_code == 401
    assert requests.get(app.url + "/patients", auth=("ops", "a long password"),
                        timeout=10).status_code == 200
    locked = subprocess.run([*cli, "token", "ops"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert locked.returncode == 1 and "in use" in locked.stderr


def test_modality_route_and_restore(appliance: ApplianceProcess, browser: WebDriver,
                                    tmp_path: Path) -> None:
    storescp = StoreSCP(free_port(), tmp_path / "received", aet="PLANNING")
    try:
        ct = make_series(tmp_path / "ct", 3, patient_id="RT001", patient_name="Curie^Marie")
        xss = make_series(tmp_path / "xss", 1, patient_id="XSS1", patient_name=XSS_NAME,
                          modality="MR")
        storescu(appliance, *ct, *xss)
        login(browser, appliance)
        add_modality(browser, appliance, storescp.port)
        create_route(browser, appliance)
        add_viewer(browser, appliance)
        click(browser, "logout")
        login(browser, appliance, *PHYSICIST)  # a physicist restores: a viewer may send
        restore(browser, appliance, storescp, len(ct))
        click(browser, "logout")
        login(browser, appliance)
        browser.get(appliance.url + "/admin/audit")
        assert re.search(r"physicist 127.0.0.1 POST /admin/studies/\S+/send ok sent study \S+ "
                         r"\(3 instances\) to planning", text(browser))
        xss_renders_as_text(browser, appliance)
        storescp.stop()
        failing_destination(browser, appliance)
    finally:
        storescp.stop()


def add_modality(browser: WebDriver, app: ApplianceProcess, port: int) -> None:
    browser.get(app.url + "/admin/modalities")
    fill(browser, {"m-name": "nowhere", "m-aet": "NOWHERE", "m-host": "127.0.0.1",
                   "m-port": str(free_port())})
    click(browser, "m-save")
    assert "cannot connect to NOWHERE" in browser.find_element(By.ID, "echo-result").text
    assert "not saved" in text(browser)
    fill(browser, {"m-name": "planning", "m-aet": "PLANNING", "m-host": "127.0.0.1",
                   "m-port": str(port)})
    click(browser, "m-save")
    assert "modality planning saved; C-ECHO to PLANNING: success" in text(browser)
    assert app.json("/modalities") == ["planning"]
    shot(browser, "modalities")


def create_route(browser: WebDriver, app: ApplianceProcess) -> None:
    browser.get(app.url + "/admin/routes")
    fill(browser, {"r-name": "mr-to-planning", "r-modality": "MR"})
    browser.find_element(By.CSS_SELECTOR, 'input[name="destinations"][value="planning"]').click()
    click(browser, "r-enabled")  # saved disabled: the restore below must be the only send
    click(browser, "r-dry-run")
    dry = browser.find_element(By.ID, "dry-run").text
    assert "1 recent studies would have matched" in dry and "Curie" not in dry
    click(browser, "r-save")
    assert "route mr-to-planning saved" in text(browser)
    route = app.json("/routes")["mr-to-planning"]
    assert route["modality"] == ["MR"] and route["enabled"] is False
    shot(browser, "routes")


def restore(browser: WebDriver, app: ApplianceProcess, storescp: StoreSCP, count: int) -> None:
    """Dashboard -> search (click 1) -> send (click 2) -> progress to done."""
    browser.get(app.url + "/admin/")
    assert browser.find_element(By.ID, "status").text.startswith("All good")
    assert browser.find_element(By.ID, "count-instances").text == "4"
    shot(browser, "dashboard")
    fill(browser, {"q-name": "curie"})
    click(browser, "q-search")  # 1
    rows = browser.find_elements(By.CSS_SELECTOR, "#studies tr.study")
    assert len(rows) == 1 and "Curie^Marie" in rows[0].text
    shot(browser, "browse")
    follow(browser, rows[0].find_element(By.CLASS_NAME, "send-button"))  # 2
    wait_for(lambda: browser.find_element(By.ID, "progress").get_attribute("data-state")
             is not None, 60, "the send to finish")
    assert browser.find_element(By.ID, "progress").get_attribute("data-state") == "done"
    assert f"Done: {count} images sent" in text(browser)
    shot(browser, "study-sent")
    browser.get(app.url + "/admin/queue")
    assert "planning" in browser.find_element(By.ID, "queue").text
    shot(browser, "queue")
    sent = {dcmread(p).SOPInstanceUID for p in storescp.files()}
    assert len(sent) == count


def failing_destination(browser: WebDriver, app: ApplianceProcess) -> None:
    """A send to a destination that is down: the dashboard says so, the queue cancels it."""
    browser.get(app.url + "/admin/browse?patient_id=RT001")
    follow(browser, browser.find_element(By.CLASS_NAME, "send-button"))

    def flagged() -> bool:
        browser.get(app.url + "/admin/")
        return "planning is failing" in browser.find_element(By.ID, "status").text

    wait_for(flagged, 60, "the dashboard to flag the destination")
    shot(browser, "dashboard-attention")
    browser.get(app.url + "/admin/queue")
    assert "PLANNING@127.0.0.1" in browser.find_element(By.ID, "queue").text
    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, "#queue button.danger").click()
    browser.switch_to.alert.accept()
    wait_for(lambda: stale(page), 30, "the queue page")
    assert "3 entries for planning: cancel" in text(browser)
    assert app.json("/queue")["planning"]["Pending"] == 0


def xss_renders_as_text(browser: WebDriver, app: ApplianceProcess) -> None:
    browser.get(app.url + "/admin/browse?modality=MR")
    link = browser.find_element(By.CLASS_NAME, "patient-name")
    assert link.text == XSS_NAME
    assert "&lt;script&gt;" in browser.page_source
    assert browser.execute_script("return window.pwned") is None
    follow(browser, link)
    assert XSS_NAME in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.execute_script("return window.pwned") is None
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    shot(browser, "study-xss")
    page = browser_session(browser, app).get(browser.current_url, timeout=10)
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]


def test_settings_rollback_export_import(appliance: ApplianceProcess, browser: WebDriver,
                                        tmp_path: Path) -> None:
    login(browser, appliance)
    browser.get(appliance.url + "/admin/settings")
    fill(browser, {"quota.max_studies": "many"})
    click(browser, "save-settings")
    assert "not saved: quota.max_studies: 'many' is not a int" in text(browser)
    fill(browser, {"quota.max_studies": "-4"})
    click(browser, "save-settings")
    assert "below the minimum" in text(browser)
    fill(browser, {"storage.stable_age": "5"})
    click(browser, "save-settings")
    assert "saved" in text(browser)
    fill(browser, {"quota.max_studies": "1"})  # valid, but bad: keep one study only
    click(browser, "save-settings")
    assert browser.find_element(By.ID, "quota.max_studies").get_attribute("value") == "1"
    shot(browser, "settings")
    export = browser_session(browser, appliance).get(appliance.url + "/admin/settings/export",
                                                      timeout=10).json()
    assert export["quota"]["max_studies"] == 1 and "data" not in export
    (button,) = browser.find_elements(By.CLASS_NAME, "rollback")  # the version before
    assert button.get_attribute("data-version") == "1"
    follow(browser, button)
    assert "version 1 restored" in text(browser)
    assert browser.find_element(By.ID, "quota.max_studies").get_attribute("value") == "0"
    assert browser.find_element(By.ID, "storage.stable_age").get_attribute("value") == "5.0"
    browser.get(appliance.url + "/admin/audit")
    assert "configuration rolled back to version 1" in text(browser)

    # Import: a whole configuration from one file (validated first: a bad one changes nothing)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**export, "routes": {"r": {"destinations": ["nowhere"]}}}))
    good = tmp_path / "good.json"
    good.write_text(json.dumps({**export, "quota": {**export["quota"], "max_studies": 9}}))
    for path, expected in ((bad, "not imported: routes.r.destinations"),
                           (good, "configuration imported")):
        browser.get(appliance.url + "/admin/settings")
        browser.find_element(By.CSS_SELECTOR, 'input[type="file"][name="file"]').send_keys(
            str(path))
        page = browser.find_element(By.TAG_NAME, "html")
        browser.find_element(By.ID, "import").click()
        browser.switch_to.alert.accept()
        wait_for(lambda: stale(page), 30, "the settings page")  # noqa: B023
        assert expected in text(browser)
    assert browser.find_element(By.ID, "quota.max_studies").get_attribute("value") == "9"


def test_upload_browse_search_download(appliance: ApplianceProcess, browser: WebDriver,
                                       tmp_path: Path) -> None:
    first = make_series(tmp_path / "a", 2, patient_id="UP1", patient_name="Upload^One")
    second = make_series(tmp_path / "b", 3, patient_id="UP2", patient_name="Upload^Two",
                         modality="MR")
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in second:
            z.write(p, p.name)
    login(browser, appliance)
    browser.get(appliance.url + "/admin/upload")
    notes = tmp_path / "notes.txt"
    notes.write_text("not DICOM")
    uploads = [*first, archive, notes]
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in uploads))
    click(browser, "upload-start")
    wait_for(lambda: browser.find_element(By.ID, "upload-results").get_attribute("data-done"),
             60, "the uploads")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#upload-results tr.ok")) == 3
    (refused,) = browser.find_elements(By.CSS_SELECTOR, "#upload-results tr.bad")
    assert refused.text.startswith("notes.txt") and "400" in refused.text
    shot(browser, "upload")
    assert appliance.statistics()["CountInstances"] == 5

    browser.get(appliance.url + "/admin/browse")
    fill(browser, {"s-id": "UP2"})
    click(browser, "s-search")
    assert [r.text.split()[0] for r in
            browser.find_elements(By.CSS_SELECTOR, "#studies tr.study")] == ["Upload^Two"]
    for query, expected in (("modality=CT", {"Upload^One"}),
                            ("date_from=20251231&date_to=20260101", {"Upload^One", "Upload^Two"}),
                            ("date_from=20260102", set()), ("name=two", {"Upload^Two"})):
        browser.get(appliance.url + "/admin/browse?" + query)
        names = {e.text for e in browser.find_elements(By.CLASS_NAME, "patient-name")}
        assert names == expected, query
    browser.get(appliance.url + "/admin/browse?view=patients&name=upload")
    patients = browser.find_elements(By.CSS_SELECTOR, "#patients tr.patient")
    assert sorted(p.text.split()[0] for p in patients) == ["Upload^One", "Upload^Two"]
    shot(browser, "patients")
    follow(browser, browser.find_element(By.LINK_TEXT, "Upload^Two"))  # the patient's studies
    follow(browser, browser.find_element(By.CLASS_NAME, "patient-name"))  # the study
    shot(browser, "study")
    browser.execute_script("document.getElementById('until').value = '2099-01-31'")
    click(browser, "protect")
    assert browser.find_element(By.ID, "protected").text.startswith("yes, until 2099-02-01")
    study_id = browser.current_url.split("/admin/studies/")[1].split("?")[0]
    assert appliance.get(f"/studies/{study_id}/protected").text == "1"
    href = browser.find_element(By.ID, "download").get_attribute("href")
    r = browser_session(browser, appliance).get(str(href), timeout=30)
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        names = z.namelist()
        assert len(names) == 3
        uids = {dcmread(io.BytesIO(z.read(n))).SOPInstanceUID for n in names}
    assert uids == {dcmread(p).SOPInstanceUID for p in second}
    follow(browser, browser.find_element(By.CSS_SELECTOR, "#series a"))
    decoded = ("return Array.from(document.querySelectorAll('.thumb img'))"
               ".every(i => i.complete && i.naturalWidth === 64)")
    wait_for(lambda: browser.execute_script(decoded), 30, "the previews to decode")
    shot(browser, "series")
    src = browser.find_element(By.CSS_SELECTOR, ".thumb img").get_attribute("src")
    r = browser_session(browser, appliance).get(str(src), timeout=30)
    assert r.headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as png:
        assert png.size == (64, 64) and png.mode == "L"
    browser.get(appliance.url + "/admin/browse?patient_id=UP1")
    follow(browser, browser.find_element(By.CLASS_NAME, "patient-name"))
    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.ID, "delete").click()
    browser.switch_to.alert.accept()
    wait_for(lambda: stale(page), 30, "the browse page")
    assert "study deleted" in text(browser)
    assert appliance.statistics()["CountInstances"] == 3
    browser.set_window_size(820, 1180)  # a tablet
    browser.get(appliance.url + "/admin/")
    shot(browser, "dashboard-tablet")
