"""The inspection app in a real browser: `python -m inference.app` on 127.0.0.1, driven by Debian's headless Chromium.

Skips when Gradio, Selenium, `chromium` or `chromedriver` is missing (`.ci/run` installs the browser with apt).
Screenshots are saved in the test's temporary folder (`pytest --basetemp DIR` keeps them where you want them).
"""

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from app_server import free_port, start_app
from PIL import Image
from tiny_clip import IMAGE_SIZE, make_tiny_clip

from modeling_clipada import CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor

pytestmark = pytest.mark.slow
pytest.importorskip("gradio", reason="the app needs Gradio: pip install -e '.[demo]'")
pytest.importorskip("selenium", reason="the browser test needs Selenium: pip install selenium")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "no browser: install Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402  (after the skips: Selenium may be missing)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

RESULT_SECONDS = 90


def open_browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1200"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def upload(browser: webdriver.Chrome, path: Path) -> None:
    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))


def wait_for_text(browser: webdriver.Chrome, element_id: str, text: str, seconds: float = RESULT_SECONDS) -> str:
    """Waits until the element's text contains `text`; returns the text."""
    WebDriverWait(browser, seconds).until(lambda page: text in page.find_element(By.ID, element_id).text)
    return browser.find_element(By.ID, element_id).text


def set_slider(browser: webdriver.Chrome, element_id: str, value: float) -> None:
    """Types a value into the slider's number box and commits it, as an operator does."""
    box = browser.find_element(By.CSS_SELECTOR, f"#{element_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(f"{value:.3f}", Keys.ENTER)


def choose_category(browser: webdriver.Chrome, category: str) -> None:
    """Opens the category selector and clicks the option."""
    browser.find_element(By.CSS_SELECTOR, "#category input").click()
    options = WebDriverWait(browser, 10).until(lambda page: page.find_elements(By.CSS_SELECTOR, "[role=listbox] li"))
    next(option for option in options if option.text == category).click()


def shown_image_width(browser: webdriver.Chrome, element_id: str) -> int:
    """The natural width of the image an image component shows (0 when none is loaded)."""
    images = browser.find_elements(By.CSS_SELECTOR, f"#{element_id} img")
    return max((browser.execute_script("return arguments[0].naturalWidth", image) for image in images), default=0)


def defect_image(path: Path) -> Path:
    """A grey plate with a dark scratch, not square (so the overlay is drawn at the image's own size)."""
    pixels = np.full((120, 160, 3), 190, dtype=np.uint8)
    pixels[50:62, 30:130] = 25
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def calibrated_app(tmp_path_factory):
    """A tiny CLIP-ADA calibrated so that the defect image is NG, served on a free port: (url, score, folder)."""
    folder = tmp_path_factory.mktemp("app")
    image = defect_image(folder / "defect.png")
    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(
        clip, tokenizer, feature_layer=3, image_score_top_k=16, smoothing_sigma=1.0
    ).eval()
    processor = CLIPADAImageProcessor(size=IMAGE_SIZE)
    with torch.no_grad():
        score = float(model(processor(images=[str(image)])["pixel_values"]).pred_score[0])
    assert 0.1 < score < 0.99, f"the tiny model's score {score} leaves no room to move the threshold around it"
    model.config.image_threshold, model.config.pixel_threshold = round(score - 0.1, 3), 0.5
    plates = {"image_threshold": round(min(0.999, score + 0.05), 3), "pixel_threshold": 0.6}
    model.config.category_thresholds = {"plates": plates}  # a category whose threshold makes the image OK
    model.save_pretrained(folder / "checkpoint")
    processor.save_pretrained(folder / "checkpoint")
    (folder / "checkpoint" / "examples").mkdir()
    shutil.copyfile(image, folder / "checkpoint" / "examples" / "shipped.png")  # an example shipped with it
    port = free_port()
    server = start_app(["--model_name_or_path", str(folder / "checkpoint")], port, folder / "app.log")
    yield f"http://127.0.0.1:{port}/", score, folder
    server.terminate()
    server.wait(timeout=30)


def test_the_page_shows_the_decision_overlay_and_map_and_the_slider_redraws_it(calibrated_app):
    url, score, folder = calibrated_app
    browser = open_browser()
    try:
        browser.get(url)
        WebDriverWait(browser, 60).until(lambda page: page.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
        started = time.perf_counter()
        upload(browser, folder / "defect.png")
        verdict = wait_for_text(browser, "verdict", "NG")
        print(f"upload to result: {time.perf_counter() - started:.2f} s")
        WebDriverWait(browser, 30).until(lambda page: shown_image_width(page, "overlay") > 0)
        browser.save_screenshot(str(folder / "01_defect_NG.png"))
        assert "defect.png" in verdict and f"score {score:.3f}" in verdict and "(calibrated)" in verdict
        assert shown_image_width(browser, "overlay") >= 480  # the overlay as inference.predict draws it
        assert shown_image_width(browser, "anomaly-map") == 160  # the raw map at the image's own size
        assert "defect.png" in browser.find_element(By.ID, "results").text

        set_slider(browser, "image-threshold", min(0.999, score + 0.05))
        verdict = wait_for_text(browser, "verdict", "OK")
        browser.save_screenshot(str(folder / "02_threshold_moved_OK.png"))
        assert "(set by the slider)" in verdict
        assert f"score {score:.3f}" in verdict  # the same score: redrawn from the kept map

        notes = folder / "notes.txt"
        notes.write_text("not a picture")
        upload(browser, notes)
        message = wait_for_text(browser, "message", "not an image file")
        browser.save_screenshot(str(folder / "03_not_an_image.png"))
        assert "notes.txt" in message and "Traceback" not in browser.page_source

        upload(browser, folder / "defect.png")  # the app keeps serving after bad input
        wait_for_text(browser, "results", "defect.png")
        assert "Traceback" not in browser.page_source

        browser.get(url)  # a new session: the checkpoint's example, at the calibrated threshold again
        WebDriverWait(browser, 60).until(lambda page: page.find_elements(By.CSS_SELECTOR, "#examples img"))
        browser.find_element(By.CSS_SELECTOR, "#examples button.thumbnail-item").click()
        assert "NG" in wait_for_text(browser, "verdict", "shipped.png")
        choose_category(browser, "plates")
        assert "OK" in wait_for_text(browser, "verdict", "(calibrated for the category)")
        browser.save_screenshot(str(folder / "04_example_category_OK.png"))
    finally:
        browser.quit()
    assert {path.name for path in folder.glob("0*.png")} == {
        "01_defect_NG.png",
        "02_threshold_moved_OK.png",
        "03_not_an_image.png",
        "04_example_category_OK.png",
    }
