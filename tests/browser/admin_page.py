#!/usr/bin/env python3
"""Drives the Portcullis admin page in Debian's headless Chromium (Selenium
over chromedriver; nothing is downloaded): logs in through the form, finds a
queued message on the queue page, holds and releases it, checks that delete
asks first, runs the relay test from the Diagnostics page and expects every
test refused, parses /metrics with the Prometheus client's own parser, and
saves screenshots. Exits non-zero with the reason on the first failure."""

import argparse
import os
import time
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as classic_families
from chromium import browser, check
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait


def row_state(driver, qid):
    """The row's state word; None while the page is being replaced."""
    try:
        return driver.find_element(By.ID, f"msg-{qid}").get_attribute("data-state")
    except WebDriverException:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--queue-id", required=True)
    ap.add_argument("--out", required=True, help="directory for screenshots")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    qid = a.queue_id

    d = browser()
    wait = WebDriverWait(d, 30)
    try:
        # Login through the form.
        d.get(a.url + "/")
        wait.until(EC.presence_of_element_located((By.ID, "login-form")))
        check(d.current_url.endswith("/login"), f"not sent to /login: {d.current_url}")
        d.find_element(By.NAME, "user").send_keys(a.user)
        d.find_element(By.NAME, "password").send_keys("wrong password")
        d.find_element(By.ID, "login-button").click()
        wait.until(EC.presence_of_element_located((By.ID, "login-error")))
        d.find_element(By.NAME, "password").send_keys(a.password)
        d.find_element(By.ID, "login-button").click()
        wait.until(EC.presence_of_element_located((By.ID, "relay-rules")))
        check("Who may relay" in d.page_source, "dashboard without the relay rules")
        check(d.find_element(By.ID, "hour-received").text.strip() != "0",
              "the dashboard does not count the message received")
        d.save_screenshot(os.path.join(a.out, "dashboard.png"))

        # The queue page shows the message sent through the relay.
        d.get(a.url + "/queue")
        wait.until(EC.presence_of_element_located((By.ID, f"msg-{qid}")))
        check(qid in d.page_source, "queue id not on the queue page")
        check(row_state(d, qid) != "held", "held before anyone asked")
        d.save_screenshot(os.path.join(a.out, "queue.png"))

        # Hold, then release, with the row's own buttons.
        d.find_element(By.CSS_SELECTOR, f"#msg-{qid} button.hold").click()
        wait.until(lambda drv: row_state(drv, qid) == "held")
        d.find_element(By.CSS_SELECTOR, f"#msg-{qid} button.release").click()
        wait.until(lambda drv: row_state(drv, qid) not in (None, "held"))

        # Delete asks first; dismissing keeps the message.
        d.find_element(By.CSS_SELECTOR, f"#msg-{qid} button.delete").click()
        alert = wait.until(EC.alert_is_present())
        check("Delete" in alert.text, f"unexpected confirmation: {alert.text}")
        alert.dismiss()
        time.sleep(0.5)
        d.get(a.url + "/queue")
        check(len(d.find_elements(By.ID, f"msg-{qid}")) == 1, "deleted without confirmation")

        # One message's page: headers, and the body only when asked.
        d.get(f"{a.url}/queue/{qid}")
        check(len(d.find_elements(By.ID, "body")) == 0, "body shown unasked")
        d.find_element(By.ID, "show-body").click()
        wait.until(EC.presence_of_element_located((By.ID, "body")))

        # The relay test from the Diagnostics page: every test refused.
        d.get(a.url + "/diagnostics")
        d.find_element(By.ID, "run-relay-test").click()
        WebDriverWait(d, 240).until(
            lambda drv: drv.find_element(By.ID, "relay-verdict").get_attribute("data-done") == "1"
            or "could not run" in drv.find_element(By.ID, "relay-verdict").text)
        rows = d.find_elements(By.CSS_SELECTOR, "#relay-results tr.test")
        verdicts = [r.get_attribute("data-verdict") for r in rows]
        check(len(verdicts) >= 10, f"only {len(verdicts)} relay tests shown")
        check(all(v == "refused" for v in verdicts), f"not all refused: {verdicts}")
        d.save_screenshot(os.path.join(a.out, "diagnostics.png"))

        d.get(a.url + "/settings")
        wait.until(EC.presence_of_element_located((By.ID, "settings")))
        d.save_screenshot(os.path.join(a.out, "settings.png"))
    finally:
        d.quit()

    # /metrics: no login, valid exposition, the counters moved.
    # Asked for OpenMetrics (as Prometheus asks), parsed by its OpenMetrics parser...
    asked = urllib.request.Request(a.url + "/metrics",
                                   headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    text = urllib.request.urlopen(asked, timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # ...and without an Accept header: the classic text format, counters typed as counters.
    classic_text = urllib.request.urlopen(a.url + "/metrics", timeout=10).read().decode()
    classic = {f.name: f for f in classic_families(classic_text)}
    check(classic.get("portcullis_messages_accepted") is not None
          and classic["portcullis_messages_accepted"].type == "counter",
          f"classic format: messages_accepted is {getattr(classic.get('portcullis_messages_accepted'), 'type', None)}")
    for name in ("portcullis_messages_accepted", "portcullis_rcpt_refused", "portcullis_queue_messages"):
        check(name in families, f"{name} missing from /metrics")
    accepted = sum(s.value for s in families["portcullis_messages_accepted"].samples
                   if s.name == "portcullis_messages_accepted_total")
    check(accepted >= 1, f"messages accepted = {accepted}")
    refused = [s for s in families["portcullis_rcpt_refused"].samples
               if s.name == "portcullis_rcpt_refused_total"]
    check(sum(s.value for s in refused) >= 10, f"relay-test refusals not counted: {refused}")
    check(all("reason" in s.labels for s in refused), "rcpt_refused without a reason label")
    print(f"ok: {len(verdicts)} relay tests refused, {accepted:.0f} accepted, screenshots in {a.out}")


if __name__ == "__main__":
    main()
