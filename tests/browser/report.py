#!/usr/bin/env python3
"""The HTML report and the inbox's Late Response Rate in a real browser
(Debian's chromium, driven by Playwright).

Run by tests/late_response.rs; reads its inputs from the environment:

  HG_REPORT     path of the report written by `hourglass report --format html`
  HG_EXPECT     JSON: the figures a reader must see (cards, instance row)
  HG_URL        the daemon's base URL (web inbox)
  HG_TOKEN      an agent token
  HG_ARTIFACTS  a directory for screenshots

Prints one line per step; exits non-zero with the reason on the first
failure. Waits on conditions (Playwright's auto-waiting `expect`), never on
fixed sleeps.
"""

import json
import os
import re
import sys
import traceback

from common import CHROMIUM_ARGS
from playwright.sync_api import expect, sync_playwright

REPORT = os.environ["HG_REPORT"]
EXPECT = json.loads(os.environ["HG_EXPECT"])
URL = os.environ["HG_URL"].rstrip("/")
TOKEN = os.environ["HG_TOKEN"]
ARTIFACTS = os.environ["HG_ARTIFACTS"]

def step(msg):
    print(f"ok: {msg}", flush=True)


def check_report(browser, width, height, shot):
    page = browser.new_page(viewport={"width": width, "height": height})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto("file://" + REPORT)
    expect(page.get_by_role("heading", name="Customer replies report")).to_be_visible()
    for label, value in EXPECT["cards"].items():
        card = page.locator(".card", has=page.locator(".label", has_text=label))
        expect(card.locator(".value")).to_have_text(value)
    row = page.locator("section", has=page.get_by_role("heading", name="By instance")).locator(
        "tbody tr", has=page.get_by_role("rowheader", name=EXPECT["instance"]["name"])
    )
    expect(row).to_have_count(1)
    cells = row.locator("td")
    for i, value in enumerate(EXPECT["instance"]["cells"]):
        expect(cells.nth(i)).to_have_text(value)
    agents = page.locator("section", has=page.get_by_role("heading", name="By agent"))
    for name in EXPECT["agents"]:
        expect(agents.get_by_role("rowheader", name=name)).to_be_visible()
    charts = page.locator("svg.chart")
    expect(charts).to_have_count(2)
    bars = page.locator("svg.chart").first.locator("rect")
    if bars.count() < EXPECT["days"]:
        raise AssertionError(f"{bars.count()} bars for {EXPECT['days']} days")
    box = charts.first.bounding_box()
    if box is None or box["width"] > width or box["width"] < width * 0.5:
        raise AssertionError(f"chart is {box} wide at {width} px")
    # Nothing but the tables' own scroll boxes may be wider than the screen.
    overflow = page.evaluate("document.documentElement.scrollWidth")
    if overflow > width:
        raise AssertionError(f"the page is {overflow} px wide at {width} px")
    outside = [u for u in requests if not u.startswith("file://")]
    if outside:
        raise AssertionError(f"the report fetched {outside}")
    page.screenshot(path=os.path.join(ARTIFACTS, shot), full_page=True)
    step(f"report at {width} px: cards, instance row, agents, charts; {shot}")
    page.close()


def check_inbox(browser):
    page = browser.new_page(viewport={"width": 360, "height": 740})
    page.goto(URL + "/login")
    page.get_by_label("Token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    strip = page.get_by_role("region", name="Late Response Rate")
    expect(strip).to_be_visible()
    item = strip.locator("li", has_text=EXPECT["inbox_label"])
    expect(item).to_be_visible()
    expect(item.locator(".lrr-rate")).to_have_text(re.compile(r"^\d+\.\d%$"))
    expect(item).to_contain_text("tomorrow")
    page.screenshot(path=os.path.join(ARTIFACTS, "inbox-lrr-360.png"), full_page=False)
    step("inbox at 360 px shows the Late Response Rate; inbox-lrr-360.png")
    page.close()


def main():
    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            check_report(browser, 1280, 900, "report-desktop.png")
            check_report(browser, 360, 740, "report-360.png")
            check_inbox(browser)
        finally:
            browser.close()


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
