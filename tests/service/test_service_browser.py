"""The web page in headless Chromium: upload an X-ray, see the score, the label and the overlay.

Needs Debian's ``chromium`` and ``chromium-driver``; skipped (saying so) only when they are absent.
Set ``SQUID_SCREENSHOT=path.png`` to keep a screenshot of the result (docs/img/web-page.png).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dicom_factory import make_dicom
from http_support import API_KEY, Server, chest_like

from tests.browser_support import CHROMEDRIVER, CHROMIUM, chromium

LOADED = "const img = document.getElementById(arguments[0]); return img.complete && img.naturalWidth > 0;"
TXV = "dicom/torchxrayvision/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"

pytestmark = [
    pytest.mark.slow,  # headless Chromium
    pytest.mark.skipif(
        not CHROMIUM.exists() or not Path(CHROMEDRIVER).exists(),
        reason="needs /usr/bin/chromium and chromedriver: apt-get install chromium chromium-driver",
    ),
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    with chromium(tmp_path_factory.mktemp("chromium-profile"), 1180, 1100) as driver:
        yield driver


@pytest.fixture(scope="module")
def xray(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real chest X-ray DICOM when the shared data is there, else a synthetic one."""
    root = Path(os.environ.get("SQUID_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
    real = root / TXV
    if real.is_file():
        return real
    path = tmp_path_factory.mktemp("upload") / "chest.dcm"
    path.write_bytes(make_dicom(chest_like(512, 512), bits_stored=12))
    return path


def assert_page_shows_the_api_answer(
    browser: Any, server: Server, xray: Path, headers: dict[str, str] | None = None
) -> None:
    """The page shows what ``POST /score`` answers for the same file, to the digits it prints."""
    from selenium.webdriver.common.by import By

    with server.client(headers=headers or {}) as http:
        response = http.post("/score", files={"file": (xray.name, xray.read_bytes())})
    assert response.status_code == 200, response.text
    api = response.json()
    fields = ("score", "threshold", "raw-score", "label")
    shown = {name: browser.find_element(By.ID, name).text for name in fields}
    assert float(shown["score"]) == pytest.approx(api["score"], abs=5e-4), (shown, api)
    assert float(shown["threshold"]) == pytest.approx(api["threshold"], abs=5e-4), (shown, api)
    assert float(shown["raw-score"]) == pytest.approx(api["raw_score"], rel=1e-3), (shown, api)
    assert shown["label"] == ("Anomalous" if api["is_anomalous"] else "Normal"), (shown, api)


def test_upload_shows_score_label_and_overlay(browser, server: Server, xray: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "Model:" in d.find_element(By.ID, "model-line").text)
    wait.until(lambda d: "loading" not in d.find_element(By.ID, "model-line").text)
    browser.find_element(By.ID, "file").send_keys(str(xray))
    wait.until(ec.visibility_of_element_located((By.ID, "result")))

    assert_page_shows_the_api_answer(browser, server, xray)
    for image_id in ("overlay-image", "input-image"):
        wait.until(lambda d, i=image_id: d.execute_script(LOADED, i))
    overlay = browser.find_element(By.ID, "overlay-image")
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    assert overlay.size["width"] > 100
    # The legend says what the colours mean for this artifact's map (fixed scale or per image).
    legend = browser.find_element(By.ID, "legend-text").text
    assert "training normals" in legend or "scaled per image" in legend
    assert "dicom" in browser.find_element(By.ID, "input-table").text
    assert "Scored" in browser.find_element(By.ID, "status").text

    target = Path(os.environ.get("SQUID_SCREENSHOT") or tmp_path / "web-page.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(target))


def test_out_of_domain_inputs_are_shown_as_not_assessed(browser, server: Server, tmp_path: Path) -> None:
    """A lateral film (by its header) and a CT slice exported as PNG (by the image check): the page
    says not assessed and why, and shows no score and no label."""
    import numpy as np
    from PIL import Image
    from pydicom.data import get_testdata_file
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from model.imaging import read_path

    lateral = tmp_path / "lateral.dcm"
    lateral.write_bytes(make_dicom(chest_like(64, 64), view_position="LL"))
    ct = read_path(str(get_testdata_file("CT_small.dcm")), header_rules=()).pixels
    ct_png = tmp_path / "ct-slice.png"
    Image.fromarray(((ct - ct.min()) / np.ptp(ct) * 255).astype(np.uint8)).save(ct_png)
    browser.get(server.url + "/")
    for upload, reason, words in (
        (lateral, "view", "lateral or oblique"),
        (ct_png, "not_a_chest_radiograph", "does not look like a frontal chest radiograph"),
    ):
        browser.find_element(By.ID, "file").send_keys(str(upload))
        WebDriverWait(browser, 60).until(
            lambda d, n=upload.name: f"Not assessed: {n}" in d.find_element(By.ID, "status").text
        )
        refusal = browser.find_element(By.ID, "refusal")
        assert refusal.is_displayed() and words in refusal.text
        items = refusal.find_elements(By.CSS_SELECTOR, "#refusal-reasons li")
        assert [item.get_attribute("data-reason") for item in items] == [reason]
        assert not browser.find_element(By.ID, "result").is_displayed()
    if os.environ.get("SQUID_SCREENSHOT"):
        browser.save_screenshot(str(Path(os.environ["SQUID_SCREENSHOT"]).with_name("web-page-refusal.png")))


def test_an_adult_film_is_scored_with_the_population_warning(browser, server: Server, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    adult = tmp_path / "adult.dcm"
    adult.write_bytes(make_dicom(chest_like(256, 224), bits_stored=12, extra={"PatientAge": "045Y"}))
    browser.get(server.url + "/")
    WebDriverWait(browser, 60).until(lambda d: "loading" not in d.find_element(By.ID, "model-line").text)
    browser.find_element(By.ID, "file").send_keys(str(adult))
    WebDriverWait(browser, 60).until(lambda d: "Scored adult.dcm" in d.find_element(By.ID, "status").text)
    warning = browser.find_element(By.ID, "population-warning")
    assert warning.is_displayed()
    assert "outside the model's training population (patients aged 1 to 5 years)" in warning.text
    assert browser.find_element(By.ID, "label").text in ("Normal", "Anomalous")
    assert not browser.find_element(By.ID, "refusal").is_displayed()


def test_a_protected_server_takes_the_key_as_basic_credentials(
    browser, secured_server: Server, xray: Path
) -> None:
    """The browser sends the Basic credentials it signed in with on every request the page makes."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(secured_server.url.replace("http://", f"http://squid:{API_KEY}@") + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "threshold" in d.find_element(By.ID, "model-line").text)
    browser.find_element(By.ID, "file").send_keys(str(xray))
    wait.until(ec.visibility_of_element_located((By.ID, "result")))
    assert_page_shows_the_api_answer(browser, secured_server, xray, headers={"X-API-Key": API_KEY})


def test_api_docs_render_without_internet(browser, server: Server) -> None:
    """This machine reaches no CDN, so a rendered operation list means the UI came from the server."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/docs")
    WebDriverWait(browser, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '.opblock-summary-path[data-path="/score"]')
    )
    assert "POST" in browser.find_element(By.CSS_SELECTOR, ".opblock-post .opblock-summary-method").text
