"""The aggregation screen's line-end buttons over real HTTP, on the daemon's stations (a case
station and a pallet station on the real ledger; no devices are needed for these actions): the
last, partial case with its count, closing the partial pallet (a supervisor's), releasing a
pallet station that holds; each audited, refusals too."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge_agent.aggregation.hierarchy import ContainerState, Hierarchy
from edge_agent.aggregation.matching import CaseReason
from edge_agent.aggregation.station import CaseStation, PalletStation
from edge_agent.api.app import create_app
from edge_agent.api.server import ApiServer
from edge_agent.hmi.settings import HmiSettings
from edge_agent.orders import audit
from edge_agent.orders.model import OrderCommand
from tests.helpers.api import Rig, make_rig, order_data, services
from tests.helpers.hmi import browser, login, post, users_file
from tests.test_hmi_pages import flash


class VerifiedLabels:
    """The pallet label path: every label printed and read back."""

    def __init__(self) -> None:
        self.printed: list[str] = []

    async def print_and_verify(self, sscc: str, **_: Any) -> tuple[CaseReason, str]:
        self.printed.append(sscc)
        return CaseReason.ACCEPTED, ""


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path, auto_close=False)


@contextlib.asynccontextmanager
async def serving(rig: Rig, settings: HmiSettings, stations: Any) -> AsyncIterator[None]:
    api = dataclasses.replace(services(rig), stations=stations)
    app = create_app(api, [], hmi=settings)
    async with ApiServer(app, host="127.0.0.1", port=0) as server:
        rig.url = server.url
        yield


async def test_line_end_buttons_announce_the_last_case_close_the_pallet_and_release(
    rig: Rig, tmp_path: Path
) -> None:
    serials = [f"S{n:04d}" for n in range(1, 9)]
    plan = {"levels": [{"level": "case", "capacity": 3}, {"level": "pallet", "capacity": 3}]}
    order = order_data(quantity=7, serials={"source": "list", "serials": serials}, aggregation=plan)
    await rig.commands.submit(order, source="api", actor=audit.Actor("mes", "api"))
    await rig.commands.command("ORD-1", OrderCommand.START, audit.Actor("mes", "api"))
    rig.run_units("ORD-1", ["pass"] * 6)
    h = Hierarchy(rig.ledger)
    unit = "(01)09506000134352(21){}".format
    cases = []
    for pair in (("S0001", "S0002", "S0003"), ("S0004", "S0005", "S0006")):
        box = h.open_container("ORD-1", "case")
        cases.append(h.pack(box.epc, [unit(s) for s in pair], close=True))
    case_station = CaseStation(h, "ORD-1", camera=None, plc=None, labels=None, reader=None)  # type: ignore[arg-type]
    labels = VerifiedLabels()
    pallet_station = PalletStation(h, "ORD-1", scanner=None, labels=labels, alarms=rig.alarms)  # type: ignore[arg-type]
    for case in cases:
        assert pallet_station.on_scan("00" + case.code)
    runner = SimpleNamespace(
        order_id="ORD-1", case_station=case_station, pallet_station=pallet_station,
        bundle_station=None,
    )  # fmt: skip
    settings = HmiSettings(users=users_file(tmp_path), line_name="LINE-7")
    async with serving(rig, settings, runner), browser(rig) as anna, browser(rig) as sam:
        anna_csrf = await login(anna, "anna")
        sam_csrf = await login(sam, "sam")
        page = await anna.get("/hmi/aggregation")
        assert 'id="line-end"' in page.text and "ORD-1" in page.text
        assert 'id="pallet-station">2 of 3 cases<' in page.text
        assert "Closing a partial pallet needs a supervisor." in page.text
        assert "Release pallet station" not in page.text  # it does not hold

        # the operator announces the last, partial case
        bad = flash(await post(anna, "/hmi/aggregation/stations/last-case", anna_csrf, count=5))
        assert "1..3" in bad["error"] and case_station.expected_next is None
        ok = flash(await post(anna, "/hmi/aggregation/stations/last-case", anna_csrf, count=1))
        assert ok["ok"] == "the next case the station reads holds 1 units"
        assert case_station.expected_next == 1
        page = await anna.get("/hmi/aggregation")
        assert "next case: last, 1 units" in page.text

        # closing the partial pallet is a supervisor's
        refused = flash(await post(anna, "/hmi/aggregation/stations/close-pallet", anna_csrf))
        assert "needs a supervisor" in refused["error"] and labels.printed == []
        ok = flash(await post(sam, "/hmi/aggregation/stations/close-pallet", sam_csrf))
        assert ok["ok"].startswith("pallet ") and ok["ok"].endswith("closed with 2 cases")
        (pallet,) = h.containers("ORD-1", level="pallet")
        assert pallet.state == ContainerState.CLOSED and pallet.children == 2
        assert labels.printed == [pallet.code] and pallet_station.scanned() == []

        # release: refused when it does not hold; done when it does
        refused = flash(await post(anna, "/hmi/aggregation/stations/release", anna_csrf))
        assert refused["error"] == "the pallet station does not hold"
        pallet_station.held = "pallet station holds: 3 pallet labels in a row failed"
        page = await anna.get("/hmi/aggregation")
        assert 'id="pallet-held"' in page.text and "Release pallet station" in page.text
        ok = flash(await post(anna, "/hmi/aggregation/stations/release", anna_csrf))
        assert "released" in ok["ok"] and pallet_station._released.is_set()
    rows = [
        (r.actor, r.action, r.outcome)
        for r in audit.rows(rig.conn)
        if r.action.startswith("station_") and r.source == "hmi"
    ]
    assert rows == [
        ("anna", "station_last_case", "refused"),
        ("anna", "station_last_case", "done"),
        ("anna", "station_close_pallet", "refused"),
        ("sam", "station_close_pallet", "done"),
        ("anna", "station_release_pallet", "refused"),
        ("anna", "station_release_pallet", "done"),
    ]


async def test_without_stations_the_screen_shows_no_line_end_and_the_buttons_refuse(
    rig: Rig, tmp_path: Path
) -> None:
    settings = HmiSettings(users=users_file(tmp_path), line_name="LINE-7")
    async with serving(rig, settings, None), browser(rig) as sam:
        csrf = await login(sam, "sam")
        page = await sam.get("/hmi/aggregation")
        assert 'id="line-end"' not in page.text
        refused = flash(await post(sam, "/hmi/aggregation/stations/close-pallet", csrf))
        assert "the pallet station is not running" in refused["error"]
