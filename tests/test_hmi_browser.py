"""The operator screen in a real browser: Playwright drives Debian's Chromium (headless) through
a shift: log in as operator, submit an order file, start it, watch the counters move, hold and
resume, see a reject with its frame, close as supervisor with a reason, open the close report.
Each step checks the page within a second of the change.

The line is ``StandInLine`` (the real ledger, archive and command path; no devices) until the
resident daemon serves the screen. With EDGE_AGENT_SCREENSHOTS=DIR the test saves a screenshot
of each page there (docs/hmi/ holds the README's; ``python docs/hmi/screenshots.py`` retakes them).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from edge_agent.api.status import DbLineStatus
from edge_agent.hmi.settings import HmiSettings
from edge_agent.monitoring.sources import MonitoringSources
from simulators.pytest_plugin import require_tool
from tests.helpers.api import Rig, make_rig, order_data
from tests.helpers.hmi import PASSWORDS, serving_hmi, users_file
from tests.helpers.standin_line import StandInLine

pytest.importorskip("playwright")
from playwright.async_api import Browser, Page, async_playwright, expect

STEP_MS = 1000  # each change must be on the page within a second
QUANTITY = 40
UNITS_PER_S = 12.0


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = require_tool("chromium")
    async with async_playwright() as playwright:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses root
        found = await playwright.chromium.launch(executable_path=chromium, headless=True, args=args)
        yield found
        await found.close()


class Shots:
    def __init__(self) -> None:
        where = os.environ.get("EDGE_AGENT_SCREENSHOTS")
        self.folder = Path(where) if where else None

    async def take(self, page: Page, name: str) -> None:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(self.folder / f"{name}.png"))


async def test_a_shift_on_the_operator_screen(browser: Browser, tmp_path: Path) -> None:
    rig: Rig = make_rig(tmp_path / "state", auto_close=False)
    frames = tmp_path / "frames"
    settings = HmiSettings(users=users_file(tmp_path), archive_dir=frames, line_name="LINE-01")
    order_file = tmp_path / "WO-2026-0042.json"
    serials = [f"SN{n:06d}" for n in range(1, QUANTITY + QUANTITY // 2)]
    order_file.write_text(
        json.dumps(
            order_data(
                id="WO-2026-0042",
                quantity=QUANTITY,
                product={"gtin": "09506000134352", "description": "Tablets 20 mg, 30 pcs"},
                serials={"source": "list", "serials": serials},
            )
        )
    )
    shots = Shots()
    async with StandInLine(rig.commands, frames, units_per_s=UNITS_PER_S) as line:
        sources = MonitoringSources(
            conn=rig.conn,
            line=DbLineStatus(rig.conn),
            alarms=rig.alarms,
            state_dir=rig.state_dir,
            stats=lambda: line.stats,
        )
        async with serving_hmi(rig, settings, monitoring=sources):
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            page.set_default_timeout(5000)

            # log in as the operator (the screen sends who is not logged in to the login)
            await page.goto(rig.url + "/hmi/line")
            await expect(page).to_have_url(re.compile(r"/hmi/login\?next="))
            await shots.take(page, "login")
            await page.fill("input[name=name]", "anna")
            await page.fill("input[name=password]", PASSWORDS["anna"])
            await page.click("button:has-text('Log in')")
            await expect(page.locator("#who")).to_have_text("anna · operator", timeout=STEP_MS)

            # submit the order file
            await page.click("nav >> text=Orders")
            await page.set_input_files("input[name=order]", str(order_file))
            await page.click("form.upload button")
            await expect(page.locator(".flash.ok")).to_have_text(
                "order WO-2026-0042 stored (ready)", timeout=STEP_MS
            )
            row = page.locator("#queue tr[data-order='WO-2026-0042']")
            await expect(row.locator(".st")).to_have_text("ready", timeout=STEP_MS)

            # start it, and watch the counters move on the overview (server push)
            await row.locator("button.start").click()
            await expect(row.locator(".st")).to_have_text("running", timeout=STEP_MS)
            await shots.take(page, "orders")
            await page.click("nav >> text=Line")
            state = page.locator(".state")
            await expect(state).to_have_text("running", timeout=STEP_MS)
            units = page.locator("[data-field='counters.units']")
            seen = int(await units.inner_text())
            await expect(units).not_to_have_text(str(seen), timeout=STEP_MS)
            moved = int(await units.inner_text())
            await expect(units).not_to_have_text(str(moved), timeout=STEP_MS)
            await expect(page.locator("#reasons")).to_contain_text("unreadable", timeout=STEP_MS)
            await shots.take(page, "line")

            # hold with a reason: the line stops, the hold shows with its Resume
            await page.fill("#hold-form input[name=reason]", "labeller jam")
            await page.click("#hold-form button")
            await expect(state).to_have_text("held", timeout=STEP_MS)
            await expect(page.locator("#hold")).to_contain_text("labeller jam", timeout=STEP_MS)
            held_at = await units.inner_text()
            await page.wait_for_timeout(400)
            assert await units.inner_text() == held_at  # held: nothing is packed
            await shots.take(page, "line-held")
            await page.click("#hold button.resume")
            await expect(state).to_have_text("running", timeout=STEP_MS)
            await expect(units).not_to_have_text(held_at, timeout=STEP_MS)

            # a reject with what was expected, what was read, why, and its frame
            await page.click("nav >> text=Rejects")
            first = page.locator("figure.reject").first
            await expect(first.locator(".reason")).to_have_text("unreadable", timeout=STEP_MS)
            await expect(first.locator("code").first).to_have_text(re.compile(r"SN\d{6}"))
            image = first.locator("img")
            await expect(image).to_be_visible(timeout=STEP_MS)
            assert await image.evaluate("img => img.complete && img.naturalWidth > 0")
            await shots.take(page, "rejects")

            # the order completes (the line is idle again); an operator may not close with
            # exceptions, a supervisor closes it with a reason
            await page.click("nav >> text=Line")
            completed_in_ms = int(1000 * 1.5 * QUANTITY / UNITS_PER_S) + 5000
            await expect(state).to_have_text("idle", timeout=completed_in_ms)
            await page.click("button:has-text('Log out')")
            await page.fill("input[name=name]", "sam")
            await page.fill("input[name=password]", PASSWORDS["sam"])
            await page.click("button:has-text('Log in')")
            await expect(page.locator("#who")).to_have_text("sam · supervisor", timeout=STEP_MS)
            await page.goto(rig.url + "/hmi/orders/WO-2026-0042")
            await expect(page.locator("#order-state")).to_have_text("completed")
            await page.fill("form.command input[name=reason]", "end of shift, counted by QA")
            await page.click("button.close")
            await expect(page.locator("#order-state")).to_have_text("closed", timeout=STEP_MS)
            await expect(page.locator("table.audit")).to_contain_text("hmi:sam", timeout=STEP_MS)
            await expect(page.locator("table.audit")).to_contain_text("hmi:anna")
            await shots.take(page, "order")

            # the close report
            await page.click("a:has-text('Close report')")
            report = page.frame_locator("iframe.report")
            await expect(report.locator("body")).to_contain_text("WO-2026-0042", timeout=STEP_MS)
            await shots.take(page, "report")

            await page.click("nav >> text=Aggregation")
            await expect(page.locator("#not-configured")).to_be_visible(timeout=STEP_MS)
            await shots.take(page, "aggregation")
            await context.close()
