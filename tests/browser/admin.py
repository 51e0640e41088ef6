#!/usr/bin/env python3
"""The admin page and the Connect button in a real browser (Debian's
chromium, driven by Playwright).

Run by tests/oauth.rs against a running daemon whose eBay instance has a
revoked refresh token; reads its inputs from the environment:

  HG_URL        the daemon's base URL (http://127.0.0.1:PORT)
  HG_TOKEN      an admin token
  HG_AGENT      an agent token (refused by the page)
  HG_INSTANCE   the eBay instance
  HG_CUSTOMER   the buyer whose thread appears once connected
  HG_ARTIFACTS  a directory for screenshots

Prints one line per step; exits non-zero with the reason on the first
failure. Waits on conditions (Playwright's auto-waiting `expect`), never on
fixed sleeps.
"""

import os
import re
import sys
import traceback

from common import CHROMIUM_ARGS, DESKTOP, PHONE, WAIT_MS, no_horizontal_scroll, shot, step
from playwright.sync_api import expect, sync_playwright

URL = os.environ["HG_URL"].rstrip("/")
TOKEN = os.environ["HG_TOKEN"]
AGENT = os.environ["HG_AGENT"]
INSTANCE = os.environ["HG_INSTANCE"]
CUSTOMER = os.environ["HG_CUSTOMER"]
ARTIFACTS = os.environ["HG_ARTIFACTS"]


def sign_in(page, token):
    page.goto(URL + "/login?next=/admin")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def main():
    os.makedirs(ARTIFACTS, exist_ok=True)
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)

        def watch(page):
            page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            return page

        step("an agent is refused the connectors page")
        agent = browser.new_context(viewport=DESKTOP)
        agent.set_default_timeout(WAIT_MS)
        page = agent.new_page()
        sign_in(page, AGENT)
        expect(page.get_by_role("heading", name="Admins only")).to_be_visible()
        expect(page.get_by_role("link", name="Connectors")).to_have_count(0)
        agent.close()

        context = browser.new_context(viewport=DESKTOP)
        context.set_default_timeout(WAIT_MS)
        page = watch(context.new_page())

        step("the admin signs in and sees the instance failing its authentication")
        sign_in(page, TOKEN)
        expect(page).to_have_url(URL + "/admin")
        card = page.locator("section.connector", has=page.get_by_role("heading", name=re.compile(INSTANCE)))
        expect(card).to_contain_text("auth failed")
        expect(card).to_contain_text("refresh token")
        expect(card).to_contain_text(re.compile(r"hourglass\.toml:\d+"))
        expect(page.get_by_text("does not edit the files")).to_be_visible()
        step("the header links the admin to this page from anywhere in the inbox")
        expect(page.get_by_role("navigation", name="Account").get_by_role("link", name="Connectors")).to_be_visible()
        no_horizontal_scroll(page, "the admin page")
        shot(page, "admin-auth-failed-desktop")

        step("Test runs the health check and says why it fails")
        card.get_by_role("button", name="Test").click()
        expect(page.get_by_role("alert")).to_contain_text("test failed")

        step("Connect goes to eBay's consent page, which sends the browser back connected")
        card = page.locator("section.connector", has=page.get_by_role("heading", name=re.compile(INSTANCE)))
        card.get_by_role("link", name="Connect to eBay").click()
        expect(page).to_have_url(re.compile(r"/oauth/callback\?"))
        expect(page.get_by_role("heading", name="Connected")).to_be_visible()
        expect(page.locator("pre.granted")).to_contain_text("connected to eBay")
        expect(page.locator("pre.granted")).to_contain_text("commerce.message")
        shot(page, "admin-connected-desktop")

        step("the instance polls: the buyer's thread appears in the inbox")
        page.get_by_role("link", name="Back to the connectors").click()
        expect(page).to_have_url(URL + "/admin")
        page.goto(URL + "/threads")
        expect(page.get_by_text(CUSTOMER)).to_be_visible(timeout=60_000)

        step("the admin page shows it polling, with today's message and calls")
        page.goto(URL + "/admin")
        card = page.locator("section.connector", has=page.get_by_role("heading", name=re.compile(INSTANCE)))
        expect(card).to_contain_text("polling")
        expect(card).to_contain_text(re.compile(r"Messages today\s*1"))
        expect(card).to_contain_text(re.compile(r"Calls today\s*\d+ of 5000"))
        no_horizontal_scroll(page, "the admin page")
        shot(page, "admin-desktop")
        page.set_viewport_size(PHONE)
        no_horizontal_scroll(page, "the admin page at 360 px")
        shot(page, "admin-360")

        step("a redirect with a state the daemon did not issue is refused")
        page.goto(URL + "/oauth/callback?code=abc&state=forged")
        expect(page.get_by_role("heading", name="Not connected")).to_be_visible()
        expect(page.locator("pre.granted")).to_contain_text("matches no connection")

        browser.close()
    # The refused forged redirect logs its 400.
    problems = [p for p in problems if "status of 400" not in p]
    assert not problems, "\n".join(problems)
    step("done")


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
