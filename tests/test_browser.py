"""The search page as a person uses it, in headless Chromium against the app served by uvicorn on
127.0.0.1: pick a reference, type the modification, submit, read the result grid (the same ids as
CIRSearch called directly), move a weight slider with the keyboard and check what the request carried."""

from __future__ import annotations

import json

import pytest

from app.service.routes import create_app
from plugin import ItemRef
from tests.browser import browser_missing, chromium_driver, live_server
from tests.test_service import config, direct, indexed  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")
WAIT = 30


class Recorder:
    """Wraps the app and keeps the body of every POST /v1/search as the server received it."""

    def __init__(self, app):
        self.app, self.bodies = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/search":
            return await self.app(scope, receive, send)
        chunks = []

        async def recording_receive():
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                headers = dict(scope["headers"])
                self.bodies.append((headers.get(b"content-type", b"").decode(), b"".join(chunks)))
            return message

        await self.app(scope, recording_receive, send)


@pytest.fixture()
def page(indexed, config):  # noqa: F811
    from selenium.webdriver.support.ui import WebDriverWait

    client, enc, _ = indexed
    recorder = Recorder(create_app(config, client=client, encoder=enc))
    with live_server(recorder) as url:
        driver = chromium_driver()
        try:
            driver.get(url + "/")
            yield driver, WebDriverWait(driver, WAIT), recorder
        finally:
            driver.quit()


def result_ids(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [li.get_attribute("data-id") for li in driver.find_elements(By.CSS_SELECTOR, "#results > li")]


def wait_for_results(wait, driver, n_requests: int, recorder) -> list[str]:
    from selenium.webdriver.common.by import By

    wait.until(lambda d: len(recorder.bodies) >= n_requests)
    wait.until(lambda d: "results in" in d.find_element(By.ID, "status").text)
    return result_ids(driver)


def test_pick_type_search_and_override_a_weight(page, direct):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec

    driver, wait, recorder = page
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#samples button")))
    picked = driver.find_elements(By.CSS_SELECTOR, "#samples button")[1]
    ref = picked.get_attribute("data-id")
    picked.click()
    assert ref in driver.find_element(By.ID, "ref-label").text
    text = driver.find_element(By.ID, "text")
    assert driver.switch_to.active_element == text  # picking a reference moves the focus to the text
    k = driver.find_element(By.ID, "k")
    k.clear()
    k.send_keys("6")
    text.send_keys("make the red circle blue", Keys.ENTER)

    ids = wait_for_results(wait, driver, 1, recorder)
    want = direct.query(ItemRef(ref), "make the red circle blue", k=6)
    assert ids == [h.id for h in want] and ref not in ids
    kind, body = recorder.bodies[-1]
    sent = json.loads(body)
    assert kind == "application/json" and sent["item_id"] == ref and "weights" not in sent
    assert len(driver.find_elements(By.CSS_SELECTOR, "#results > li .bar")) == 3 * 6
    model = want[0].weights
    assert f"color {model['color']:.2f}" in driver.find_element(By.ID, "model-weights").text

    sliders = driver.find_elements(By.CSS_SELECTOR, "#sliders input[type=range]")  # one per attribute of the bundle
    assert [e.get_attribute("data-attr") for e in sliders] == list(want[0].weights) == ["color", "shape"]
    slider = driver.find_element(By.ID, "w-color")  # keyboard only: focus the slider, press the right arrow
    slider.send_keys(Keys.ARROW_RIGHT * 6)
    wait.until(lambda d: len(recorder.bodies) >= 2 and "weights" in json.loads(recorder.bodies[-1][1]))
    shown = float(slider.get_attribute("value"))
    sent = json.loads(recorder.bodies[-1][1])
    assert sent["weights"]["color"] == pytest.approx(shown) and shown > model["color"]
    assert driver.find_element(By.ID, "override").is_selected()
    weights = sent["weights"]
    want = direct.query(ItemRef(ref), "make the red circle blue", k=6, weights=weights)
    wait.until(lambda d: f"Used: color {shown:.2f}" in d.find_element(By.ID, "model-weights").text)
    assert result_ids(driver) == [h.id for h in want]


def test_upload_and_item_id_references(page, direct, indexed):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec

    driver, wait, recorder = page
    catalog = indexed[2]
    image = sorted(catalog.glob("*.png"))[3]
    driver.find_element(By.ID, "upload").send_keys(str(image))
    wait.until(ec.text_to_be_present_in_element((By.ID, "ref-label"), "Uploaded"))
    driver.find_element(By.ID, "text").send_keys("same but green", Keys.ENTER)
    ids = wait_for_results(wait, driver, 1, recorder)
    assert recorder.bodies[-1][0].startswith("multipart/form-data")
    assert ids == [h.id for h in direct.query(image.read_bytes(), "same but green", k=12)]

    driver.find_element(By.ID, "item-id").send_keys("no-such-item", Keys.ENTER)
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "not in collection"))
    item = driver.find_element(By.ID, "item-id")
    item.clear()
    item.send_keys(image.name, Keys.ENTER)
    wait.until(ec.text_to_be_present_in_element((By.ID, "ref-label"), f"Catalog item {image.name}"))
    driver.find_element(By.ID, "go").click()
    ids = wait_for_results(wait, driver, 2, recorder)
    assert ids == [h.id for h in direct.query(ItemRef(image.name), "same but green", k=12)]
