"""The rules page in a real browser (headless Chromium driven by Selenium) against `cds-service
serve` in a real process: a card's link opens the right place, the page's own links resolve,
it reads on a phone's width and carries no JavaScript (its folded lists open without).

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them). Skipped when they are
missing, unless CDS_REQUIRE_BROWSER=1 (set by .ci/run), where a missing browser fails.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from conftest import FIXTURES
from served import Served

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not (CHROMEDRIVER and CHROMIUM):
    if os.environ.get("CDS_REQUIRE_BROWSER") == "1":
        raise RuntimeError("chromium and chromedriver are required (apt-get install chromium "
                           "chromium-driver)")
    pytest.skip("chromium or chromedriver not installed", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

PHONE = (390, 844)  # CSS pixels of a common phone


@pytest.fixture(scope="module")
def server():
    served = Served(workers=1)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    # A phone's viewport (a desktop window cannot be made this narrow).
    options.add_experimental_option("mobileEmulation", {"deviceMetrics": {
        "width": PHONE[0], "height": PHONE[1], "pixelRatio": 3.0}})
    # The Debian driver, named explicitly: Selenium Manager would try to download one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_a_cards_rules_link_opens_its_explanation(server, browser):
    body = json.loads((FIXTURES / "requests" / "reference-patient-view.json").read_text())
    card = requests.post(f"{server.url}/cds-services/calciphylaxis-patient-view", json=body,
                         timeout=30).json()["cards"][0]
    url = card["source"]["url"]
    assert url.startswith(server.url + "/rules#")
    assert card["links"][-1]["url"] == url
    browser.get(url)
    anchor = urlsplit(url).fragment
    target = browser.find_element(By.ID, anchor)
    assert target.is_displayed()
    # The stylesheet marks the element the link named (:target): the browser went there.
    assert target.value_of_css_property("background-color") == "rgba(255, 246, 214, 1)"
    assert "calcium" in target.text.lower()  # the reference patient's pairing, in words


def test_every_link_on_the_page_resolves(server, browser):
    browser.get(f"{server.url}/rules")
    assert "how it decides" in browser.title
    links = browser.find_elements(By.CSS_SELECTOR, "a[href]")
    internal = [a.get_attribute("href") for a in links
                if urlsplit(a.get_attribute("href")).path == "/rules"]
    assert len(internal) > 10
    for href in internal:
        fragment = urlsplit(href).fragment
        assert browser.find_elements(By.ID, fragment), f"{href} points nowhere"
    external = {a.get_attribute("href") for a in links} - set(internal)
    # This machine has no internet: the sources are checked to be absolute https addresses.
    assert external and all(h.startswith("https://") for h in external)
    # Following one in-page link in the browser lands on its section.
    browser.find_element(By.CSS_SELECTOR, "nav a[href='#quieting']").click()
    assert urlsplit(browser.current_url).fragment == "quieting"
    assert browser.find_element(By.ID, "quieting").value_of_css_property(
        "background-color") == "rgba(255, 246, 214, 1)"


def test_the_page_reads_on_a_phone_without_javascript(server, browser):
    browser.get(f"{server.url}/rules")
    # (The driver itself needs JavaScript on: the page is checked to carry none.)
    assert browser.execute_script("return document.scripts.length") == 0
    width = browser.find_element(By.TAG_NAME, "html").size["width"]
    assert width <= PHONE[0]
    # Nothing but the wide code tables (which scroll in their own box) is wider than the screen.
    for element in browser.find_elements(By.CSS_SELECTOR, "p, li, h1, h2, h3, h4, summary"):
        if element.is_displayed():
            assert element.rect["x"] + element.rect["width"] <= width + 1, element.text[:60]
    # Long code lists are folded and open with a tap, no script needed.
    folded = browser.find_element(By.CSS_SELECTOR, "#factor-vitamin_k_antagonist details")
    assert folded.get_attribute("open") is None
    folded.find_element(By.TAG_NAME, "summary").click()
    assert folded.get_attribute("open") is not None
    assert folded.find_element(By.TAG_NAME, "table").is_displayed()


def test_served_page_is_the_installed_template(server):
    # The template ships as package data: the served page is the packaged one, not a test copy.
    import cds_service.web as web

    assert (Path(web.__file__).parent / "templates" / "rules.html").is_file()
    page = requests.get(f"{server.url}/rules", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
