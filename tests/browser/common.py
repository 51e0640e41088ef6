"""What the browser tests share: how chromium is started, the window
sizes, and the small helpers every script uses. Imported by inbox.py,
admin.py and report.py (their directory is on sys.path when run)."""

import os

# Debian's chromium as Playwright drives it here: no sandbox (root in CI),
# no GPU, and nothing that reaches the network by itself.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 360, "height": 780}
WAIT_MS = 20_000


def step(text):
    print(f"- {text}", flush=True)


def shot(page, name):
    path = os.path.join(os.environ["HG_ARTIFACTS"], f"{name}.png")
    page.screenshot(path=path, full_page=True)
    step(f"screenshot {path}")


def no_horizontal_scroll(page, what):
    width = page.evaluate("document.documentElement.scrollWidth")
    view = page.evaluate("window.innerWidth")
    assert width <= view, f"{what} is {width}px wide in a {view}px window: it scrolls sideways"
