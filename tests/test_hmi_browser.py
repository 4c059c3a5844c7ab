"""The operator screen in a real browser: Playwright drives Debian's Chromium (headless) through
a shift: log in as operator, submit an order file, start it, watch the counters move, hold and
resume, see a reject with its frame, close as supervisor with a reason, open the close report.
Each step checks the page within a second of the change.

The line is the resident daemon (``Agent.serve``) on the simulators (printer, camera with
defects, PLC; real protocols on loopback, a paced conveyor); the screen is served over the
daemon's own command path, alarm board, state database and line counters. With
EDGE_AGENT_SCREENSHOTS=DIR the test saves a screenshot of each page there (docs/hmi/ holds the
README's; ``python docs/hmi/screenshots.py`` retakes them).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import pytest
import pytest_asyncio

from edge_agent.api.app import create_app
from edge_agent.api.deps import ApiServices
from edge_agent.api.server import ApiServer
from edge_agent.api.status import DbLineStatus
from edge_agent.config.models import CameraSim, PrinterSim, SimulatorsSection
from edge_agent.hmi.settings import HmiSettings
from edge_agent.monitoring.sources import MonitoringSources
from edge_agent.orders.audit import Actor
from edge_agent.orders.model import OrderCommand
from edge_agent.orders.report_html import StoredReports
from edge_agent.outbox.store import OutboxStore
from simulators.pytest_plugin import order_for, require_tool
from simulators.runner import SimulatorSet
from tests.helpers.hmi import PASSWORDS, daemon, users_file
from tests.helpers.margins import VERDICT_DEADLINE_MS, plc_sim
from tests.helpers.waiting import until

pytest.importorskip("playwright")
from playwright.async_api import Browser, Page, async_playwright, expect

STEP_MS = 1000  # each change must be on the page within a second
QUANTITY = 2000  # more than the test packs: the operator stops the order
UNITS_PER_S = 10.0
REJECT_WAIT_MS = 15_000  # the camera simulator's defects come at random (seeded)


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
            path = self.folder / f"{name}.png"
            await page.screenshot(path=str(path))
            # small files for the README: 4 bits a channel (camera noise compresses badly) and
            # full compression (Chromium writes PNGs fast)
            image = cv2.imread(str(path)) & 0xF0
            cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 9])


async def test_a_shift_on_the_operator_screen(
    browser: Browser, tmp_path: Path, agent_config_factory: Any
) -> None:
    frames = tmp_path / "frames"
    settings = HmiSettings(users=users_file(tmp_path), archive_dir=frames, line_name="LINE-01")
    order_file = tmp_path / "WO-2026-0042.json"
    order_file.write_text(
        json.dumps(
            order_for(
                id="WO-2026-0042",
                quantity=QUANTITY,
                product={"gtin": "09506000134352", "description": "Tablets 20 mg, 30 pcs"},
            )
        )
    )
    shots = Shots()
    sims_section = SimulatorsSection(
        units_per_min=UNITS_PER_S * 60,
        printer=PrinterSim(port=0, buffer_size=16),
        camera=CameraSim(port=0, defect_rate=0.1, seed=5),
        plc=plc_sim(),
    )
    async with SimulatorSet(sims_section) as sims:
        config = agent_config_factory(
            simulators=sims,
            order=None,  # the operator submits it
            line={
                "verdict_deadline_ms": VERDICT_DEADLINE_MS
            },  # margin under the gate delay on a loaded machine
            orders={"auto_start": False, "auto_close": False},
            vision={"archive_dir": str(frames)},
        )
        async with daemon(config) as agent:
            assert agent.commands is not None
            commands = agent.commands
            conn = commands.conn
            line_status = DbLineStatus(conn)
            services = ApiServices(
                commands=commands,
                alarms=commands.alarms,
                line=line_status,
                reports=StoredReports(commands.settlement.report_path),  # type: ignore[attr-defined]
            )
            store = OutboxStore(conn, [spec.name for spec in config.forwarders])
            sources = MonitoringSources.of_agent(
                config.model,
                conn,
                line_status,
                commands.alarms,
                stats=lambda: agent.stats,
                outbox=store.status,
            )
            app = create_app(services, [], monitoring=sources, hmi=settings)
            async with ApiServer(app, host="127.0.0.1", port=0) as server:
                url = server.url
                context = await browser.new_context(viewport={"width": 1280, "height": 800})
                page = await context.new_page()
                page.set_default_timeout(5000)

                # log in as the operator (the screen sends who is not logged in to the login)
                await page.goto(url + "/hmi/line")
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
                # the camera simulator's defects: the first reject shows under its reason
                first_reason = page.locator("#reasons tr:not(.none)").first
                await expect(first_reason).to_be_visible(timeout=REJECT_WAIT_MS)
                await shots.take(page, "line")

                # hold with a reason: the line stops, the hold shows with its Resume
                await page.fill("#hold-form input[name=reason]", "labeller jam")
                await page.click("#hold-form button")
                await expect(state).to_have_text("held", timeout=STEP_MS)
                await expect(page.locator("#hold")).to_contain_text("labeller jam", timeout=STEP_MS)
                await expect(page.locator("#hold-form")).to_be_hidden(timeout=STEP_MS)
                await expect(page.locator("[data-field=speed]")).to_have_text("0", timeout=STEP_MS)
                # (that a held line packs nothing more: test_an_operator_hold_stops_the_line)
                held_at = await units.inner_text()
                await shots.take(page, "line-held")
                await page.click("#hold button.resume")
                await expect(state).to_have_text("running", timeout=STEP_MS)
                await expect(units).not_to_have_text(held_at, timeout=STEP_MS)

                # a reject with what was expected, what was read, why, and its frame
                await page.click("nav >> text=Rejects")
                first = page.locator("figure.reject:has(img)").first  # a unit the camera saw
                await expect(first.locator(".reason")).to_have_text(re.compile(r"^[a-z_]+$"))
                # the serial the unit was printed with (none for a unit the line could not tie
                # to a serial, e.g. a duplicate read)
                serial = re.compile(r"^([0-9A-Z]{12}|—)$")
                await expect(first.locator("code").first).to_have_text(serial)
                image = first.locator("img")
                await expect(image).to_be_visible(timeout=STEP_MS)
                assert await image.evaluate("img => img.complete && img.naturalWidth > 0")
                await shots.take(page, "rejects")

                # the operator ends the order short (stop: completed, the line idle again);
                # the supervisor closes it with a reason
                await page.click("nav >> text=Orders")
                await page.click("a:has-text('WO-2026-0042')")
                await page.click("button.stop")
                await expect(page.locator("#order-state")).to_have_text(
                    "completed", timeout=STEP_MS
                )
                await page.click("nav >> text=Line")
                await expect(state).to_have_text("idle", timeout=STEP_MS)
                await page.click("button:has-text('Log out')")
                await page.fill("input[name=name]", "sam")
                await page.fill("input[name=password]", PASSWORDS["sam"])
                await page.click("button:has-text('Log in')")
                await expect(page.locator("#who")).to_have_text("sam · supervisor", timeout=STEP_MS)
                await page.goto(url + "/hmi/orders/WO-2026-0042")
                await expect(page.locator("#order-state")).to_have_text("completed")
                await page.fill("form.command input[name=reason]", "end of shift, counted by QA")
                await page.click("button.close")
                await expect(page.locator("#order-state")).to_have_text("closed", timeout=STEP_MS)
                await expect(page.locator("table.audit")).to_contain_text(
                    "hmi:sam", timeout=STEP_MS
                )
                await expect(page.locator("table.audit")).to_contain_text("hmi:anna")
                await shots.take(page, "order")

                # the close report
                await page.click("a:has-text('Close report')")
                report = page.frame_locator("iframe.report")
                await expect(report.locator("body")).to_contain_text(
                    "WO-2026-0042", timeout=STEP_MS
                )
                await shots.take(page, "report")

                await page.click("nav >> text=Aggregation")
                await expect(page.locator("form.lookup input[name=code]")).to_be_visible(
                    timeout=STEP_MS
                )
                await shots.take(page, "aggregation")
                await context.close()


async def test_an_operator_hold_stops_the_line(agent_config_factory: Any) -> None:
    """What the screen shows of a hold must be true of the line: once the order is held, no unit
    is decided until it is resumed."""
    sims_section = SimulatorsSection(
        units_per_min=UNITS_PER_S * 60,
        printer=PrinterSim(port=0, buffer_size=16),
        camera=CameraSim(port=0, defect_rate=0.0, seed=5),
        plc=plc_sim(),
    )
    async with SimulatorSet(sims_section) as sims:
        config = agent_config_factory(
            simulators=sims,
            order=None,
            line={"verdict_deadline_ms": VERDICT_DEADLINE_MS},
            orders={"auto_start": False, "auto_close": False},
        )
        async with daemon(config) as agent:
            assert agent.commands is not None
            commands, anna = agent.commands, Actor("anna", "hmi", "operator")
            await commands.submit(order_for(id="W1", quantity=QUANTITY), source="hmi", actor=anna)
            await commands.command("W1", OrderCommand.START, anna)
            await until(lambda: _units(commands.conn, "W1") >= 5, "units packed", within=30)
            await commands.command("W1", OrderCommand.HOLD, anna, reason="labeller jam")
            held = _units(commands.conn, "W1")
            await asyncio.sleep(1.5)  # a line at 10 units/s would have packed 15 more
            assert commands.store.get("W1").state == "held"
            assert _units(commands.conn, "W1") == held


def _units(conn: Any, order_id: str) -> int:
    (count,) = conn.execute("SELECT count(*) FROM units WHERE batch_id = ?", (order_id,)).fetchone()
    return int(count)
