"""What the browser tests share: Debian's headless Chromium through Selenium
(chromedriver from the package; nothing is downloaded), and failing with
the reason."""

import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def fail(why):
    print(f"FAIL: {why}", file=sys.stderr)
    sys.exit(1)


def check(cond, why):
    if not cond:
        fail(why)


def browser(height=1000):
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", f"--window-size=1280,{height}",
                "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
