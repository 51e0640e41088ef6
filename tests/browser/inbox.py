#!/usr/bin/env python3
"""The web inbox in a real browser (Debian's chromium, driven by Playwright).

Run by tests/web_inbox.rs against a running daemon; reads its inputs from
the environment:

  HG_URL        the inbox's base URL (http://127.0.0.1:PORT)
  HG_TOKEN      an agent token
  HG_ALERT_LINK the link an alert carried ({public_url}/threads/ID)
  HG_EXPECT     JSON: customers in deadline order, thread ids (breached,
                alerted, related, the linked e-mail thread, mark), the
                reply, the template preview
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

from common import CHROMIUM_ARGS, DESKTOP, PHONE, WAIT_MS, no_horizontal_scroll, shot, step
from playwright.sync_api import expect, sync_playwright

URL = os.environ["HG_URL"].rstrip("/")
TOKEN = os.environ["HG_TOKEN"]
ALERT_LINK = os.environ["HG_ALERT_LINK"]
EXPECT = json.loads(os.environ["HG_EXPECT"])
ARTIFACTS = os.environ["HG_ARTIFACTS"]


def row(page, thread_id):
    return page.locator(f'#rows tr.row[data-id="{thread_id}"]')


def main():
    os.makedirs(ARTIFACTS, exist_ok=True)
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=DESKTOP)
        context.set_default_timeout(WAIT_MS)

        def watch(page):
            # A CSP violation or a script error shows up here.
            page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            return page

        page = watch(context.new_page())

        # --- Signing in -------------------------------------------------
        step("an unsigned visit to the alert's link asks for a token")
        resp = page.goto(ALERT_LINK)
        expect(page).to_have_url(re.compile(r"/login"))
        csp = resp.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, f"CSP: {csp!r}"
        expect(page.get_by_label("Token")).to_be_focused()

        step("a wrong token is refused in plain words")
        page.get_by_label("Token").fill("not-the-token")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("not valid")
        page.set_viewport_size(PHONE)
        shot(page, "login-refused-360")
        page.set_viewport_size(DESKTOP)
        assert "not-the-token" not in page.content(), "the page shows the token that was typed"
        # The browser logs the refused sign-in's 401: that one is expected.
        problems[:] = [p for p in problems if "status of 401" not in p]

        step("signing in by keyboard (type the token, press Enter) opens the thread the alert links to")
        page.get_by_label("Token").fill(TOKEN)
        page.get_by_label("Token").press("Enter")
        expect(page).to_have_url(ALERT_LINK)
        cookies = {c["name"]: c for c in context.cookies()}
        session = cookies.get("hg_session")
        assert session, f"no session cookie: {list(cookies)}"
        assert session["httpOnly"], "session cookie is not HttpOnly"
        assert session["sameSite"] == "Strict", f"session cookie SameSite={session['sameSite']}"
        assert TOKEN not in session["value"], "the session cookie carries the token"
        assert TOKEN not in page.content(), "the page shows the token"

        # --- The list ---------------------------------------------------
        step("the list is ordered by deadline, the breached thread stands out")
        page.goto(URL + "/")
        expect(page).to_have_url(URL + "/threads")
        names = page.locator("#rows tr.row td.who .name")
        expect(names).to_have_count(len(EXPECT["order"]))
        shown = names.all_inner_texts()
        assert shown == EXPECT["order"], f"list order {shown}, expected {EXPECT['order']}"
        dues = page.locator("#rows time.countdown").evaluate_all(
            "els => els.map(e => Date.parse(e.dataset.due))"
        )
        assert dues == sorted(dues), f"deadlines not ascending: {dues}"
        expect(row(page, EXPECT["breached_id"])).to_have_class(re.compile(r"\bu-breached\b"))
        expect(row(page, EXPECT["breached_id"]).locator("td.left")).to_contain_text("breached")
        expect(row(page, EXPECT["alerted_id"])).to_have_class(re.compile(r"\bu-soon\b"))

        step("time left counts down without a reload")
        # The breached row shows seconds: it changes every second.
        first = page.locator("#rows time.countdown").first
        before = first.inner_text()
        expect(first).not_to_have_text(before, timeout=5_000)

        no_horizontal_scroll(page, "the thread list")
        shot(page, "list-desktop")
        page.set_viewport_size(PHONE)
        no_horizontal_scroll(page, "the thread list")
        shot(page, "list-360")
        page.set_viewport_size(DESKTOP)

        step("the filters narrow the list")
        page.get_by_label("Status").select_option("breached")
        page.get_by_role("button", name="Filter").click()
        expect(names).to_have_count(1)
        expect(names.first).to_have_text(EXPECT["breached"])
        page.goto(URL + "/threads")

        step("a customer's other threads, on every channel, are part of the conversation")
        page.goto(f"{URL}/threads/{EXPECT['breached_id']}")
        related = page.locator("#related a", has_text=EXPECT["related_order"])
        expect(related).to_have_attribute("href", f"/threads/{EXPECT['related_id']}")
        email_id = EXPECT["linked_email_id"]
        expect(page.locator(f"#related a[href='/threads/{email_id}']")).to_contain_text("email")
        expect(
            page.locator(f".messages .msg.other a.badge[href='/threads/{EXPECT['related_id']}']")
        ).to_have_count(1)
        by_mail = page.locator(f".messages .msg.other:has(a.badge[href='/threads/{email_id}'])")
        expect(by_mail).to_contain_text("Ich habe auch auf Amazon geschrieben")
        expect(page.locator(".messages .msg")).to_have_count(3)
        expect(page.locator(".messages .msg.other")).to_have_count(2)
        no_horizontal_scroll(page, "the linked history")
        shot(page, "customer-linked-desktop")
        page.set_viewport_size(PHONE)
        no_horizontal_scroll(page, "the linked history")
        shot(page, "customer-linked-360")
        page.set_viewport_size(DESKTOP)

        step("an agent splits the e-mail customer off; the history shows the Amazon threads only")
        page.get_by_role("button", name=f"Not the same customer as thread {email_id}").click()
        expect(page.get_by_role("status").first).to_contain_text("Split")
        expect(page.locator(f"#related a[href='/threads/{email_id}']")).to_have_count(0)
        expect(page.locator(".messages .msg.other")).to_have_count(1)

        step("and links them again by the thread number")
        page.get_by_label("Thread number or CHANNEL:HANDLE").fill(str(email_id))
        page.get_by_role("button", name="Link customers").click()
        expect(page.get_by_role("status").first).to_contain_text("Linked")
        expect(page.locator(f"#related a[href='/threads/{email_id}']")).to_have_count(1)
        expect(page.locator(".messages .msg.other")).to_have_count(2)
        page.set_viewport_size(PHONE)
        shot(page, "thread-related-360")
        page.set_viewport_size(DESKTOP)

        # --- The thread an alert links to ---------------------------------
        step("the alert's thread shows its conversation, order and reply form")
        page.goto(ALERT_LINK)
        expect(page.get_by_role("heading", level=1)).to_have_text(EXPECT["alerted"])
        expect(page.locator(".messages .msg").first).to_be_visible()
        expect(page.locator("#facts")).to_contain_text(EXPECT["alerted_order"])

        step("the alert's link puts 'Take this thread' at hand; taking it shows who has the thread")
        take = page.get_by_role("button", name="Take this thread")
        expect(take).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.get_by_role("status").first).to_contain_text("Taken")
        expect(page.locator("#facts")).to_contain_text("Taken by")
        expect(page.get_by_role("button", name="Take this thread")).to_have_count(0)
        shot(page, "thread-taken-desktop")
        page.goto(URL + "/threads")
        expect(row(page, EXPECT["alerted_id"]).locator(".taken")).to_contain_text("taken by")
        shot(page, "list-taken-desktop")
        page.goto(ALERT_LINK)

        step("a template's preview is rendered with the thread's variables")
        page.get_by_label("Template").select_option(EXPECT["template"])
        expect(page.locator("#preview-text")).to_contain_text(EXPECT["template_contains"])
        no_horizontal_scroll(page, "the thread page")
        shot(page, "thread-desktop")
        page.set_viewport_size(PHONE)
        no_horizontal_scroll(page, "the thread page")
        shot(page, "thread-360")
        page.set_viewport_size(DESKTOP)

        step("send a reply; it is queued, then shown as sent without a reload")
        page.evaluate("window.__sameDocument = true")
        page.get_by_label("Reply").fill(EXPECT["reply_text"])
        # By keyboard: Tab from the text reaches Send, Enter sends.
        page.get_by_label("Reply").press("Tab")
        expect(page.get_by_role("button", name="Send")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.get_by_role("status").first).to_contain_text("Reply queued")
        page.evaluate("window.__sameDocument = true")
        sent = page.locator(".outbox li").filter(has_text=EXPECT["reply_text"])
        expect(sent).to_have_count(1)
        expect(sent.locator(".badge")).to_have_text("Sent", timeout=30_000)
        assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"
        expect(page.locator(".messages .msg.d-outbound")).to_contain_text(EXPECT["reply_text"])
        shot(page, "thread-sent-desktop")

        # --- The list updates itself --------------------------------------
        step("another agent marks a thread no-response-needed; the open list drops it without a reload")
        page.goto(URL + "/threads")
        expect(row(page, EXPECT["mark_id"])).to_have_count(1)
        page.evaluate("window.__sameDocument = true")
        keep = page.locator("#open-" + str(EXPECT["breached_id"]))
        keep.focus()
        other = watch(context.new_page())
        other.goto(f"{URL}/threads/{EXPECT['mark_id']}")
        other.get_by_role("button", name="No response needed").click()
        expect(other.get_by_role("status").first).to_contain_text("No response needed")
        # Closed now: after signing out, its next poll would (rightly) get 401.
        other.close()
        expect(row(page, EXPECT["mark_id"])).to_have_count(0, timeout=30_000)
        # The answered thread left the open list as well.
        expect(row(page, EXPECT["alerted_id"])).to_have_count(0)
        assert page.evaluate("window.__sameDocument === true"), "the list was reloaded"
        expect(keep).to_be_focused()
        shot(page, "list-after-desktop")

        step("signing out ends the session")
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(re.compile(r"/login"))
        page.goto(URL + "/threads")
        expect(page).to_have_url(re.compile(r"/login"))

        browser.close()

    assert not problems, "the browser reported:\n" + "\n".join(problems)
    print("OK", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:  # noqa: BLE001 - report everything to the Rust test
        traceback.print_exc()
        sys.exit(1)
