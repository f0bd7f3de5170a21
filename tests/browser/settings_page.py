#!/usr/bin/env python3
"""Drives the Settings page in Debian's headless Chromium: adds a LAN range
with "no authentication" in the relay-rules form, puts it into the file,
(when this machine has a default route) adds the router's network and
sees the audit name the router, then excludes it and sees the warning go,
previews `explain` for a LAN client (refused now, accepted after), saves
with the password and waits for the reload. Screenshots go to --out."""

import argparse
import os

from chromium import browser, check
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait


def add_range(d, rng, exclude=""):
    d.find_element(By.ID, "add-network").click()
    row = d.find_elements(By.CSS_SELECTOR, "#networks tr.network")[-1]
    row.find_element(By.NAME, "range").send_keys(rng)
    Select(row.find_element(By.NAME, "auth")).select_by_value("none")
    if exclude:
        row.find_element(By.NAME, "exclude").send_keys(exclude)
    return row


def apply_rules(d, wait):
    d.execute_script("document.getElementById('status').textContent = ''")
    d.find_element(By.ID, "apply-networks").click()
    wait.until(lambda _: d.find_element(By.ID, "status").text.strip() != "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--lan", required=True, help="the LAN range to add")
    ap.add_argument("--lan-client", required=True)
    ap.add_argument("--router", default="", help="this machine's default gateway, if any")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    d = browser(height=1600)
    wait = WebDriverWait(d, 30)
    try:
        d.get(a.url + "/login")
        wait.until(EC.presence_of_element_located((By.ID, "login-form")))
        d.find_element(By.NAME, "user").send_keys(a.user)
        d.find_element(By.NAME, "password").send_keys(a.password)
        d.find_element(By.ID, "login-button").click()
        wait.until(EC.presence_of_element_located((By.TAG_NAME, "nav")))
        d.get(a.url + "/settings")
        wait.until(lambda _: "[[network]]" in d.find_element(By.ID, "toml").get_property("value"))

        if a.router:
            # The router's network, trusted whole: the audit must name the router.
            net = ".".join(a.router.split(".")[:3]) + ".0/24"
            row = add_range(d, net)
            apply_rules(d, wait)
            wait.until(lambda _: a.router in row.find_element(By.CLASS_NAME, "row-findings").text
                       or a.router in d.find_element(By.ID, "findings").text)
            row.find_element(By.NAME, "exclude").send_keys(a.router)
            apply_rules(d, wait)
            wait.until(lambda _: a.router not in d.find_element(By.ID, "findings").text
                       and a.router not in row.find_element(By.CLASS_NAME, "row-findings").text)
            print("the router was named, and excluded")

        add_range(d, a.lan)
        apply_rules(d, wait)
        text = d.find_element(By.ID, "toml").get_property("value")
        check(f'range = "{a.lan}"' in text, f"the new range is not in the file text:\n{text}")
        check("# Printers and PCs relay without a password." in text, "a comment of the file was lost")
        wait.until(lambda _: "check passed" in d.find_element(By.ID, "status").text)

        # Another section through its form: our inbound domain.
        sec = d.find_element(By.CSS_SELECTOR, 'section[data-section="relay"]')
        field = sec.find_element(By.NAME, "inbound_domains")
        field.clear()
        field.send_keys("office.test")
        sec.find_element(By.TAG_NAME, "button").click()
        wait.until(lambda _: 'inbound_domains = ["office.test"]' in d.find_element(By.ID, "toml").get_property("value"))

        d.find_element(By.ID, "preview-ip").send_keys(a.lan_client)
        d.find_element(By.ID, "preview").click()
        wait.until(EC.visibility_of_element_located((By.ID, "preview-table")))
        row = d.find_element(By.CSS_SELECTOR, f'#preview-table tr[data-ip="{a.lan_client}"]')
        cells = row.find_elements(By.TAG_NAME, "td")
        check(cells[1].text.startswith("refuse"), f"now: {cells[1].text}")
        check(cells[2].text.startswith("accept"), f"after: {cells[2].text}")
        d.save_screenshot(os.path.join(a.out, "settings-preview.png"))

        d.find_element(By.ID, "confirm-password").send_keys(a.password)
        d.find_element(By.ID, "save").click()
        wait.until(lambda _: "Saved and reloaded" in d.find_element(By.ID, "status").text
                   or "Refused" in d.find_element(By.ID, "status").text)
        status = d.find_element(By.ID, "status").text
        check("Saved and reloaded" in status, f"not saved: {status}")
        wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "#history-list details")) >= 1)
        print("settings saved from the page")
        # A login for a new device, set from the page.
        d.find_element(By.ID, "new-user").send_keys("printer2")
        d.find_element(By.ID, "new-user-password").send_keys("printer2 password")
        d.find_element(By.ID, "add-user").click()
        wait.until(lambda _: "printer2 added" in d.find_element(By.ID, "users-status").text)
        wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, '#users tr[data-user="printer2"]'))
        print("user added from the page")
        # bob may use the page from now on.
        box = d.find_element(By.CSS_SELECTOR, '#users tr[data-user="bob"] input[type="checkbox"]')
        check(not box.is_selected(), "bob was not an admin")
        box.click()
        wait.until(lambda _: "bob may use this page" in d.find_element(By.ID, "users-status").text
                   or "Refused" in d.find_element(By.ID, "users-status").text)
        check("bob may use this page" in d.find_element(By.ID, "users-status").text,
              d.find_element(By.ID, "users-status").text)
        d.save_screenshot(os.path.join(a.out, "settings.png"))
    finally:
        d.quit()


if __name__ == "__main__":
    main()
