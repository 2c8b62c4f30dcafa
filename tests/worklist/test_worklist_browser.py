"""The worklist page in headless Chromium against a real ``squid serve`` + worker + ``squid listen``:
start a job on a folder of films, watch it finish, sort the worklist, open the most suspicious
study with its map; send a study to the node with dcmtk's ``storescu`` and find it on the page;
retry a dead letter; keyboard use and axe-core's WCAG checks.

``SQUID_SCREENSHOT_DIR=docs/img`` keeps the README's screenshots (worklist.png, worklist-viewer.png,
node-health.png) rendered from this very page.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.browser_support import CHROMEDRIVER, CHROMIUM, chromium
from tests.jobs.jobs_support import wait_for
from tests.worklist.browser_support import NODE_AE, axe_source, axe_violations, listening
from tests.worklist.conftest import Stack

STORESCU = shutil.which("storescu")
WAIT_S = 300.0  # hang guards, not performance assertions
LOADED = "const img = document.getElementById(arguments[0]); return img.complete && img.naturalWidth > 0;"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not CHROMIUM.exists() or not Path(CHROMEDRIVER).exists() or STORESCU is None,
        reason="needs chromium, chromium-driver and dcmtk: apt-get install chromium chromium-driver dcmtk",
    ),
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


@pytest.fixture(scope="module")
def axe(tmp_path_factory: pytest.TempPathFactory) -> str:
    return axe_source(tmp_path_factory.mktemp("axe"))


def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SQUID_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def rows(browser: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, "#worklist-body tr")


def test_a_job_ranked_opened_and_a_node_study_found(
    browser: Any, stack: Stack, axe: str, tmp_path: Path
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    # The page polls and redraws changed tables: an element read mid-redraw is read again.
    wait = WebDriverWait(browser, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    folder = shots(tmp_path)
    browser.get(stack.api.url + "/")
    wait.until(lambda d: "threshold" in d.find_element(By.ID, "model-line").text)

    # Start a job on the folder of films, as a person types it; watch it progress and finish.
    browser.find_element(By.ID, "job-path").send_keys("ward-3")
    browser.find_element(By.ID, "job-dicom").click()
    browser.find_element(By.CSS_SELECTOR, "#job-form button[type=submit]").click()
    wait.until(lambda d: "Started a job on ward-3" in d.find_element(By.ID, "job-status").text)
    job_row = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs-body tr[data-state=succeeded]"))[0]
    bar = job_row.find_element(By.CSS_SELECTOR, "[role=progressbar]")
    assert bar.get_attribute("aria-valuenow") == bar.get_attribute("aria-valuemax") == "9"
    assert "7 scored · 1 skipped · 1 out of domain · 0 failed of 9" in job_row.text
    assert {a.text for a in job_row.find_elements(By.CSS_SELECTOR, "a")} == {"CSV", "DICOM"}

    # The worklist shows the job's studies, the most suspicious first.
    wait.until(lambda d: len(rows(d)) == 7)
    job_id = job_row.get_attribute("data-job")
    with stack.api.client() as http:
        api = http.get("/worklist", params={"job": job_id}).json()["studies"]
    shown = [row.get_attribute("data-study") for row in rows(browser)]
    assert shown == [study["study_key"] for study in api]
    top = rows(browser)[0]
    assert "flagged" in top.get_attribute("class")
    assert float(top.get_attribute("data-score")) == max(s["score"] for s in api if s["score"] is not None)
    assert "anomalous" in top.text
    for number in range(4):
        wait.until(
            lambda d, n=number: d.execute_script(
                "const img = document.querySelectorAll('#worklist-body img')[arguments[0]];"
                "return img.complete && img.naturalWidth === 96;",
                n,
            )
        )

    # Sort by study date (newest first), then oldest first.
    browser.find_element(By.CSS_SELECTOR, "th[data-sort=study_date] button").click()
    wait.until(
        lambda d: (
            d.find_element(By.CSS_SELECTOR, "th[data-sort=study_date]").get_attribute("aria-sort")
            == "descending"
        )
    )
    dates = lambda d: [r.find_elements(By.TAG_NAME, "td")[6].text for r in rows(d)]  # noqa: E731
    wait.until(lambda d: dates(d)[:3] == ["2026-12-06", "2026-12-05", "2026-12-04"])
    browser.find_element(By.CSS_SELECTOR, "th[data-sort=study_date] button").click()
    wait.until(lambda d: [x for x in dates(d) if x != "–"][:2] == ["2026-12-01", "2026-12-02"])
    browser.find_element(By.CSS_SELECTOR, "th[data-sort=score] button").click()
    wait.until(lambda d: rows(d)[0].get_attribute("data-study") == api[0]["study_key"])
    # Filter by label (the boxes come from /worklist/facets), then clear it.
    browser.find_element(By.ID, "label-anomalous").click()
    flagged = [s["study_key"] for s in api if s["label"] == "anomalous"]
    wait.until(lambda d: [r.get_attribute("data-study") for r in rows(d)] == flagged)
    browser.find_element(By.ID, "label-anomalous").click()
    wait.until(lambda d: len(rows(d)) == 7)
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(folder / "worklist.png"))

    # Open the top study with the keyboard: its film, map and reconstruction; the slider fades the map.
    button = rows(browser)[0].find_element(By.CSS_SELECTOR, "button.open")
    button.send_keys(Keys.ENTER)
    wait.until(lambda d: d.find_element(By.ID, "viewer").get_attribute("open") is not None)
    for image in ("viewer-film", "viewer-map", "viewer-input", "viewer-reconstruction"):
        wait.until(lambda d, i=image: d.execute_script(LOADED, i))
    assert "Score" in browser.find_element(By.ID, "viewer-status").text
    assert "training normals" in browser.find_element(By.ID, "viewer-legend-text").text
    slider = browser.find_element(By.ID, "map-opacity")
    slider.send_keys(Keys.END)
    assert browser.find_element(By.ID, "viewer-map").value_of_css_property("opacity") == "1"
    slider.send_keys(Keys.HOME)
    assert browser.find_element(By.ID, "viewer-map").value_of_css_property("opacity") == "0"
    for _ in range(45):
        slider.send_keys(Keys.ARROW_RIGHT)
    assert axe_violations(browser, axe, "#viewer") == []
    assert browser.save_screenshot(str(folder / "worklist-viewer.png"))
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait.until(lambda d: d.find_element(By.ID, "viewer").get_attribute("open") is None)
    assert browser.switch_to.active_element == button  # focus returns to the row that opened it

    # A study sent to the node by C-STORE appears in the same worklist, and the node's health.
    workdir = tmp_path / "node"
    sent = workdir / "sent.dcm"
    workdir.mkdir()
    source = dcmread(stack.import_root / "ward-3" / "study-4" / "0.dcm")
    source.StudyInstanceUID, source.SOPInstanceUID = generate_uid(), generate_uid()
    source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
    source.AccessionNumber = "NODE0001"
    source.save_as(sent)
    closed = {"ae_title": "PACS", "host": "127.0.0.1", "port": 9}  # nothing listens: a dead letter
    with listening(
        stack.env,
        workdir,
        SQUID_DICOM_DESTINATIONS=f"[{__import__('json').dumps(closed)}]",
        SQUID_DICOM_SEND_ATTEMPTS="1",
    ) as port:
        stored = subprocess.run(
            [STORESCU, "-aet", "STORESCU", "-aec", NODE_AE, "127.0.0.1", str(port), str(sent)],
            timeout=120,
            capture_output=True,
            text=True,
        )
        assert stored.returncode == 0, stored.stderr + (workdir / "node.log").read_text(errors="replace")
        node_row = wait.until(lambda d: [r for r in rows(d) if "NODE0001" in r.text])[0]
        assert "DICOM node" in node_row.text
        wait.until(lambda d: "running" in d.find_element(By.ID, "node-state").text)
        wait.until(lambda d: "Studies scored\n1" in d.find_element(By.ID, "node-stats").text)
        retry = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#dead-body button"))[0]
        node_row.find_element(By.CSS_SELECTOR, "button.open").click()
        for image in ("viewer-film", "viewer-map", "viewer-reconstruction"):
            wait.until(lambda d, i=image: d.execute_script(LOADED, i))
        browser.find_element(By.ID, "viewer-close").click()
        browser.find_element(By.ID, "node-title").location_once_scrolled_into_view  # noqa: B018
        assert browser.save_screenshot(str(folder / "node-health.png"))
        retry.click()
        wait.until(lambda d: "Sent 1 result(s) back" in d.find_element(By.ID, "dead-status").text)

    browser.execute_script("window.scrollTo(0, 0)")
    assert axe_violations(browser, axe) == []


def test_keyboard_reaches_every_control_in_order(browser: Any, stack: Stack) -> None:
    """Tab walks the page's controls in reading order; the skip link jumps to the worklist."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(stack.api.url + "/")
    WebDriverWait = __import__("selenium.webdriver.support.ui", fromlist=["WebDriverWait"]).WebDriverWait
    WebDriverWait(browser, WAIT_S).until(lambda d: len(rows(d)) > 0)
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    first = browser.switch_to.active_element
    assert first.get_attribute("class") == "skip" and first.is_displayed()
    first.send_keys(Keys.ENTER)
    assert browser.execute_script("return location.hash") == "#worklist-title"
    seen = []
    for _ in range(80):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        active = browser.switch_to.active_element
        seen.append(active.get_attribute("id") or active.text or active.get_attribute("aria-label"))
        if active.get_attribute("class") == "open":
            break
    assert "worklist-job" in seen and "date-from" in seen and "Score" in seen
    assert browser.switch_to.active_element.get_attribute("class") == "open"


def test_the_accessibility_check_finds_what_it_is_for(browser: Any, stack: Stack, axe: str) -> None:
    """The empty violation lists above mean something: the same check on a low-contrast, unnamed
    control that this test adds reports both."""
    browser.get(stack.api.url + "/")
    browser.execute_script(
        "const p = document.createElement('p'); p.id = 'bad'; p.style.color = '#c8c8c8';"
        "p.textContent = 'faint text'; p.append(document.createElement('button'));"
        "document.querySelector('main').append(p);"
    )
    found = {violation["id"] for violation in axe_violations(browser, axe, "#bad")}
    assert {"color-contrast", "button-name"} <= found


def test_a_protected_server_gives_the_signed_in_page_everything_without_a_key_in_urls(
    browser: Any, stack: Stack, tmp_path: Path
) -> None:
    """HTTP Basic, asked once: fetches and thumbnails (plain ``<img src>``) carry the credentials the
    browser signed in with; no request the page makes names the key; a bad folder is explained."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.jobs.jobs_support import start_api
    from tests.service.http_support import API_KEY

    api = start_api({**stack.env, "SQUID_API_KEY": API_KEY}, tmp_path / "api.log")
    try:
        with api.client() as http:  # a job of its own, whatever ran before
            http.headers["X-API-Key"] = API_KEY
            job = http.post("/jobs", json={"path": "ward-3"}).json()
            wait_for(lambda: http.get(f"/jobs/{job['id']}").json()["state"] == "succeeded", WAIT_S, "the job")
        wait = WebDriverWait(browser, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
        browser.get(api.url.replace("http://", f"http://squid:{API_KEY}@") + "/")
        wait.until(lambda d: len(rows(d)) > 0)
        wait.until(
            lambda d: d.execute_script(
                "const img = document.querySelector('#worklist-body img');"
                "return img.complete && img.naturalWidth === 96;"
            )
        )
        rows(browser)[0].find_element(By.CSS_SELECTOR, "button.open").click()
        wait.until(lambda d: d.execute_script(LOADED, "viewer-map"))
        browser.find_element(By.ID, "viewer-close").click()
        browser.find_element(By.ID, "job-path").send_keys("../../etc")
        browser.find_element(By.CSS_SELECTOR, "#job-form button[type=submit]").click()
        wait.until(lambda d: "path forbidden" in d.find_element(By.ID, "job-status").text)
        # What the page's code requests (the address typed with user:key@ is the test's sign-in).
        urls = browser.execute_script(
            "return performance.getEntriesByType('resource')"
            ".filter((e) => ['fetch', 'img'].includes(e.initiatorType)).map((e) => e.name)"
        )
        assert any("/thumbnail" in u for u in urls) and any("/view" in u for u in urls)
        assert not [u for u in urls if API_KEY in u]
    finally:
        api.stop()
