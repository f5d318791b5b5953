"""The web page at / in a real browser: headless Debian chromium through selenium uploads a test clip
(and records from a fake microphone), reads the transcript element, and saves a screenshot as a
test artifact (test-artifacts/serve-page.png)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from serve_helpers import live_server, trained_model, write_clips

from speechllama.serve import create_app, load_for_serving

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WAIT_S = 60  # upper bound on one page action (a busy 2-core machine), not a speed requirement

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian's chromium and chromium-driver (scripts/test.sh installs them with apt)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """(selenium driver on the served page, offline model, clips)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    run = trained_model(tmp_path_factory)
    clips = write_clips(tmp_path_factory.mktemp("browser"), 2)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1000,900", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={clips[0]}"):
        options.add_argument(flag)
    with live_server(create_app(load_for_serving(run), "tiny")) as url:
        driver = webdriver.Chrome(options=options, service=Service(DRIVER))
        try:
            driver.get(url)
            yield driver, load_for_serving(run), clips
        finally:
            driver.quit()


def _wait(driver, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(lambda d: condition(d))


def _run_and_read(driver) -> str:
    from selenium.webdriver.common.by import By

    driver.execute_script("document.getElementById('status').textContent = ''")
    driver.find_element(By.ID, "run").click()
    _wait(driver, lambda d: "of audio" in d.find_element(By.ID, "status").text  # the page's "done"
          or d.find_element(By.ID, "error").text)
    assert driver.find_element(By.ID, "error").text == ""
    return driver.find_element(By.ID, "transcript").text


def test_upload_transcribe_and_translate(page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver, offline, clips = page
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#language option")) > 1)
    Select(driver.find_element(By.ID, "language")).select_by_value("de")
    driver.find_element(By.ID, "file").send_keys(str(clips[0]))
    assert _run_and_read(driver) == offline.transcribe(str(clips[0]), src_lang="de") == "eins zwei drei"
    segments = driver.find_elements(By.CSS_SELECTOR, "#timeline .seg")
    assert len(segments) == 1 and segments[0].get_attribute("title").endswith("eins zwei drei")
    shot = tmp_path / "serve-page.png"
    assert driver.save_screenshot(str(shot))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "serve-page.png")

    driver.find_element(By.CSS_SELECTOR, "input[name=task][value=translations]").click()
    assert _run_and_read(driver) == offline.translate(str(clips[0]), src_lang="de")


def test_record_from_the_microphone(page):
    """The fake microphone plays a clip; the page converts the recording to WAV and the server
    decodes it (what it hears depends on where the recording started, so only success is checked)."""
    from selenium.webdriver.common.by import By

    driver = page[0]
    driver.find_element(By.ID, "record").click()
    _wait(driver, lambda d: d.find_element(By.ID, "record").text == "Stop")
    time.sleep(1.5)  # record a while (this is the recording's length, not a timed assertion)
    driver.find_element(By.ID, "record").click()
    _wait(driver, lambda d: "recording.wav" in d.find_element(By.ID, "status").text)
    _run_and_read(driver)
    heard = float(driver.find_element(By.ID, "status").text.split(" s of audio")[0])
    assert heard >= 1.0  # at least most of the 1.5 s recorded (a lower bound: no timing assumed)
