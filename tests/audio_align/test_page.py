"""The web page of interpres serve, in headless Chromium (Debian's chromium + chromium-driver,
driven by selenium): upload a WAV, translate it, read the answer from the DOM.

``INTERPRES_SCREENSHOT=docs/serve.png`` also writes the page as the docs show it."""

import os
import shutil
from pathlib import Path

import pytest

from serving import KEY, expected

pytestmark = pytest.mark.slow

CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    if CHROMEDRIVER is None or shutil.which("chromium") is None:
        pytest.skip("apt-get install chromium chromium-driver (make does)")
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,820"):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def test_the_page_uploads_a_wav_and_shows_its_translation(server, browser, wav, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, app = server
    browser.get(url + "/")
    key = browser.find_element(By.ID, "key")
    key.send_keys(KEY)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)
    browser.find_element(By.ID, "file").send_keys(str(Path(wav).resolve()))
    browser.find_element(By.CSS_SELECTOR, "input[name=task][value=translate]").click()
    assert Select(browser.find_element(By.ID, "model")).first_selected_option.get_attribute("value") == "st"
    Select(browser.find_element(By.ID, "lang")).select_by_value("de")
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: d.find_element(By.ID, "timing").text.startswith("answered in"))
    assert browser.find_element(By.ID, "answer").text == expected(app, "st", wav, "de").text

    browser.find_element(By.CSS_SELECTOR, "input[name=task][value=ask]").click()
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: "HTTP 501" in d.find_element(By.ID, "answer").text)

    browser.find_element(By.CSS_SELECTOR, "input[name=task][value=transcribe]").click()
    assert Select(browser.find_element(By.ID, "model")).first_selected_option.get_attribute("value") == "asr"
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: d.find_element(By.ID, "answer").text == expected(app, "asr", wav, "en").text)
    shot = Path(os.environ.get("INTERPRES_SCREENSHOT") or tmp_path / "page.png")
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
